"""Campaign callbacks: ``POST /v1/callbacks/{source}`` takes a campaign tool's own webhook
payload, checks its signature, maps its fields to feedback events and applies them, each as
``Feedback`` would.

Each source is declared in the callback sources file (``--callback-sources``, YAML; the
examples are ``examples/callbacks.yaml``):

.. code-block:: yaml

    sources:
      mailer:
        secret_env: NBA_CALLBACK_MAILER_SECRETS   # the variable holding its secret(s), comma-separated
        events: ""                                # the dotted path to the list of events ("": the payload)
        fields:                                   # our field: its dotted path within one event
          event_id: sg_event_id
          decision_id: nba_decision_id
          offer_id: nba_offer_id
          outcome: event
          occurred_at: timestamp
        outcomes: {delivered: impressed, open: impressed, click: clicked, unsubscribe: rejected, processed: ignore}
        time: unix                                # rfc3339 (default), unix or unix_ms

Signing, in the style of Stripe's and the Standard Webhooks conventions: the tool sends
``nba-timestamp: <Unix seconds>`` and ``nba-signature: v1=<hex>[,v1=<hex> ...]``, each value
HMAC-SHA256 (RFC 2104) under one of the source's secrets of ``<timestamp>.`` followed by the
raw body bytes (never a re-serialised body). Signatures are compared in constant time.
Several signatures in the header, and several secrets per source, let a secret be rotated
without downtime. The timestamp must be within ``REPLAY_WINDOW`` before now, or
``CLOCK_AHEAD`` after it; a signature accepted once is not accepted again (kept for the
window: older ones fail on their timestamp).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nba.clock import Clock
from nba.errors import AlreadyExists, InvalidArgument, NbaError, NotFound, Unauthenticated, Unavailable, field_of
from nba.inputs import value_kind
from nba.learning.feedback import FeedbackIntake
from nba.records import OUTCOMES
from nba.v1 import decision_service_pb2 as pb
from nba.yaml_loader import describe, load_yaml

__all__ = ["CLOCK_AHEAD", "REPLAY_WINDOW", "CallbackSource", "CallbackSources", "Callbacks", "Mapped", "signature_of"]

#: how old a signed timestamp may be
REPLAY_WINDOW = timedelta(minutes=5)
#: how far ahead of ours a tool's clock may be
CLOCK_AHEAD = timedelta(seconds=30)
#: events one payload may carry
MAX_EVENTS = 1000
_PATH = re.compile(r"[A-Za-z_][\w\-]*(\.[A-Za-z_0-9][\w\-]*)*")
_REQUIRED = ("event_id", "decision_id", "offer_id", "outcome")
_SECONDS = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-f]{64}")


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(description="path to the event's own id (the idempotency key)")
    decision_id: str = Field(description="path to the decision id nba gave (the tool carries it as custom data)")
    offer_id: str = Field(description="path to the offer id")
    outcome: str = Field(description="path to what happened (mapped by outcomes)")
    occurred_at: str | None = Field(None, description="path to when it happened (default: when received)")
    reward: str | None = Field(None, description="path to a reward (default: the outcome's configured reward)")

    @field_validator("*")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.fullmatch(value):
            raise ValueError(f"'{value[:80]}' is not a dotted path (custom_args.nba_decision)")
        return value


class CallbackSource(BaseModel):
    """One campaign tool's payload, and how its events become feedback."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    secret_env: str = Field(
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable holding the source's secrets (comma-separated, at least 16 characters each)",
    )
    events: str = Field("", description="dotted path to the list of events in the payload ('': the payload itself)")
    fields: _Fields
    outcomes: dict[str, str] = Field(
        default_factory=dict,
        description="the tool's outcome values to nba's (impressed, clicked, accepted, rejected) or ignore; "
        "values not listed are taken as nba's own names",
    )
    time: Literal["rfc3339", "unix", "unix_ms"] = "rfc3339"

    @field_validator("events")
    @classmethod
    def _events_path(cls, value: str) -> str:
        if value and not _PATH.fullmatch(value):
            raise ValueError(f"'{value[:80]}' is not a dotted path")
        return value

    @field_validator("outcomes")
    @classmethod
    def _known(cls, value: dict[str, str]) -> dict[str, str]:
        for theirs, ours in value.items():
            if ours not in OUTCOMES and ours != "ignore":
                raise ValueError(f"{theirs}: '{ours}' is not one of {', '.join(OUTCOMES)}, ignore")
        return value


