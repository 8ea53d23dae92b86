"""Offline evaluations started from the console, run in the background: each in a child process of
its own (the estimators are CPU-bound, and the serving process's cores are for Decide), which
reads the decision log, writes its progress and, at the end, its report into the ``evaluations``
table. Any worker or replica shows any evaluation's progress, since it is in the database.

Targets are named as ``nba evaluate --policy`` names them, less what would read the server's
files: ``logged``, ``uniform``, ``popular``, ``learner`` (optionally ``learner:gamma_scale=30,...``),
``live`` (the live policy set, ranked by a learner replayed over the log), ``version:N`` (a
published version, likewise) and ``draft`` (a draft's files, sent with the request, likewise). The estimators, intervals and warnings are ``nba.evaluation``'s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from nba.errors import FailedPrecondition, InvalidArgument, NotFound
from nba.evaluation import evaluate, from_store, parse_target
from nba.evaluation.logs import LogError
from nba.evaluation.reward_model import RewardModel
from nba.evaluation.targets import PolicySetTarget, TargetPolicy
from nba.policy.loading import parse_policy_set
from nba.service.servicers import MAX_VERSION
from nba.storage.engine import open_engine
from nba.storage.store import Store

__all__ = ["EvaluationJobs", "MAX_TARGETS", "run_evaluation"]

log = logging.getLogger(__name__)

#: targets one evaluation may compare
MAX_TARGETS = 8
#: bootstrap resamples behind each interval (nba evaluate's default is 500; the console trades a
#: little precision in the interval's ends for a report in a fraction of the time)
BOOTSTRAP = 200
#: an evaluation whose process wrote nothing for this long has stopped (the process died); it
#: writes at least every HEARTBEAT_SECONDS while it lives
STALLED_SECONDS = 120.0
HEARTBEAT_SECONDS = 10.0
#: the largest hashed feature space a learner target may ask for (its state grows with the square)
MAX_FEATURES = 1024
_BUILT_IN = ("logged", "uniform", "popular")


def check_request(
    request: Any, versions: Callable[[int], bool], validate: Callable[[Mapping[str, str]], None] | None = None
) -> dict[str, Any]:
    """A request as the console sends it, checked: ``{"targets": [...], "since": "2026-11-01",
    "until": "2026-11-30"}`` (dates UTC, inclusive; either may be empty), and for the target
    ``draft`` the draft's ``draft_files`` (name to YAML text). ``InvalidArgument`` naming the
    field at fault (``PolicySetError`` for an invalid draft, from ``validate``); ``versions(n)``:
    whether version n exists."""
    if not isinstance(request, dict):
        raise InvalidArgument("body: a JSON object of targets, since and until", "body")
    targets = request.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidArgument("targets: pick one or more policies to evaluate", "targets")
    if len(targets) > MAX_TARGETS:
        raise InvalidArgument(f"targets: {len(targets)} policies, more than {MAX_TARGETS}", "targets")
    if len(set(targets)) != len(targets):
        raise InvalidArgument("targets: a policy named twice", "targets")
    for spec in targets:
        kind, _, rest = spec.partition(":")
        if kind in _BUILT_IN or kind == "live":
            if rest:
                raise InvalidArgument(f"targets: {spec}: {kind} takes no settings", "targets")
        elif kind == "learner":
            check_learner_settings(spec, rest)
        elif kind == "version":
            if not rest.isascii() or not rest.isdigit() or int(rest) > MAX_VERSION or not versions(int(rest)):
                raise InvalidArgument(f"targets: {spec}: no such published version", "targets")
        elif kind == "draft" and not rest:
            files = request.get("draft_files")
            if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
                raise InvalidArgument("draft_files: the draft's files, name to YAML text", "draft_files")
            if validate is not None:
                validate(files)
        else:
            raise InvalidArgument(
                f"targets: {spec[:80]}: not a policy (logged, uniform, popular, learner[:k=v,...], live, version:N, draft)",
                "targets",
            )
    out: dict[str, Any] = {"targets": targets}
    if "draft" in targets:
        out["draft_files"] = request["draft_files"]
    for name in ("since", "until"):
        value = request.get(name) or ""
        if not isinstance(value, str):
            raise InvalidArgument(f"{name}: a date, as 2026-11-30", name)
        if value:
            try:
                value = date.fromisoformat(value).isoformat()
            except ValueError:
                raise InvalidArgument(f"{name}: {value[:40]!r} is not a date, as 2026-11-30", name) from None
        out[name] = value
    if out["since"] and out["until"] and out["until"] < out["since"]:
        raise InvalidArgument("until: before since", "until")
    return out


#: what a learner target's settings may be: their bounds, and the kind of value
_LEARNER_SETTINGS: dict[str, tuple[type, float, float]] = {
    "features": (int, 1, MAX_FEATURES),
    "alpha": (float, 0.0, 1e6),
    "prior": (float, 0.0, 1e6),
    "forget": (float, 0.5, 1.0),
    "shared": (float, 0.0, 1.0),
    "optimism": (float, 0.0, 1e6),
    "gamma_scale": (float, 0.0, 1e9),
    "gamma_exponent": (float, 0.0, 10.0),
    "epsilon": (float, 0.0, 1.0),
    "seed": (int, 0, 2**31 - 1),
}


def check_learner_settings(spec: str, text: str) -> None:
    """A learner target's ``key=value`` settings checked by name and bound, without building the
    learner (its arrays grow with the square of ``features``: that is for the child to pay)."""
    for part in filter(None, text.split(",")):
        key, sep, value = (p.strip() for p in part.partition("="))
        if not sep:
            raise InvalidArgument(f"targets: {spec[:80]}: settings are key=value, got {part[:40]!r}", "targets")
        if key in ("age", "detect"):
            if value.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                raise InvalidArgument(f"targets: {spec[:80]}: {key} is true or false", "targets")
            continue
        bound = _LEARNER_SETTINGS.get(key)
        if bound is None:
            known = ", ".join(sorted([*_LEARNER_SETTINGS, "age", "detect"]))
            raise InvalidArgument(f"targets: {spec[:80]}: unknown setting {key[:40]!r} (the settings: {known})", "targets")
        kind, low, high = bound
        try:
            number = kind(value)
        except ValueError:
            raise InvalidArgument(
                f"targets: {spec[:80]}: {key} must be a {'whole ' if kind is int else ''}number", "targets"
            ) from None
        if not (math.isfinite(number) and low <= number <= high):
            raise InvalidArgument(f"targets: {spec[:80]}: {key} must be {low:g} to {high:g}, got {value[:40]}", "targets")


class EvaluationJobs:
    """Starts evaluations in child processes and stops them with the service."""

    def __init__(
        self, store: Any, database_url: str, clock: Any, validate: Callable[[Mapping[str, str]], None] | None = None
    ) -> None:
        self._store = store
        self._validate = validate
        self._url = database_url
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[int, Any] = {}
        self._context = multiprocessing.get_context("spawn")

    def start(self, request: Any, created_by: str) -> int:
        """Checks ``request`` (``check_request``), records it and starts its process; its id.
        One evaluation runs at a time on a database (``FailedPrecondition`` while another does):
        each holds the log's decisions in memory and a core busy."""
        checked = check_request(request, lambda n: self._store.policy_set_row(n) is not None, self._validate)
        now = self._clock.now()
        busy = [row for row in self._store.evaluations(10) if _stalled(row, now)["status"] in ("waiting", "running")]
        if busy:
            raise FailedPrecondition(
                f"evaluation: evaluation {busy[0]['id']} is still running; wait for it to finish, then start this one"
            )
        evaluation_id = int(self._store.create_evaluation(checked, created_by, now))
        process = self._context.Process(
            target=run_evaluation, args=(self._url, evaluation_id), name=f"nba-evaluation-{evaluation_id}", daemon=True
        )
        process.start()
        with self._lock:
            self._reap()
            self._running[evaluation_id] = process
        log.info("evaluation started", extra={"evaluation": evaluation_id, "targets": checked["targets"], "by": created_by})
        return evaluation_id

    def _reap(self) -> None:
        """Forgets (and joins) the finished children. Call with ``_lock`` held."""
        for evaluation_id, process in list(self._running.items()):
            if not process.is_alive():
                process.join(0)
                del self._running[evaluation_id]

    def get(self, evaluation_id: int) -> dict[str, Any]:
        """An evaluation with its report; ``NotFound`` for an unknown id. One whose process has
        written nothing for ``STALLED_SECONDS`` while running is reported ``stalled``."""
        with self._lock:
            self._reap()
        row = self._store.evaluation(evaluation_id)
        if row is None:
            raise NotFound(f"evaluation: no evaluation {evaluation_id}")
        return _stalled(row, self._clock.now())

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            self._reap()
        now = self._clock.now()
        return [_stalled(row, now) for row in self._store.evaluations(limit)]

    def stop(self) -> None:
        """Stops the evaluations this process started; they are recorded as failed."""
        with self._lock:
            running = dict(self._running)
            self._running.clear()
        for evaluation_id, process in running.items():
            if process.is_alive():
                process.terminate()
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join(5)
                try:
                    self._store.update_evaluation(
                        evaluation_id,
                        self._clock.now(),
                        status="failed",
                        stage="stopped",
                        error="the service stopped while it ran",
                    )
                except Exception:  # the database may be what stopped the service
                    log.warning("could not record a stopped evaluation", extra={"evaluation": evaluation_id})


