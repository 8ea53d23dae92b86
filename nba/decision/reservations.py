"""Exact caps and budgets: a decision reserves the contacts it counts before it is answered.

Screening checks caps and budgets against the contact history and counters this process
holds. Two decisions at the same moment (two threads, or two replicas) can both see the last
unit left and both take it. For the policies that count decisions themselves
(``counts: decided``) that race can be closed: before a decision is answered, it claims one
unit of each such cap and budget covering the offers it answers, all or nothing, in one
atomic step against a store every deciding process shares. Every answered offer also adds
its unit to the caps whose scope counts it without covering it (a per-customer cap counts
everything the customer got), unchecked. A refused claim takes the offer out (screened out
as ``contact_cap``, ``budget`` or ``pacing``) and the rest are ranked again.

Policies counting outcomes (impressed, clicked, accepted, rejected) cannot be reserved: the
outcome is not known when deciding. They hold as of the feedback received, which reaches
every replica within milliseconds (the bus).

Two stores: ``LocalReservations`` (one process: a lock) and ``RedisReservations`` (replicas
on a Redis bus: one Lua script, atomic in Redis). A key the store has not seen starts from
what this process knows (the contact history and counters, rebuilt from the decision log),
so a restarted Redis, or a restarted process, starts from the truth rather than from zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from nba import metrics

__all__ = [
    "Claim",
    "LocalReservations",
    "RedisReservations",
    "Reservations",
    "first_misfit",
    "key",
    "release_quietly",
    "reserve_or_degrade",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """One unit of a cap or budget, taken by one answered offer."""

    key: str
    #: the most units the key may hold, this claim's included
    limit: int
    #: a cap counts in a rolling window (each unit expires); a budget is a counter per day or in total
    kind: Literal["window", "counter"]
    #: when this unit stops counting (epoch seconds): a window's end, a budget day's end; None: never
    expires: float | None
    #: what this process knows already: the expiry times of the window's units (a cap), or the
    #: count (a budget). A store that has not seen the key starts from it.
    known: tuple[float, ...] | int
    #: whether the claim may be refused (the policy holds this offer on this channel), or only
    #: adds its unit (the contact counts towards a cap that does not hold the offer)
    check: bool = True
    #: for the refusal's screening reason: "contact_cap", "budget" or "pacing", and the policy's id
    reason: str = "contact_cap"
    policy: str = ""

    def known_count(self, now: float) -> int:
        if isinstance(self.known, tuple):
            return sum(1 for t in self.known if t > now)
        return int(self.known)


def key(*parts: str) -> str:
    """Joins key parts with ':', escaping it (and '%') in each: ids may contain ':'."""
    return ":".join(p.replace("%", "%25").replace(":", "%3A") for p in parts)


def first_misfit(claims: Sequence[Claim], now: float) -> int | None:
    """The index of the first checked claim that finds no unit left by this process's own
    count, with the claims before it taken (several answered offers under one cap)."""
    taken: dict[str, int] = {}
    for i, claim in enumerate(claims):
        count = claim.known_count(now) + taken.get(claim.key, 0)
        if claim.check and count + 1 > claim.limit:
            return i
        taken[claim.key] = taken.get(claim.key, 0) + 1
    return None


class Reservations(Protocol):
    def reserve(self, claims: Sequence[Claim], now: float, token: str) -> int | None:
        """Takes every claim, in order, or none: returns the index of the first refused one
        (a checked claim with no unit left, counting those before it), or None."""
        ...

    def release(self, claims: Sequence[Claim], token: str) -> None:
        """Gives back the units ``reserve`` took for ``token`` (a decision not answered after all)."""
        ...


class LocalReservations:
    """One process's store: a lock over the units held per key (least recently used keys are
    dropped beyond ``max_keys``; a dropped key starts again from the process's history)."""

    def __init__(self, max_keys: int = 500_000) -> None:
        # a window: [(expiry, member)]; a counter: [count]
        self._held: OrderedDict[str, list[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_keys

    def _state(self, claim: Claim, now: float) -> list[Any]:
        state = self._held.get(claim.key)
        if claim.kind == "window":
            if state is None:
                state = [(t, f"h{j}") for j, t in enumerate(claim.known) if t > now]  # type: ignore[arg-type]
            else:
                state[:] = [u for u in state if u[0] > now]
        elif state is None:
            state = [int(claim.known)]  # type: ignore[arg-type]
        self._held[claim.key] = state
        return state

    def reserve(self, claims: Sequence[Claim], now: float, token: str) -> int | None:
        with self._lock:
            states = [self._state(c, now) for c in claims]
            pending: dict[str, int] = {}
            for i, (claim, state) in enumerate(zip(claims, states, strict=True)):
                count = (len(state) if claim.kind == "window" else state[0]) + pending.get(claim.key, 0)
                if claim.check and count + 1 > claim.limit:
                    return i
                pending[claim.key] = pending.get(claim.key, 0) + 1
            for i, (claim, state) in enumerate(zip(claims, states, strict=True)):
                if claim.kind == "window":
                    state.append((claim.expires if claim.expires is not None else float("inf"), f"{token}:{i}"))
                else:
                    state[0] += 1
                self._held.move_to_end(claim.key)
            while len(self._held) > self._max:
                self._held.popitem(last=False)
        return None

    def release(self, claims: Sequence[Claim], token: str) -> None:
        with self._lock:
            for i, claim in enumerate(claims):
                state = self._held.get(claim.key)
                if state is None:
                    continue
                if claim.kind == "window":
                    state[:] = [u for u in state if u[1] != f"{token}:{i}"]
                else:
                    state[0] = max(0, state[0] - 1)


# KEYS: one per claim, in order (a key may repeat). ARGV: now, token, then per claim: kind
# (w: window, c: counter), limit, check (1/0), expires (-1: never), the number of known
# values, and for a window those values (unit expiry times). A window is a sorted set of units
# scored by expiry; a counter a plain integer. A key Redis has not seen starts from the known
# values. Every claim is checked, counting those before it, before any unit is taken.
_RESERVE = """
local now = tonumber(ARGV[1])
local token = ARGV[2]
local pos = 3
local pending = {}
local seen = {}
local plan = {}
for i, key in ipairs(KEYS) do
  local kind = ARGV[pos]
  local limit = tonumber(ARGV[pos + 1])
  local check = ARGV[pos + 2] == '1'
  local expires = tonumber(ARGV[pos + 3])
  local n = tonumber(ARGV[pos + 4])
  pos = pos + 5
  local count
  if kind == 'w' then
    if not seen[key] then
      seen[key] = true
      if redis.call('EXISTS', key) == 0 then
        local top = 0
        for j = 0, n - 1 do
          local at = tonumber(ARGV[pos + j])
          if at > now then
            redis.call('ZADD', key, at, 'h' .. j)
            if at > top then top = at end
          end
        end
        if top > 0 then redis.call('PEXPIREAT', key, math.ceil(top * 1000) + 1000) end
      end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    end
    pos = pos + n
    count = redis.call('ZCARD', key)
  else
    count = tonumber(redis.call('GET', key) or n)
  end
  count = count + (pending[key] or 0)
  if check and count + 1 > limit then return i end
  pending[key] = (pending[key] or 0) + 1
  plan[i] = {kind, expires, n}
end
for i, key in ipairs(KEYS) do
  local kind, expires, n = plan[i][1], plan[i][2], plan[i][3]
  if kind == 'w' then
    redis.call('ZADD', key, expires, token .. ':' .. i)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIREAT', key, math.ceil(tonumber(last[2]) * 1000) + 1000)
  else
    if redis.call('EXISTS', key) == 0 then redis.call('SET', key, n) end
    redis.call('INCR', key)
    if expires >= 0 then redis.call('PEXPIREAT', key, math.ceil(expires * 1000) + 1000) end
  end
end
return false
"""

# KEYS: the claims' keys, in the order they were reserved; ARGV: token, then each claim's kind.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if ARGV[i + 1] == 'w' then
    redis.call('ZREM', key, ARGV[1] .. ':' .. i)
  elseif redis.call('EXISTS', key) == 1 and tonumber(redis.call('GET', key)) > 0 then
    redis.call('DECR', key)
  end
end
return false
"""

#: a window unit that never expires (a cap's window is at most ten years)
_NEVER = 1e11
#: after a failure, how long reservations are not tried (decisions rest on screening)
_RETRY_SECONDS = 1.0


class RedisReservations:
    """Replicas on a Redis bus: one script call per decision that claims anything, atomic in
    Redis. When Redis cannot be reached, ``reserve`` raises (for a second after a failure,
    at once); the caller answers on screening alone (degraded, counted)."""

    def __init__(self, client: Any, prefix: str, up: Callable[[], bool] = lambda: True) -> None:
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self._up = up
        self._down_until = 0.0

    def reserve(self, claims: Sequence[Claim], now: float, token: str) -> int | None:
        if not self._up() or time.monotonic() < self._down_until:  # do not wait for a timeout on every decision
            raise ConnectionError("the Redis bus is down")
        args: list[Any] = [repr(now), token]
        for claim in claims:
            expires = claim.expires if claim.expires is not None else (_NEVER if claim.kind == "window" else -1)
            check = "1" if claim.check else "0"
            if claim.kind == "window":
                known = claim.known if isinstance(claim.known, tuple) else ()
                args += ["w", claim.limit, check, repr(expires), len(known), *(repr(t) for t in known)]
            else:
                args += ["c", claim.limit, check, repr(expires), int(claim.known)]  # type: ignore[arg-type]
        try:
            refused = self._reserve(keys=[self._prefix + c.key for c in claims], args=args)
        except Exception:
            self._down_until = time.monotonic() + _RETRY_SECONDS
            raise
        return None if refused is None else int(refused) - 1

    def release(self, claims: Sequence[Claim], token: str) -> None:
        self._release(
            keys=[self._prefix + c.key for c in claims], args=[token, *("w" if c.kind == "window" else "c" for c in claims)]
        )


_WARN_EVERY_SECONDS = 10.0
_warned_at = -_WARN_EVERY_SECONDS


def reserve_or_degrade(store: Reservations | None, claims: Sequence[Claim], now: float, token: str) -> tuple[int | None, bool]:
    """``store.reserve``, except that a store that cannot be reached refuses nothing: the
    decision stands on screening alone, as without reservations, and is counted. Returns
    the refused claim's index (or None) and whether units were taken."""
    if store is None or not claims:
        return None, False
    try:
        refused = store.reserve(claims, now, token)
    except Exception as exc:
        metrics.RESERVATIONS.labels("unavailable").inc()
        global _warned_at
        if time.monotonic() - _warned_at > _WARN_EVERY_SECONDS:  # once in a while, not every decision
            _warned_at = time.monotonic()
            log.warning(
                "reservations unavailable: caps and budgets counting decisions rest on screening", extra={"error": repr(exc)}
            )
        return None, False
    metrics.RESERVATIONS.labels("taken" if refused is None else "refused").inc()
    return refused, refused is None


def release_quietly(store: Reservations | None, claims: Sequence[Claim] | None, token: str) -> None:
    if store is None or not claims:
        return
    try:
        store.release(claims, token)
    except Exception as exc:
        log.warning("could not give back reserved units", extra={"error": repr(exc)})
