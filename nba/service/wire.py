"""A request's context from its protobuf wire bytes to flat features, in compiled code (numba).

Walking a ``google.protobuf.Struct`` in Python costs a few attribute reads and a type test per
value, through protobuf's Python objects: 52 µs for the benchmark's 30 fields and 507 µs for
300, measured. The context's serialised bytes (``Struct.SerializeToString``, a copy made in C)
hold the same values in a simple format; a compiled pass over them finds every leaf, checks it,
writes its dotted path, and sorts the leaves by path, so that Python only decodes the paths
and strings (one call each for all of them) and puts the numbers, strings and booleans into
the dict.

The compiled pass answers only contexts it can check completely: keys of printable ASCII without
a dot, at most ``MAX_ID_LENGTH`` bytes; numbers finite within ±2^53; at most
``MAX_CONTEXT_DEPTH`` levels and ``MAX_CONTEXT_LEAVES`` values; lists of scalars; strings without
U+0000. For anything else it answers "not mine" (-1), and ``nba.service.context`` walks the
message in Python, which gives the same features or names the field at fault. The kernel's
answer is the Python walk's (``tests/service/test_context.py`` holds them equal on generated
contexts).

Wire format: https://protobuf.dev/programming-guides/encoding/ and google/protobuf/struct.proto
(Struct = map<string, Value> as field 1; Value's kinds are fields 1 to 6; ListValue's values are
field 1).
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from nba.inputs import MAX_CONTEXT_BYTES, MAX_CONTEXT_DEPTH, MAX_CONTEXT_LEAVES, MAX_CONTEXT_NUMBER, MAX_ID_LENGTH

__all__ = ["flat_context"]

#: a leaf's kind, as the kernel writes it
NULL, NUMBER, STRING, BOOL, EMPTY_MAP, LIST = 0, 1, 2, 3, 4, 5

_T = numba.types
#: the message's bytes, read-only (a view of the bytes object)
_DATA = _T.Array(_T.uint8, 1, "C", readonly=True)
#: the limits, as the kernel's constants
_LEAVES = MAX_CONTEXT_LEAVES + 1
_PATH_BYTES = _LEAVES * (MAX_CONTEXT_DEPTH * (MAX_ID_LENGTH + 1) + 1)
_PREFIX_BYTES = MAX_CONTEXT_DEPTH * (MAX_ID_LENGTH + 1) + 1
_MAX_NUMBER = float(MAX_CONTEXT_NUMBER)
# Where each output lies in the three buffers a thread passes (few arguments: numba checks the
# type of each argument on every call, about half a microsecond an array).
#   ints:   kinds [0, L) | lists (first, count) [L, 3L) | item kinds [3L, 4L) | item spans [4L, 6L) | totals [6L, 6L+3)
#   floats: numbers [0, L) | item numbers [L, 2L)
#   bytes:  scratch [0, P) | paths [P, 2P) | strings [2P, 2P + S)
_INTS = 6 * _LEAVES + 3
_FLOATS = 2 * _LEAVES
_BYTES = 2 * _PATH_BYTES + MAX_CONTEXT_BYTES + _LEAVES
_SIG = _T.int64(_DATA, _T.int64[::1], _T.float64[::1], _T.uint8[::1])


@numba.njit(_T.UniTuple(_T.int64, 2)(_DATA, _T.int64), cache=True, nogil=True)
def _varint(data: np.ndarray, pos: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """The varint at ``pos`` and the position after it; (-1, -1) if it runs past the end or
    beyond 64 bits."""
    result = 0
    shift = 0
    n = data.shape[0]
    while pos < n and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (int(byte) & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    return -1, -1


@numba.njit("boolean(uint8[::1], int64, int64, uint8[::1], int64, int64)", cache=True, nogil=True)
def _before(a: np.ndarray, a0: int, a1: int, b: np.ndarray, b0: int, b1: int) -> bool:  # pragma: no cover
    """Whether bytes a[a0:a1] sort before b[b0:b1] (UTF-8 bytes sort as code points do)."""
    i, j = a0, b0
    while i < a1 and j < b1:
        if a[i] != b[j]:
            return a[i] < b[j]
        i += 1
        j += 1
    return (a1 - a0) < (b1 - b0)


@numba.njit(_SIG, cache=True, nogil=True, error_model="numpy")
def _decode(data: np.ndarray, ints: np.ndarray, floats: np.ndarray, buffer: np.ndarray) -> int:  # pragma: no cover
    """Decodes a serialised Struct. Writes the leaves sorted by path: their paths separated by
    NUL, kinds, numbers (booleans as 0 and 1), the string values separated by NUL, and for a
    list leaf its items' (first, count) with the items' kinds, numbers and string spans (into
    ``data``); the totals get the bytes of paths and of strings written, and the number of
    leaves that are not numbers (layout: above).
    Returns the number of leaves, or -1 when the context is not one it answers (the Python walk
    then does)."""
    max_depth = MAX_CONTEXT_DEPTH
    max_leaves = MAX_CONTEXT_LEAVES
    max_number = _MAX_NUMBER
    max_key = MAX_ID_LENGTH
    L = _LEAVES
    kinds = ints[:L]
    lists = ints[L : 3 * L]
    item_kinds = ints[3 * L : 4 * L]
    item_spans = ints[4 * L : 6 * L]
    totals = ints[6 * L : 6 * L + 3]
    numbers = floats[:L]
    item_numbers = floats[L : 2 * L]
    scratch = buffer[:_PATH_BYTES]
    paths = buffer[_PATH_BYTES : 2 * _PATH_BYTES]
    strings = buffer[2 * _PATH_BYTES :]
    n = data.shape[0]
    leaves = 0
    items = 0
    # per leaf, in parse order: path span in scratch, kind, number, string span in data, list
    path_start = np.empty(max_leaves + 1, np.int64)
    path_end = np.empty(max_leaves + 1, np.int64)
    leaf_kind = np.empty(max_leaves + 1, np.int64)
    leaf_number = np.empty(max_leaves + 1)
    leaf_s0 = np.empty(max_leaves + 1, np.int64)
    leaf_s1 = np.empty(max_leaves + 1, np.int64)
    # the open structs: where each ends and its prefix's length in `prefix`
    ends = np.empty(max_depth + 2, np.int64)
    prefix_len = np.empty(max_depth + 2, np.int64)
    prefix = np.empty(_PREFIX_BYTES, np.uint8)
    depth = 0
    ends[0] = n
    prefix_len[0] = 0
    used = 0  # bytes of scratch written
    pos = 0
    counted = 0  # values counted against max_leaves (list items included)
    while True:
        if pos >= ends[depth]:
            if pos > ends[depth]:
                return -1
            if depth == 0:
                break
            depth -= 1
            continue
        tag, pos = _varint(data, pos)
        if tag != 0x0A:  # Struct.fields, length-delimited
            return -1
        size, pos = _varint(data, pos)
        if size < 0 or pos + size > ends[depth]:
            return -1
        entry_end = pos + size
        key0 = key1 = -1
        value0 = value1 = -1
        while pos < entry_end:
            field, pos = _varint(data, pos)
            length, pos = _varint(data, pos)
            if field < 0 or length < 0 or pos + length > entry_end:
                return -1
            if field == 0x0A:
                key0, key1 = pos, pos + length
            elif field == 0x12:
                value0, value1 = pos, pos + length
            else:
                return -1
            pos += length
        if key0 < 0 or key1 - key0 == 0 or key1 - key0 > max_key:
            return -1
        for i in range(key0, key1):
            b = data[i]
            if b < 0x20 or b >= 0x7F or b == 0x2E:  # control, not ASCII, or "."
                return -1
        level = depth + 1
        if level > max_depth:
            return -1
        # the value: which kind, and where
        kind = NULL
        number = 0.0
        s0 = s1 = 0
        inner0 = inner1 = 0
        if value0 >= 0:
            vpos = value0
            while vpos < value1:
                tag, vpos = _varint(data, vpos)
                if tag < 0:
                    return -1
                if tag == 0x08:  # null_value
                    _, vpos = _varint(data, vpos)
                    if vpos < 0:
                        return -1
                    kind = NULL
                elif tag == 0x11:  # number_value, 8 bytes little-endian
                    if vpos + 8 > value1:
                        return -1
                    number = data[vpos : vpos + 8].view(np.float64)[0]
                    vpos += 8
                    kind = NUMBER
                elif tag == 0x20:  # bool_value
                    flag, vpos = _varint(data, vpos)
                    if vpos < 0:
                        return -1
                    number = 1.0 if flag else 0.0
                    kind = BOOL
                elif tag == 0x1A or tag == 0x2A or tag == 0x32:
                    length, vpos = _varint(data, vpos)
                    if length < 0 or vpos + length > value1:
                        return -1
                    if tag == 0x1A:
                        kind = STRING
                        s0, s1 = vpos, vpos + length
                    elif tag == 0x2A:
                        kind = EMPTY_MAP  # a struct: a map of its own unless empty
                        inner0, inner1 = vpos, vpos + length
                    else:
                        kind = LIST
                        inner0, inner1 = vpos, vpos + length
                    vpos += length
                else:
                    return -1
        if kind == NUMBER and not (-max_number <= number <= max_number):  # NaN fails it too
            return -1
        if kind == STRING:
            for i in range(s0, s1):
                if data[i] == 0:
                    return -1
        plen = prefix_len[depth]
        if kind == EMPTY_MAP and inner1 > inner0:  # a struct with fields: its leaves follow
            if value1 != entry_end:
                return -1
            for i in range(key0, key1):
                prefix[plen + i - key0] = data[i]
            prefix[plen + key1 - key0] = 0x2E
            depth += 1
            ends[depth] = inner1
            prefix_len[depth] = plen + key1 - key0 + 1
            pos = inner0
            continue
        if leaves >= max_leaves:
            return -1
        # the leaf's path: the prefix, then the key
        path_start[leaves] = used
        for i in range(plen):
            scratch[used] = prefix[i]
            used += 1
        for i in range(key0, key1):
            scratch[used] = data[i]
            used += 1
        path_end[leaves] = used
        leaf_kind[leaves] = kind
        leaf_number[leaves] = number
        leaf_s0[leaves] = s0
        leaf_s1[leaves] = s1
        if kind == LIST:
            first = items
            ipos = inner0
            while ipos < inner1:
                tag, ipos = _varint(data, ipos)
                length, ipos = _varint(data, ipos)
                if tag != 0x0A or length < 0 or ipos + length > inner1:
                    return -1
                end = ipos + length
                item_kind = NULL
                item_number = 0.0
                i0 = i1 = 0
                while ipos < end:
                    t, ipos = _varint(data, ipos)
                    if t == 0x08:
                        _, ipos = _varint(data, ipos)
                        if ipos < 0:
                            return -1
                        item_kind = NULL
                    elif t == 0x11:
                        if ipos + 8 > end:
                            return -1
                        item_number = data[ipos : ipos + 8].view(np.float64)[0]
                        ipos += 8
                        item_kind = NUMBER
                    elif t == 0x20:
                        flag, ipos = _varint(data, ipos)
                        if ipos < 0:
                            return -1
                        item_number = 1.0 if flag else 0.0
                        item_kind = BOOL
                    elif t == 0x1A:
                        length, ipos = _varint(data, ipos)
                        if length < 0 or ipos + length > end:
                            return -1
                        i0, i1 = ipos, ipos + length
                        ipos += length
                        item_kind = STRING
                    else:  # a struct or a list in a list, or not a Value: the Python walk's
                        return -1
                if item_kind == NUMBER and not (-max_number <= item_number <= max_number):
                    return -1
                if items >= item_kinds.shape[0]:
                    return -1
                item_kinds[items] = item_kind
                item_numbers[items] = item_number
                item_spans[2 * items] = i0
                item_spans[2 * items + 1] = i1
                items += 1
                counted += 1
            leaf_s0[leaves] = first
            leaf_s1[leaves] = items - first
            if items == first:
                counted += 1  # an empty list is a value
        else:
            counted += 1
        if counted > max_leaves:
            return -1
        leaves += 1
        pos = entry_end
    # sort the leaves by path (bottom-up merge sort of their indices)
    order = np.arange(leaves)
    spare = np.empty(leaves, np.int64)
    width = 1
    while width < leaves:
        for lo in range(0, leaves, 2 * width):
            mid = min(lo + width, leaves)
            hi = min(lo + 2 * width, leaves)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                a, b = order[i], order[j]
                if _before(scratch, path_start[b], path_end[b], scratch, path_start[a], path_end[a]):
                    spare[k] = b
                    j += 1
                else:
                    spare[k] = a
                    i += 1
                k += 1
            while i < mid:
                spare[k] = order[i]
                i += 1
                k += 1
            while j < hi:
                spare[k] = order[j]
                j += 1
                k += 1
        order, spare = spare, order
        width *= 2
    # the outputs, in path order; two equal paths (impossible from one message) are not ours
    written = 0
    text = 0
    texts = 0
    for r in range(leaves):
        leaf = order[r]
        if r:
            last = order[r - 1]
            if not _before(scratch, path_start[last], path_end[last], scratch, path_start[leaf], path_end[leaf]):
                return -1
            paths[written] = 0
            written += 1
        for i in range(path_start[leaf], path_end[leaf]):
            paths[written] = scratch[i]
            written += 1
        kinds[r] = leaf_kind[leaf]
        numbers[r] = leaf_number[leaf]
        if leaf_kind[leaf] == STRING:
            if texts:
                strings[text] = 0
                text += 1
            texts += 1
            for i in range(leaf_s0[leaf], leaf_s1[leaf]):
                strings[text] = data[i]
                text += 1
        elif leaf_kind[leaf] == LIST:
            lists[2 * r] = leaf_s0[leaf]
            lists[2 * r + 1] = leaf_s1[leaf]
    others = 0
    for r in range(leaves):
        if kinds[r] != NUMBER:
            others += 1
    totals[0] = written
    totals[1] = text
    totals[2] = others
    return leaves


class _Buffers(threading.local):
    """Each thread's output buffers, sized for the largest context the limits allow (pages
    are touched only as far as a context writes)."""

    def __init__(self) -> None:
        self.ints = np.empty(_INTS, np.int64)
        self.floats = np.empty(_FLOATS)
        self.bytes = np.empty(_BYTES, np.uint8)


_BUFFERS = _Buffers()
_L = _LEAVES


def flat_context(data: bytes) -> dict[str, Any] | None:
    """The flat features of a serialised context ``Struct`` (as ``nba.service.context``'s
    Python walk gives them: dotted paths, sorted), or None when the compiled pass does not
    answer it (then the walk must: it also names any field at fault). ``data`` is at most
    ``MAX_CONTEXT_BYTES`` long (the caller checks, and refuses a longer one)."""
    buffers = _BUFFERS
    ints, floats, buffer = buffers.ints, buffers.floats, buffers.bytes
    count = _decode(np.frombuffer(data, dtype=np.uint8), ints, floats, buffer)
    if count <= 0:
        return {} if count == 0 else None
    written, text, others = ints[6 * _L : 6 * _L + 3].tolist()
    paths = buffer[_PATH_BYTES : _PATH_BYTES + written].tobytes().decode("ascii").split("\0")
    # every leaf read as a number, then the others put right: most contexts are mostly numbers
    values: list[Any] = floats[:count].tolist()
    if others:
        strings = iter(buffer[2 * _PATH_BYTES : 2 * _PATH_BYTES + text].tobytes().decode().split("\0"))
        for r, kind in enumerate(ints[:count].tolist()):
            if kind == NUMBER:
                continue
            if kind == STRING:
                values[r] = next(strings)
            elif kind == BOOL:
                values[r] = values[r] == 1.0
            elif kind == NULL:
                values[r] = None
            elif kind == EMPTY_MAP:
                values[r] = {}
            else:
                first, size = ints[_L + 2 * r : _L + 2 * r + 2].tolist()
                values[r] = _items(data, ints, floats, first, size)
    return dict(zip(paths, values, strict=True))


def _items(data: bytes, ints: np.ndarray, floats: np.ndarray, first: int, size: int) -> list[Any]:
    """A list's scalar items, as the kernel found them."""
    kinds = ints[3 * _L + first : 3 * _L + first + size].tolist()
    numbers = floats[_L + first : _L + first + size].tolist()
    spans = ints[4 * _L + 2 * first : 4 * _L + 2 * (first + size)].tolist()
    out: list[Any] = []
    for i, (kind, number) in enumerate(zip(kinds, numbers, strict=True)):
        if kind == NUMBER:
            out.append(number)
        elif kind == STRING:
            out.append(data[spans[2 * i] : spans[2 * i + 1]].decode())
        elif kind == BOOL:
            out.append(number == 1.0)
        else:
            out.append(None)
    return out
