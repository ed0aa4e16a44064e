"""A structural reading of a msgpack body, for what the decoder does not say.

A decoder keeps the last of two equal keys and accepts any valid encoding, as a receiver
must (spec section 3.2). The kit also holds the *sender* to its rules: no duplicate keys,
no nesting past 512 levels, str keys in the message map (MUST), and the shortest encoding
of every header with ``kind`` first (SHOULD). This walks the encoded bytes once, without
building values, and reports what it finds. It runs only on bodies the decoder accepted,
so it can assume they are well formed.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import msgpack

#: A sender MUST NOT nest deeper than this (the message map is level 1).
SENDER_MAX_NESTING = 512


@attrs.define
class Shape:
    """What the walk found in one body."""

    #: The message map's keys, in the order written (decoded).
    keys: list[Any] = attrs.Factory(list)
    #: Keys written twice in one map, with the map's nesting level.
    duplicates: list[tuple[int, Any]] = attrs.Factory(list)
    depth: int = 0
    #: Where a header or number could have been written shorter: (offset, what).
    long_encodings: list[tuple[int, str]] = attrs.Factory(list)


# For a header byte: (what, how many length/value bytes follow, the smallest value that
# needs this form). Values below the bound had a shorter form.
_SIZED = {
    0xC4: ("bin 8", 1, 0),
    0xC5: ("bin 16", 2, 1 << 8),
    0xC6: ("bin 32", 4, 1 << 16),
    0xD9: ("str 8", 1, 32),
    0xDA: ("str 16", 2, 1 << 8),
    0xDB: ("str 32", 4, 1 << 16),
    0xDC: ("array 16", 2, 16),
    0xDD: ("array 32", 4, 1 << 16),
    0xDE: ("map 16", 2, 16),
    0xDF: ("map 32", 4, 1 << 16),
}
_UINTS = {0xCC: (1, 128), 0xCD: (2, 1 << 8), 0xCE: (4, 1 << 16), 0xCF: (8, 1 << 32)}
_INTS = {0xD0: (1, "b"), 0xD1: (2, ">h"), 0xD2: (4, ">i"), 0xD3: (8, ">q")}
_INT_FLOORS = {0xD0: -32, 0xD1: -(1 << 7), 0xD2: -(1 << 15), 0xD3: -(1 << 31)}
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8}


def read_shape(body: bytes) -> Shape:
    shape = Shape()
    # A stack of open containers: [items left, is_map, keys seen (maps), level, is_key].
    stack: list[list[Any]] = []
    pos = 0
    end = len(body)
    while pos < end:
        start = pos
        b = body[pos]
        pos += 1
        container: tuple[int, bool] | None = None  # (items, is_map)
        if b <= 0x7F or b >= 0xE0:
            pass
        elif 0x80 <= b <= 0x8F:
            container = (b & 0x0F, True)
        elif 0x90 <= b <= 0x9F:
            container = (b & 0x0F, False)
        elif 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            what, width, floor = _SIZED[b]
            n = int.from_bytes(body[pos : pos + width], "big")
            pos += width
            if n < floor:
                shape.long_encodings.append((start, f"{what} header for a length of {n}"))
            if b >= 0xDC:
                container = (n, b >= 0xDE)
            else:
                pos += n
        elif b in _UINTS:
            width, floor = _UINTS[b]
            n = int.from_bytes(body[pos : pos + width], "big")
            pos += width
            if n < floor:
                shape.long_encodings.append((start, f"uint {8 * width} for the value {n}"))
        elif b in _INTS:
            width, fmt = _INTS[b]
            (n,) = struct.unpack(fmt, body[pos : pos + width])
            pos += width
            if n >= _INT_FLOORS[b]:
                shape.long_encodings.append((start, f"int {8 * width} for the value {n}"))
        else:  # extension types; the decoder refused them already
            raise ValueError(f"byte 0x{b:02x} at offset {start} is not walked")

        # This value fills a slot of the innermost open container.
        if stack:
            top = stack[-1]
            if top[1] and top[4]:  # a map key
                key = msgpack.unpackb(body[start:pos], raw=False) if container is None else None
                if key in top[2]:
                    shape.duplicates.append((top[3], key))
                else:
                    top[2].add(key)
                if top[3] == 1:
                    shape.keys.append(key)
            if top[1]:
                top[4] = not top[4]
                if top[4]:
                    top[0] -= 1
            else:
                top[0] -= 1
        if container is not None:
            items, is_map = container
            level = len(stack) + 1
            shape.depth = max(shape.depth, level)
            stack.append([items, is_map, set(), level, True])
        while stack and stack[-1][0] == 0:
            stack.pop()
    return shape
