"""Configuration: one typed model, filled from defaults, a file, ``NBA_`` variables and flags.

Precedence, lowest first: the defaults below, a YAML file (``--config``/``NBA_CONFIG``),
environment variables (``NBA_PORT=50052``), command-line flags (``--port 50052``). Every field
has all three spellings; unknown keys in the file are refused by name.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nba.errors import InvalidArgument
from nba.yaml_loader import describe, load_yaml

__all__ = ["ConfigError", "Settings", "load_settings"]


class ConfigError(InvalidArgument, ValueError):
    """A setting is invalid; the message names it with its flag and variable."""


class Settings(BaseModel):
    """Every setting of ``nba serve``. Field docs double as ``--help``."""

    # No setting means anything as NaN or infinity (a reward of NaN would poison the model,
    # a timeout of infinity overflows): "nan", "inf" and their kin are refused everywhere.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    policies: Path = Field(Path("policies"), description="folder of policy set *.yaml files")
    host: str = Field("[::]", description="address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port)")
    database_url: str = Field("sqlite:///var/nba.db", description="decision log database (SQLAlchemy URL)")
    metrics_port: int = Field(9464, ge=-1, le=65535, description="Prometheus metrics HTTP port (0: any free port, -1: off)")
    http_port: int = Field(
        8080, ge=-1, le=65535, description="HTTP/JSON API port, on the same host as gRPC (0: any free port, -1: off)"
    )
    callback_sources: Path | None = Field(
        None,
        description="YAML file of the campaign tools whose signed webhooks POST /v1/callbacks/{source} takes "
        "(examples/callbacks.yaml); none: no callbacks",
    )
    http_cors_origins: list[str] = Field(
        default_factory=list,
        description="origins a browser may call the HTTP API from (https://app.example.com; comma-separated); none: CORS off",
    )
    console_secure_cookies: bool = Field(
        False,
        description="mark the console's session cookie Secure although nba serves plain HTTP: a proxy in front serves "
        "TLS (with --tls-cert it is Secure anyway)",
    )
    threads: int = Field(16, ge=1, le=1024, description="gRPC handler threads")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="processes serving the port together (default: one per core)",
    )
    worker: int = Field(-1, ge=-1, description="internal: this process's index among the workers (set by nba serve)")
    bus: str = Field(
        "local",
        description="how processes learn each other's events: local (this process, or the workers of one "
        "nba serve), database (replicas sharing one database follow its log), or a Redis URL "
        "(redis://host:6379/0: the same, pushed through a Redis stream as events commit)",
    )
    bus_stream: str = Field("nba:events", min_length=1, description="the Redis stream's key (with a redis:// bus)")
    bus_stream_length: int = Field(
        100_000, ge=1000, description="entries the Redis stream keeps (approximately); older ones are trimmed"
    )
    grace_seconds: float = Field(10.0, ge=0, description="graceful shutdown: time for calls in flight")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve gRPC over TLS (needs tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA certificates: require client certificates they signed (mutual TLS; needs tls_cert)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("json", description="structured JSON logs or plain text")

    # The learner.
    learner_features: int = Field(128, ge=1, le=4096, description="hashed feature slots per offer")
    learner_alpha: float = Field(1.0, gt=0, description="ridge regularisation")
    learner_shared: float = Field(3.0, ge=0, description="pseudo-count of the shared model over offer group and tags (0: off)")
    learner_forget: float = Field(
        0.999,
        gt=0,
        le=1,
        description="each round of the catalogue discounts every offer's earlier evidence by this factor, so the "
        "learner follows change (1: never forget)",
    )
    learner_optimism: float = Field(
        5.0,
        ge=0,
        le=1e6,
        description="pseudo-count: an offer with little evidence is estimated as good as the best known, blended "
        "n / (n + 5) with its own estimate after n observations, so new offers are tried (0: off)",
    )
    learner_detect_changes: bool = Field(
        True, description="a change test on each offer's residuals restarts an offer's model when what it earns drops abruptly"
    )
    learner_explore_by_age: bool = Field(
        True, description="exploration: gamma grows with each offer's own age, not the learner's (new offers explored)"
    )
    learner_prior: float = Field(
        0.05, description="expected reward of an offer before any evidence (so value and levers rank from the start)"
    )
    learner_gamma_scale: float = Field(
        10.0, ge=0, description="exploration: inverse gap weighting gamma = scale * updates^exponent"
    )
    learner_gamma_exponent: float = Field(0.5, ge=0, description="exploration: see learner_gamma_scale")
    learner_exclude: list[str] = Field(
        default_factory=lambda: ["customer.id", "customer.name", "customer.email", "customer.phone"],
        description="context fields never used as features (glob patterns, comma-separated)",
    )
    seed: int | None = Field(None, description="seed for exploration draws (unset: random)")

    # Rewards: the range a reward must lie in (Feedback outside it is INVALID_ARGUMENT), and
    # by outcome, when a Feedback event carries none.
    reward_min: float = Field(
        -1e6, description="smallest reward a Feedback event may carry (the learner's sums stay finite within the range)"
    )
    reward_max: float = Field(1e6, description="largest reward a Feedback event may carry")
    reward_impressed: float = Field(0.0, description="reward of an impression")
    reward_clicked: float = Field(0.3, description="reward of a click")
    reward_accepted: float = Field(1.0, description="reward of an acceptance")
    reward_rejected: float = Field(0.0, description="reward of a rejection")
    reward_default: float = Field(0.0, description="reward of an offer with no feedback when its windows close")
    # Reward windows: how long after a decision each outcome still counts.
    window_impressed_seconds: float = Field(3600.0, gt=0, description="reward window of impressions")
    window_clicked_seconds: float = Field(86400.0, gt=0, description="reward window of clicks")
    window_accepted_seconds: float = Field(7 * 86400.0, gt=0, description="reward window of acceptances")
    window_rejected_seconds: float = Field(7 * 86400.0, gt=0, description="reward window of rejections")
    window_check_seconds: float = Field(
        30.0, ge=0, description="how often closed reward windows are looked for (0: at every log write)"
    )

    # The decision log.
    request_id_ttl_seconds: float = Field(86400.0, gt=0, description="how long a request_id returns the same decision")
    log_flush_seconds: float = Field(0.05, gt=0, description="longest wait before decisions are written")
    log_batch_size: int = Field(500, ge=1, description="decisions written per transaction at most")
    log_queue_limit: int = Field(
        100_000, ge=1, description="decisions waiting to be written before new ones are dropped (counted)"
    )
    durable_decisions: bool = Field(
        False,
        description="Decide answers only once its decision is committed to the log (a group commit, "
        "not a 50 ms wait); without it, a crash loses at most the last log_flush_seconds of decisions",
    )
    decision_retention_days: float = Field(
        0.0,
        ge=0,
        description="decisions older than this, whose reward windows have closed, are deleted "
        "with their feedback, every minute (0: kept forever)",
    )
    profile_event_retention_days: float = Field(
        0.0,
        ge=0,
        description="touch-point events received longer ago than this are deleted, every minute (0: kept forever); "
        "profiles keep what the events made of them, but a repeat of a deleted event is no longer known as one",
    )
    segment_clock_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="how often profiles whose segments change with time alone (a window passing) are looked for and "
        "the changes recorded, at their exact moments",
    )
    decision_cache_size: int = Field(20_000, ge=0, description="recent decisions kept in memory for feedback and request_id")
    feedback_timeout_seconds: float = Field(
        10.0, gt=0, description="longest a Feedback call waits for durability before UNAVAILABLE"
    )
    snapshot_seconds: float = Field(60.0, gt=0, description="model snapshot interval")

    # Policies and the admin API.
    policies_watch_seconds: float = Field(
        2.0, ge=0, description="how often the policies folder (and other replicas' publishes) are checked; 0: never"
    )
    admin_tokens: list[str] = Field(
        default_factory=list,
        description="AdminService bearer tokens as name:role:token, role viewer or editor (comma-separated)",
    )
    pii_role: Literal["viewer", "editor"] = Field(
        "editor",
        description="the least admin role shown personal data in GetProfile (pii attributes, identifiers, the event "
        "properties they come from); below it, they read ***",
    )
    pseudonym_key: str = Field(
        "",
        description="the secret key of the pseudonyms a forgotten customer's decisions carry (HMAC-SHA256; at least "
        "16 characters, from a secret store); empty: one is made and kept in the database",
    )
    contact_history_days: float = Field(
        90.0, gt=0, description="contact history kept at least this long (longer if a policy looks back further)"
    )
    contact_customers: int = Field(200_000, ge=1, description="customers whose contact history is held in memory")
    profile_cache_size: int = Field(
        20_000, ge=0, description="customer profiles held in memory for decisions and GetProfile (0: none; ~8 KB each)"
    )
    profile_cache_seconds: float = Field(
        1.0,
        gt=0,
        description="workers or replicas without a working Redis bus: how long a cached profile is trusted before it "
        "is read again (with the bus, other replicas' changes arrive on it)",
    )

    @field_validator("pseudonym_key")
    @classmethod
    def _pseudonym_key(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("a pseudonym key needs at least 16 characters (for example $(openssl rand -hex 32))")
        return value

    @field_validator("admin_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value or ():
            parts = str(entry).split(":", 2)
            if len(parts) != 3 or parts[1] not in ("viewer", "editor") or len(parts[2]) < 16 or not parts[0]:
                raise ValueError(
                    "each token is name:role:token with role viewer or editor and a token of at least "
                    "16 characters (for example alice:editor:$(openssl rand -hex 16))"
                )
            if any(c.isspace() or not c.isprintable() or not c.isascii() for c in parts[2]):
                raise ValueError(
                    f"the token of '{parts[0]}' holds a space or a character that is not printable "
                    "ASCII: an HTTP/2 header cannot carry it"
                )
        names = [str(e).split(":", 2)[0] for e in value or ()]
        tokens = [str(e).split(":", 2)[2] for e in value or ()]
        for listed, what in ((names, "name"), (tokens, "token")):
            repeated = sorted({x for x in listed if listed.count(x) > 1})
            if repeated:
                # one token for two callers would make the caller (and the role) depend on
                # the order of the list; one name twice would blur the audit trail
                shown = ", ".join(repeated) if what == "name" else f"{len(repeated)} of them"
                raise ValueError(f"each caller's {what} must be its own: given twice: {shown}")
        return value

    @field_validator("bus")
    @classmethod
    def _bus(cls, value: str) -> str:
        if value not in ("local", "database") and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("local, database, or a Redis URL (redis://HOST:6379/0, rediss:// for TLS)")
        if value not in ("local", "database") and importlib.util.find_spec("redis") is None:
            raise ValueError("a Redis bus needs the redis package: pip install 'nba[redis]'")
        return value

    @property
    def redis_bus(self) -> bool:
        return self.bus not in ("local", "database")

    @field_validator("http_cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            origin = origin.rstrip("/")  # a browser's Origin never ends with one
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"'{origin[:80]}' is not an origin (https://app.example.com: scheme, host, port; no path)")
            out.append(origin)
        return out

    @field_validator("tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                text = value.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read {value}: {exc}") from None
            if "-----BEGIN " not in text:
                raise ValueError(f"{value} is not PEM (no -----BEGIN line)")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert (--tls-cert, NBA_TLS_CERT) and tls_key (--tls-key, NBA_TLS_KEY) go together: give both, or neither"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "tls_client_ca (--tls-client-ca, NBA_TLS_CLIENT_CA) needs tls_cert and tls_key: "
                "client certificates are checked over TLS only"
            )
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        # the second bind would fail later as "port in use", naming neither setting
        ports = [("port", "--port", "NBA_PORT"), ("metrics_port", "--metrics-port", "NBA_METRICS_PORT")]
        ports.append(("http_port", "--http-port", "NBA_HTTP_PORT"))
        for n, first in enumerate(ports):
            for second in ports[n + 1 :]:
                value = getattr(self, first[0])
                if value > 0 and value == getattr(self, second[0]):
                    raise ValueError(
                        f"{first[0]} ({first[1]}, {first[2]}) and {second[0]} ({second[1]}, {second[2]}) are both "
                        f"{value}: give each its own port, or -1 to turn {second[0]} off"
                    )
        return self

    @model_validator(mode="after")
    def _rewards_in_range(self) -> Settings:
        if not self.reward_min < self.reward_max:
            raise ValueError(
                f"reward_min (--reward-min, NBA_REWARD_MIN) {self.reward_min:g} must be below "
                f"reward_max (--reward-max, NBA_REWARD_MAX) {self.reward_max:g}"
            )
        for name in ("reward_impressed", "reward_clicked", "reward_accepted", "reward_rejected", "reward_default"):
            value = getattr(self, name)
            if not self.reward_min <= value <= self.reward_max:
                raise ValueError(
                    f"{name} (--{name.replace('_', '-')}, NBA_{name.upper()}) {value:g} is outside the reward range "
                    f"[{self.reward_min:g}, {self.reward_max:g}] (reward_min and reward_max: --reward-min, --reward-max, "
                    "NBA_REWARD_MIN, NBA_REWARD_MAX)"
                )
        return self

    @property
    def reward_range(self) -> tuple[float, float]:
        """(reward_min, reward_max): the rewards Feedback may carry, and the learner learns."""
        return self.reward_min, self.reward_max

    def tls_credentials(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(private key, certificate chain, client CA or None), or None for plaintext."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ca = self.tls_client_ca.read_bytes() if self.tls_client_ca else None
        return self.tls_key.read_bytes(), self.tls_cert.read_bytes(), ca

    @field_validator("learner_exclude", "http_cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def rewards(self) -> dict[str, float]:
        return {
            "impressed": self.reward_impressed,
            "clicked": self.reward_clicked,
            "accepted": self.reward_accepted,
            "rejected": self.reward_rejected,
        }


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merges file, environment and flags (flags win); raises ``ConfigError`` naming the key."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("NBA_CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            loaded = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: {describe(exc)}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path}: expected a mapping of settings")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    for name in Settings.model_fields:
        env = f"NBA_{name.upper()}"
        if env in environ and environ[env] != "":
            values[name] = environ[env]
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            msg = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
            msg = msg.removeprefix("Value error, ")
            lines.append(f"{key} (--{key.replace('_', '-')}, NBA_{key.upper()}): {msg}" if key else msg)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
