"""What the kit shows of a check's traffic: one-line views of messages and bytes, and the
frame log of a check."""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from ..protocol import Error, Message, UnknownMessage

#: Frames shown in a report: the first and the last of a check's log.
LOG_HEAD = 60
LOG_TAIL = 60


def summarize(value: Any, limit: int = 160, depth: int = 0) -> str:
    """A one-line view of a decoded value, with byte strings, long texts and deep nesting
    cut (a runner may send 1024 levels)."""
    if type(value) in (dict, list) and depth >= 6:
        text = "{...}" if type(value) is dict else "[...]"
    elif type(value) is dict:
        inner = ", ".join(
            f"{k!r}: {summarize(v, 60, depth + 1)}" for k, v in list(value.items())[:12]
        )
        text = "{" + inner + (", ..." if len(value) > 12 else "") + "}"
    elif type(value) is list:
        inner = ", ".join(summarize(v, 40, depth + 1) for v in value[:8])
        text = "[" + inner + (", ..." if len(value) > 8 else "") + "]"
    elif type(value) is bytes:
        text = repr(value[:48]) + (f"...({len(value)} bytes)" if len(value) > 48 else "")
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hexdump(data: bytes, limit: int = 24) -> str:
    shown = data[:limit].hex(" ")
    return shown + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


class FrameLog:
    """The frames of one check, both ways, with times: the first LOG_HEAD and the last
    LOG_TAIL kept (a check that streams 64 MB logs a thousand frames)."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.head: list[str] = []
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self.count = 0

    def add(self, who: str, text: str) -> None:
        line = f"{trio.current_time() - self.start:8.3f} {who} {text}"
        self.count += 1
        if len(self.head) < LOG_HEAD:
            self.head.append(line)
        else:
            self.tail.append(line)

    def lines(self) -> list[str]:
        omitted = self.count - len(self.head) - len(self.tail)
        middle = [f"         ... {omitted} frames not shown ..."] if omitted > 0 else []
        return [*self.head, *middle, *self.tail]


def key_of(msg: Message) -> str:
    if type(msg) is Error:
        return (
            "error/fatal" if msg.fatal else "error/reject" if msg.op is not None else "error/notice"
        )
    return msg.KIND


def describe(msg: Message) -> str:
    if type(msg) is UnknownMessage:
        return f"a {msg.kind!r} message"
    return f"{msg.KIND} {summarize(msg.to_wire(), 300)}"