class CallbackSources(BaseModel):
    """The callback sources file: each source by the name in its URL."""

    model_config = ConfigDict(extra="forbid")
    sources: dict[str, CallbackSource] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _names(cls, value: dict[str, CallbackSource]) -> dict[str, CallbackSource]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,63}", name):
                raise ValueError(f"'{name[:80]}': a source's name is lowercase letters, digits, - and _ (it is in the URL)")
        return value

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None) -> tuple[CallbackSources, dict[str, list[bytes]]]:
        """The sources in ``path`` and each one's secrets, read from its ``secret_env``.
        Raises ``InvalidArgument`` naming the file, line and field, or the missing variable."""
        environ = os.environ if environ is None else environ
        try:
            data = load_yaml(path.read_text(), str(path))
            sources = cls.model_validate(data or {})
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"callback_sources {path}: {describe(exc)}", "callback_sources") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
            raise InvalidArgument(f"callback_sources {path}: {problems}", "callback_sources") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"callback_sources {path}: cannot be read ({exc})", "callback_sources") from None
        secrets: dict[str, list[bytes]] = {}
        for name, source in sources.sources.items():
            values = [v.strip() for v in environ.get(source.secret_env, "").split(",") if v.strip()]
            if not values:
                raise InvalidArgument(
                    f"callback_sources {path}: source '{name}': the variable {source.secret_env} is not set; "
                    "it holds the source's secret (several, comma-separated, while one is rotated)",
                    "callback_sources",
                )
            short = [n for n, v in enumerate(values) if len(v) < 16]
            if short:
                raise InvalidArgument(
                    f"callback_sources {path}: source '{name}': {source.secret_env} holds a secret shorter than "
                    "16 characters; make one with: openssl rand -hex 32",
                    "callback_sources",
                )
            secrets[name] = [v.encode() for v in values]
        return sources, secrets


