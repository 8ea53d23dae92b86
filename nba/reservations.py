"""Exact caps and budgets: a decision reserves the contacts it counts before it is answered.

Screening checks caps and budgets against the contact history and counters this process
holds. Two decisions at the same moment (two threads, or two replicas) can both see the last
unit left and both take it. For the policies that count decisions themselves
(``counts: decided``) that race can be closed: before a decision is answered, it claims one
unit of each such cap and budget covering the offers it answers, all or nothing, in one
atomic step against a store every deciding process shares. A refused claim takes the offer
out (screened out as ``contact_cap`` or ``budget``) and the rest are ranked again.

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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from nba import metrics

__all__ = ["Claim", "LocalReservations", "RedisReservations", "Reservations"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """One unit of a cap or budget, for one answered offer."""

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
    #: for the refusal's screening reason: ("contact_cap" | "budget", the policy's id)
    reason: str = "contact_cap"
    policy: str = ""


class Reservations(Protocol):
    def reserve(self, claims: Sequence[Claim], now: float, token: str) -> str | None:
        """Takes every claim, or none: returns the key that had no unit left, or None."""
        ...


def _grouped(claims: Sequence[Claim]) -> dict[str, tuple[Claim, int]]:
    """Claims on one key (two answered offers under one group cap) are taken together."""
    found: dict[str, tuple[Claim, int]] = {}
    for claim in claims:
        first, need = found.get(claim.key, (claim, 0))
        found[claim.key] = (first, need + 1)
    return found


class LocalReservations:
    """One process's store: a lock over the units held per key (least recently used keys are
    dropped beyond ``max_keys``; a dropped key starts again from the process's history)."""

    def __init__(self, max_keys: int = 500_000) -> None:
        self._held: OrderedDict[str, list[float] | list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_keys

    def reserve(self, claims: Sequence[Claim], now: float, token: str) -> str | None:
        grouped = _grouped(claims)
        with self._lock:
            states: dict[str, Any] = {}
            for key, (claim, need) in grouped.items():
                state = self._held.get(key)
                if claim.kind == "window":
                    units = [t for t in (state if state is not None else claim.known) if t > now]  # type: ignore[union-attr]
                    count = len(units)
                    states[key] = units
                else:
                    count = state[0] if state is not None else int(claim.known)  # type: ignore[arg-type, index]
                    states[key] = [count]
                if count + need > claim.limit:
                    self._held[key] = states[key]
                    return key
            for key, (claim, need) in grouped.items():
                if claim.kind == "window":
                    states[key].extend([claim.expires if claim.expires is not None else float("inf")] * need)
                else:
                    states[key][0] += need
                self._held[key] = states[key]
                self._held.move_to_end(key)
            while len(self._held) > self._max:
                self._held.popitem(last=False)
        return None


# KEYS: the claimed keys. ARGV: now, token, then per key: kind, limit, need, expires (-1:
# never), the number of known values, and for a window those values (unit expiry times).
# A window is a sorted set of units scored by expiry; a counter a plain integer. A key Redis
# has not seen starts from the known values. All are checked before any is taken.
_SCRIPT = """
local now = tonumber(ARGV[1])
local token = ARGV[2]
local pos = 3
local plan = {}
for i, key in ipairs(KEYS) do
  local kind = ARGV[pos]
  local limit = tonumber(ARGV[pos + 1])
  local need = tonumber(ARGV[pos + 2])
  local expires = tonumber(ARGV[pos + 3])
  local n = tonumber(ARGV[pos + 4])
  pos = pos + 5
  local count
  if kind == 'w' then
    if redis.call('EXISTS', key) == 0 then
      for j = 0, n - 1 do
        local at = tonumber(ARGV[pos + j])
        if at > now then redis.call('ZADD', key, at, 'h' .. j) end
      end
    end
    pos = pos + n
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    count = redis.call('ZCARD', key)
  else
    count = tonumber(redis.call('GET', key) or n)
  end
  if count + need > limit then return key end
  plan[i] = {kind, need, expires, n}
end
for i, key in ipairs(KEYS) do
  local kind, need, expires, n = plan[i][1], plan[i][2], plan[i][3], plan[i][4]
  if kind == 'w' then
    for j = 1, need do redis.call('ZADD', key, expires, token .. ':' .. j) end
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] and tonumber(last[2]) > 0 then
      redis.call('PEXPIREAT', key, math.ceil(tonumber(last[2]) * 1000) + 1000)
    end
  else
    if redis.call('EXISTS', key) == 0 then redis.call('SET', key, n) end
    redis.call('INCRBY', key, need)
    if expires >= 0 then redis.call('PEXPIREAT', key, math.ceil(expires * 1000) + 1000) end
  end
end
return false
"""

#: a window unit that never expires (a cap's window is at most ten years)
_NEVER = 1e11


class RedisReservations:
    """Replicas on a Redis bus: one script call per decision that claims anything, atomic in
    Redis. When Redis cannot be reached, ``reserve`` raises; the caller answers on screening
    alone (degraded, counted)."""

    def __init__(self, client: Any, prefix: str, up: Callable[[], bool] = lambda: True) -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)
        self._up = up

    def reserve(self, claims: Sequence[Claim], now: float, token: str) -> str | None:
        if not self._up():  # known to be down: do not wait for a timeout on every decision
            raise ConnectionError("the Redis bus is down")
        grouped = _grouped(claims)
        keys: list[str] = []
        args: list[Any] = [repr(now), token]
        for key, (claim, need) in grouped.items():
            keys.append(self._prefix + key)
            expires = claim.expires if claim.expires is not None else (_NEVER if claim.kind == "window" else -1)
            if claim.kind == "window":
                known = claim.known if isinstance(claim.known, tuple) else ()
                args += ["w", claim.limit, need, repr(expires), len(known), *(repr(t) for t in known)]
            else:
                args += ["c", claim.limit, need, repr(expires), int(claim.known)]  # type: ignore[arg-type]
        refused = self._script(keys=keys, args=args)
        if refused is None:
            return None
        return refused.decode().removeprefix(self._prefix)


def reserve_or_degrade(store: Reservations | None, claims: Sequence[Claim], now: float, token: str) -> str | None:
    """``store.reserve``, except that a store that cannot be reached refuses nothing: the
    decision stands on screening alone, as without reservations, and is counted."""
    if store is None or not claims:
        return None
    try:
        refused = store.reserve(claims, now, token)
    except Exception as exc:  # noqa: BLE001 - any failure of the shared store degrades, never fails Decide
        metrics.RESERVATIONS.labels("unavailable").inc()
        log.debug("reservation store unavailable", extra={"error": repr(exc)})
        return None
    metrics.RESERVATIONS.labels("taken" if refused is None else "refused").inc()
    return refused