def _finite(value: float) -> float | None:
    """A number for the report's JSON: NaN and infinities (an estimator with no support) as null."""
    return float(value) if math.isfinite(value) else None


def _stalled(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    if row["status"] in ("waiting", "running") and (now - row["updated_at"]).total_seconds() > STALLED_SECONDS:
        return {**row, "status": "stalled", "error": row["error"] or "its process stopped (the service restarted?)"}
    return row


def run_evaluation(database_url: str, evaluation_id: int) -> None:
    """A child process's work: the evaluation ``evaluation_id`` run and its report written."""
    with contextlib.suppress(OSError):
        os.nice(10)  # behind the service's own work on a shared machine
    store = Store(open_engine(database_url))

    def now() -> datetime:
        return datetime.now(UTC)

    def step(stage: str, progress: float) -> None:
        store.update_evaluation(evaluation_id, now(), status="running", stage=stage, progress=progress)

    done = threading.Event()

    def heartbeat() -> None:
        """A stage may run for minutes: the row says the process lives, between stages too."""
        while not done.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                store.update_evaluation(evaluation_id, now())

    threading.Thread(target=heartbeat, name="nba-evaluation-heartbeat", daemon=True).start()

    try:
        row = store.evaluation(evaluation_id)
        if row is None:
            return
        request = row["request"]
        step("reading the decision log", 0.02)
        since = datetime.combine(datetime.fromisoformat(request["since"]).date(), time(), UTC) if request["since"] else None
        until = (
            datetime.combine(datetime.fromisoformat(request["until"]).date(), time(), UTC) + timedelta(days=1)
            if request["until"]
            else None
        )
        refused: list[LogError] = []
        decisions = from_store(store, since, until, True, 0.0, refused)
        notes = []
        if refused:
            notes.append(f"{len(refused)} logged decisions break the logged-data contract and are left out")
        closed = [d for d in decisions if not d.open]
        if closed and len(closed) < len(decisions):
            notes.append(f"{len(decisions) - len(closed)} decisions whose reward windows are still open are left out")
            decisions = closed
        elif decisions and not closed:
            notes.append("no decision's reward windows have closed yet: outcomes not reported yet count as reward 0")
        if not decisions:
            raise ValueError("no logged decisions in the period")
        targets: list[TargetPolicy] = []
        for spec in request["targets"]:
            kind, _, rest = spec.partition(":")
            if kind in _BUILT_IN or kind == "learner":
                targets.append(parse_target(spec))
            elif kind == "draft":
                targets.append(PolicySetTarget("draft", parse_policy_set(dict(request["draft_files"]), now(), sampled=False)))
            else:
                version = int(rest) if kind == "version" else int(store.live_activation().version)
                stored = store.policy_set_row(version)
                policy_set = parse_policy_set(dict(stored.files), now(), sampled=False)
                targets.append(PolicySetTarget(spec if kind == "version" else f"live (version {version})", policy_set))
        step("fitting the reward model", 0.15)
        model = RewardModel(decisions)
        estimates = []
        for k, target in enumerate(targets):
            step(f"estimating {target.name} ({k + 1} of {len(targets)})", 0.25 + 0.7 * k / len(targets))
            estimates.extend(evaluate(decisions, [target], n_bootstrap=BOOTSTRAP, seed=0, reward_model=model))
        brier, constant = model.brier()
        report = {
            "decisions": len(decisions),
            "first": decisions[0].decided_at.isoformat(),
            "last": decisions[-1].decided_at.isoformat(),
            "estimates": [
                {
                    "policy": e.policy,
                    "estimator": e.estimator,
                    "value": _finite(e.value),
                    "low": _finite(e.low),
                    "high": _finite(e.high),
                    "ess": _finite(e.ess),
                    "warnings": list(e.warnings),
                }
                for e in estimates
            ],
            "notes": notes,
            "brier": _finite(brier),
            "brier_constant": _finite(constant),
            "bootstrap": BOOTSTRAP,
        }
        store.update_evaluation(evaluation_id, now(), status="done", stage="done", progress=1.0, report=report)
    except Exception as exc:
        log.exception("evaluation failed", extra={"evaluation": evaluation_id})
        store.update_evaluation(evaluation_id, now(), status="failed", stage="failed", error=str(exc)[:1000])
    finally:
        done.set()
        store.engine.dispose()
