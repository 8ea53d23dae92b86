"""What a client may send: the rules every string and time from outside is held to.

One checker for every RPC, so that every field meets the same rules, and so that SQLite and
PostgreSQL give the same answer (PostgreSQL cannot store U+0000 in text; SQLite can, and other
control characters would reach logs, exports and terminals on both):

    ids and names      1 to 256 characters (customer_id, request_id, channel, event_id,
                       decision_id, offer_id, context keys, policy file names); no control
                       character at all
    free text          comments (at most 1,000 characters) and policy files: tab, line feed
                       and carriage return are allowed, no other control character
    control character  Unicode category Cc: C0 (U+0000 to U+001F), DEL (U+007F) and C1
                       (U+0080 to U+009F); and unpaired surrogates (U+D800 to U+DFFF), which
                       protobuf cannot carry (it refuses invalid UTF-8 as a whole message) but
                       a Python caller could
    times              a protobuf Timestamp within 0001-01-01T00:00:00Z and
                       9999-12-31T23:59:59.999999999Z (seconds -62135596800 to 253402300799,
                       nanos 0 to 999,999,999), as the Timestamp type itself defines
    CLOCK_SKEW         5 minutes: how far a client's clock may be from ours, either way

Every refusal is an ``InvalidArgument`` naming the field and saying what to fix.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from nba.errors import InvalidArgument

__all__ = [
    "value_kind",
    "CLOCK_SKEW",
    "MAX_COMMENT_LENGTH",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_DEPTH",
    "MAX_CONTEXT_LEAVES",
    "MAX_CONTEXT_NUMBER",
    "MAX_ID_LENGTH",
    "check_id",
    "check_text",
    "control_character",
    "finite_number",
    "timestamp",
]

MAX_ID_LENGTH = 256
MAX_COMMENT_LENGTH = 1000
CLOCK_SKEW = timedelta(minutes=5)
#: largest magnitude of a number in a context: 2**53, the largest a double holds as an exact
#: whole number. Larger numbers are identifiers rather than quantities (send them as strings);
#: and the learner's running statistics square the numbers it sees, which past about 1e154
#: would leave the finite doubles, so the learner would have to refuse the decision's feedback.
MAX_CONTEXT_NUMBER = 2.0**53
#: a request's context: bytes serialised, levels of nesting, leaf values (``nba.service.context`` says
#: how each is counted); the policy layer's rule limits are sized against these
MAX_CONTEXT_BYTES = 64 * 1024
MAX_CONTEXT_DEPTH = 8
MAX_CONTEXT_LEAVES = 1000

#: the range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: the same, but tab, line feed and carriage return are text
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def value_kind(value: Any) -> str:
    """What a JSON-like value is, in words, for a message that must not repeat the value (it may
    be personal data): "a text", "a number", "a boolean", "a list", "an object", "null".

    >>> value_kind(True), value_kind(3.5), value_kind(None)
    ('a boolean', 'a number', 'null')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a text"
    return "a list" if isinstance(value, list | tuple) else "an object"


def finite_number(value: Any) -> TypeGuard[int | float]:
    """True for an int or float (not a bool) that is a finite double: a 400-digit JSON or YAML
    integer is not one (``float()`` of it overflows), nor NaN or infinity.

    >>> finite_number(3), finite_number(1e308), finite_number(10**400), finite_number(True)
    (True, True, False, False)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the doubles
        return False


def control_character(value: str, text: bool = False) -> str | None:
    """Describes the first control character in ``value`` ("U+0000 at position 3"), or None.
    With ``text``, tab, line feed and carriage return are not counted."""
    found = (_CONTROL_IN_TEXT if text else _CONTROL).search(value)
    if found is None:
        return None
    char = found.group()
    kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"{kind} (U+{ord(char):04X}) at position {found.start()}"


def check_id(field: str, value: str, *, required: bool = True, max_length: int = MAX_ID_LENGTH) -> str:
    """Checks an id or a name: present (when ``required``), at most ``max_length``
    characters, no control character. Returns it; raises ``InvalidArgument`` naming ``field``.

    >>> check_id("customer_id", "c-1001")
    'c-1001'
    >>> check_id("event_id", "e\\x00")
    Traceback (most recent call last):
    ...
    nba.errors.InvalidArgument: event_id: contains a control character (U+0000) at position 1; use printable characters only
    """
    if not value:
        if required:
            raise InvalidArgument(f"{field}: required")
        return value
    if len(value) > max_length:
        raise InvalidArgument(f"{field}: longer than {max_length} characters (got {len(value)})")
    bad = control_character(value)
    if bad is not None:
        raise InvalidArgument(f"{field}: contains {bad}; use printable characters only")
    return value


def check_text(field: str, value: str, *, max_length: int | None = None) -> str:
    """Checks free text (a comment, a policy file): at most ``max_length`` characters when
    given, and no control character but tab, line feed and carriage return."""
    if max_length is not None and len(value) > max_length:
        raise InvalidArgument(f"{field}: longer than {max_length} characters (got {len(value)})")
    bad = control_character(value, text=True)
    if bad is not None:
        raise InvalidArgument(
            f"{field}: contains {bad}; only tab, line feed and carriage return may appear among control characters"
        )
    return value


def timestamp(field: str, stamp: Any) -> datetime:
    """A protobuf ``Timestamp`` as an aware UTC datetime; out-of-range seconds or nanos are
    refused naming ``field`` (never a server error)."""
    seconds, nanos = int(stamp.seconds), int(stamp.nanos)
    if not 0 <= nanos <= 999_999_999:
        raise InvalidArgument(f"{field}: nanos must be 0 to 999999999, got {nanos}")
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(
            f"{field}: seconds must be {MIN_TIMESTAMP_SECONDS} to {MAX_TIMESTAMP_SECONDS} "
            f"(0001-01-01 to 9999-12-31), got {seconds}"
        )
    # datetime holds microseconds: the nanoseconds below them are dropped, as protobuf's own
    # ToDatetime does; built by hand because ToDatetime overflows at the edges of the range.
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=nanos // 1000)