def signature_of(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``v1`` signature of a payload: hex HMAC-SHA256 of ``<timestamp>.<body>``."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secrets: list[bytes], timestamp: str | None, header: str | None, body: bytes, now: datetime) -> str:
    """The delivery's digest (its timestamp and body, to refuse a replay of it) once a signature
    matches one of ``secrets``; ``Unauthenticated`` saying what is wrong otherwise."""
    if not timestamp or not header:
        raise Unauthenticated(
            "nba-signature: send the headers nba-timestamp (Unix seconds) and nba-signature "
            "(v1=<hex HMAC-SHA256 of '<timestamp>.<body>'>)"
        )
    if not _SECONDS.fullmatch(timestamp):
        raise Unauthenticated(f"nba-timestamp: must be Unix seconds (digits), got {timestamp[:40]!r}")
    seconds = int(timestamp)
    if not (now - REPLAY_WINDOW).timestamp() <= seconds <= (now + CLOCK_AHEAD).timestamp():
        raise Unauthenticated(
            f"nba-timestamp: {seconds} is outside the replay window ({int(REPLAY_WINDOW.total_seconds())} s "
            f"before now, {int(CLOCK_AHEAD.total_seconds())} s after; now is {now.isoformat(timespec='seconds')})"
        )
    offered = [part.strip()[3:].lower() for part in header.split(",") if part.strip().startswith("v1=")]
    offered = [candidate for candidate in offered if _HEX.fullmatch(candidate)]
    if not offered:
        raise Unauthenticated("nba-signature: no v1=<64 hex digits> signature in it")
    for secret in secrets:
        expected = signature_of(secret, timestamp, body).encode()
        for candidate in offered[:8]:
            if hmac.compare_digest(expected, candidate.encode()):
                # what is remembered against a replay names the delivery, not which secret signed
                # it: replicas mid-rotation hold different secrets, and must refuse the same replay
                return hashlib.sha256(timestamp.encode() + b"." + body).hexdigest()
    raise Unauthenticated("nba-signature: matches none of the source's secrets (sign '<timestamp>.<raw body>')")


@dataclass(frozen=True)
class Mapped:
    """One event of a payload as feedback (or why it is not)."""

    index: int
    event_id: str = ""
    decision_id: str = ""
    offer_id: str = ""
    outcome: str = ""
    reward: float | None = None
    occurred_at: datetime | None = None
    #: the tool's outcome is one the source ignores
    ignored: bool = False
    error: NbaError | None = None


def events_of(source: CallbackSource, payload: Any) -> list[Any]:
    """The payload's events (one object, or the list at ``source.events``)."""
    found = _at(payload, source.events) if source.events else payload
    if isinstance(found, dict):
        found = [found]
    if not isinstance(found, list):
        where = source.events or "the payload"
        raise InvalidArgument(f"body: {where} must be an event or a list of events, got {value_kind(found)}", "body")
    if len(found) > MAX_EVENTS:
        raise InvalidArgument(f"body: {len(found)} events, more than {MAX_EVENTS} a call; send fewer at a time", "body")
    return found


def mapped(source: CallbackSource, index: int, event: Any) -> Mapped:
    """Event ``index`` of a payload as feedback, by the source's field paths."""
    fields = source.fields
    try:
        if not isinstance(event, dict):
            raise InvalidArgument(f"events[{index}]: must be an object, got {value_kind(event)}", f"events[{index}]")
        values: dict[str, Any] = {}
        for name in _REQUIRED:
            path = getattr(fields, name)
            value = _at(event, path)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "outcome":
                value = str(value)
            if not isinstance(value, str) or not value:
                raise InvalidArgument(
                    f"events[{index}].{path}: the {name} must be a text, got {value_kind(value)}", f"events[{index}].{path}"
                )
            values[name] = value
        theirs = values["outcome"]
        ours = source.outcomes.get(theirs, theirs)
        if ours == "ignore":
            return Mapped(index, values["event_id"], values["decision_id"], values["offer_id"], theirs, ignored=True)
        if ours not in OUTCOMES:
            raise InvalidArgument(
                f"events[{index}].{fields.outcome}: '{theirs[:40]}' is no outcome this source maps "
                f"(its outcomes: {', '.join(sorted(source.outcomes)) or 'none'}; nba's: {', '.join(OUTCOMES)})",
                f"events[{index}].{fields.outcome}",
            )
        reward = None
        if fields.reward is not None:
            raw = _at(event, fields.reward)
            if raw is not None:
                if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                    raise InvalidArgument(
                        f"events[{index}].{fields.reward}: the reward must be a number, got {value_kind(raw)}",
                        f"events[{index}].{fields.reward}",
                    )
                reward = float(raw)
        occurred = None
        if fields.occurred_at is not None:
            raw = _at(event, fields.occurred_at)
            if raw is not None:
                occurred = _time(raw, source.time, f"events[{index}].{fields.occurred_at}")
        return Mapped(index, values["event_id"], values["decision_id"], values["offer_id"], ours, reward, occurred)
    except NbaError as exc:
        named = _at(event, fields.event_id) if isinstance(event, dict) else None
        return Mapped(index, event_id=str(named)[:256] if isinstance(named, (str, int)) else "", error=exc)


def _time(value: Any, kind: str, where: str) -> datetime:
    try:
        if kind == "rfc3339":
            if not isinstance(value, str):
                raise TypeError
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise InvalidArgument(f"{where}: needs a time zone (UTC: ...Z)", where)
            return parsed.astimezone(UTC)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        seconds = value / 1000 if kind == "unix_ms" else value
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        expected = {"rfc3339": "an RFC 3339 time", "unix": "Unix seconds", "unix_ms": "Unix milliseconds"}[kind]
        raise InvalidArgument(f"{where}: must be {expected}, got {value_kind(value)}", where) from None


def _at(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class SignatureStore(Protocol):
    def signature_seen(self, source: str, signature: str) -> bool: ...

    def keep_signature(self, source: str, signature: str, now: datetime, forget_before: datetime) -> bool: ...


class Callbacks:
    """The declared sources, taking their signed payloads as feedback through ``intake``."""

    def __init__(
        self,
        sources: CallbackSources,
        secrets: dict[str, list[bytes]],
        intake: FeedbackIntake,
        signatures: SignatureStore,
        clock: Clock,
    ) -> None:
        self._sources = sources.sources
        self._secrets = secrets
        self._intake = intake
        self._signatures = signatures
        self._clock = clock

    @property
    def names(self) -> list[str]:
        """The declared sources' names."""
        return sorted(self._sources)

    def take(
        self, name: str, timestamp: str | None, signature: str | None, raw: bytes, parse: Callable[[bytes], Any]
    ) -> pb.CallbackResponse:
        """Applies a payload of source ``name``; raises ``NotFound`` (no such source),
        ``Unauthenticated`` (signature), ``AlreadyExists`` (a replay), ``InvalidArgument`` (the
        payload is not the source's shape) or ``Unavailable`` (an event could not be applied
        now: the tool should send it all again; nothing is applied twice)."""
        source = self._sources.get(name)
        if source is None:
            raise NotFound(f"source: no callback source '{name[:64]}' is declared")
        now = self._clock.now()
        delivery = verify(self._secrets[name], timestamp, signature, raw, now)
        if self._signatures.signature_seen(name, delivery):
            raise AlreadyExists("nba-signature: this signed request was taken before; sign each delivery with its own timestamp")
        mapped_events = [mapped(source, n, event) for n, event in enumerate(events_of(source, parse(raw)))]
        taken = [m for m in mapped_events if m.error is None and not m.ignored]
        outcomes = iter(
            self._intake.receive_many(
                [(m.event_id, m.decision_id, m.offer_id, m.outcome, m.reward, m.occurred_at) for m in taken]
            )
        )
        results = []
        retry = []
        for m in mapped_events:
            if m.error is not None:
                results.append(_refused(m.index, m.event_id, m.error, source))
            elif m.ignored:
                results.append(pb.CallbackResult(index=m.index, event_id=m.event_id, status="ignored"))
            else:
                outcome = next(outcomes)
                if isinstance(outcome, Unavailable):
                    retry.append(outcome)
                if isinstance(outcome, NbaError):
                    results.append(_refused(m.index, m.event_id, outcome, source))
                else:
                    status = (
                        "duplicate"
                        if outcome.duplicate
                        else "late"
                        if outcome.late
                        else "applied"
                        if outcome.applied
                        else "stored"
                    )
                    results.append(pb.CallbackResult(index=m.index, event_id=m.event_id, status=status))
        if retry:
            raise Unavailable(f"{len(retry)} of the events could not be taken now ({retry[0]}); send the payload again")
        if not self._signatures.keep_signature(name, delivery, now, now - REPLAY_WINDOW - CLOCK_AHEAD):
            raise AlreadyExists("nba-signature: this signed request was taken by another call at the same time")
        return pb.CallbackResponse(source=name, results=results)


def _refused(index: int, event_id: str, error: NbaError, source: CallbackSource) -> pb.CallbackResult:
    """A refused event, its field at fault named by the source's own path (``events[5].nba_decision_id``)."""
    field = field_of(error)
    if field and not field.startswith("events["):
        head, _, rest = field.partition(".")
        path = getattr(source.fields, head, None) if head in _Fields.model_fields else None
        field = f"events[{index}].{path or head}" + (f".{rest}" if rest else "")
    return pb.CallbackResult(
        index=index, event_id=event_id, status="refused", error_code=error.code, error_message=str(error), error_field=field
    )
