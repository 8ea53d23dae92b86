"""Decision ids: made here, and read back here.

An id is 32 lowercase hex digits: the Unix time of the decision in milliseconds (12 digits),
then 80 random bits. Time first, so that ids sort and index well; and so that Feedback can
tell a decision that may still be on its way to the log (made moments ago by another worker
or replica) from one that is unknown.
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["decision_time", "new_decision_id"]

_DECISION_ID = re.compile(r"[0-9a-f]{32}")


def new_decision_id(now: float | None = None) -> str:
    """A fresh id for a decision made at ``now`` (seconds since the epoch; default: now)."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{os.urandom(10).hex()}"


def decision_time(decision_id: str) -> float | None:
    """When the decision was made (seconds since the epoch), if ``decision_id`` has the shape
    of one of ours; None otherwise. Anyone can write such an id: the time says when the id
    claims to be from, not that the decision exists.

    >>> decision_time("019ab2c4e1f05c0d3a9e4b1f27c8d6a0")
    1763935838.704
    >>> decision_time("evt-7f3a") is None
    True
    """
    if _DECISION_ID.fullmatch(decision_id) is None:
        return None
    return int(decision_id[:12], 16) / 1000
