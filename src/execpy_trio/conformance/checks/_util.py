"""Small tools the checks share: hand-built frames and expectations."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from .._peer import CheckFailed, OpResult, Peer

_HEADER = struct.Struct(">I")


#: Code that prints ``go`` and then sleeps, or spins, for a minute.
SLEEPS = "import time\nprint('go', flush=True)\ntime.sleep(60)"
SPINS = "print('go', flush=True)\nwhile True:\n    x = 1"


def raw_frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


class Raw(bytes):
    """Bytes that :func:`raw_map` writes as they are: an encoding built by hand."""


def _encode(value: Any) -> bytes:
    return bytes(value) if type(value) is Raw else msgpack.packb(value, use_bin_type=True)


def raw_map(pairs: Sequence[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair, in this order, duplicates and all."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(_encode(k) + _encode(v) for k, v in pairs)


def expect_status(result: OpResult, status: str, error_type: str | None = None) -> None:
    """The op ended with ``status`` (and that error type), or the check fails."""
    wanted = f"done with status {status!r}" + (f", error type {error_type!r}" if error_type else "")
    if result.status != status or (error_type is not None and result.error_type != error_type):
        raise CheckFailed(wanted, result.describe())


def expect_value(result: OpResult, value: Any) -> None:
    expect_status(result, "ok")
    assert result.done is not None
    if result.done.value != value or type(result.done.value) is not type(value):
        raise CheckFailed(f"done 'ok' with value {value!r}", result.describe())


async def still_works(peer: Peer) -> None:
    """The runner goes on: a new op runs and its namespace answers."""
    result = await peer.run("6 * 7")
    if result.status != "ok" or result.done is None or result.done.value != "42":
        raise CheckFailed(
            "the runner to go on (a following exec of '6 * 7' to give '42')",
            result.describe(),
        )


def expect_in(needle: bytes | str, haystack: bytes | str, what: str) -> None:
    if needle not in haystack:  # type: ignore[operator]
        raise CheckFailed(f"{what} containing {needle!r}", f"{haystack[:300]!r}")
