"""What an operation gives back: its events (:class:`Output`, :class:`InputRequest`) and its
completion (:class:`ExecResult`, with :class:`ErrorInfo`), and the capped store of output an
op keeps to build that completion (:class:`KeptOutput`)."""

from __future__ import annotations

import codecs
from typing import Any, Final, Literal

import attrs

from ._errors import CodeError

__all__ = [
    "ErrorInfo",
    "ExecResult",
    "InputRequest",
    "KeptOutput",
    "Output",
    "Status",
    "StreamName",
]

#: The completion statuses of an operation.
Status = Literal["ok", "error", "cancelled"]
#: The names of the two output streams.
StreamName = Literal["stdout", "stderr"]

STATUS_OK: Final = "ok"


_set = object.__setattr__
_new = object.__new__
_utf_8_decode: Final = codecs.utf_8_decode


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@attrs.frozen
class ErrorInfo:
    """The exception the user's code raised: its type name, its message, and the
    formatted traceback (with source lines) as Python would print it."""

    type: str
    message: str
    traceback: str


@attrs.frozen
class ExecResult:
    """The completion of one operation.

    ``status`` is "ok", "error" or "cancelled"; ``value`` is the repr of the last
    expression statement (or None); ``stdout``/``stderr`` what the code wrote (decoded as
    UTF-8 with errors replaced), up to the runner's ``result_output_limit``;
    ``output_dropped`` the number of output bytes beyond that limit that the result does
    not hold (``truncated`` says whether any were); ``error`` the exception, for status
    "error".
    """

    status: Status
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    error: ErrorInfo | None = None
    output_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def truncated(self) -> bool:
        """True if some output was not kept (see ``result_output_limit``)."""
        return self.output_dropped > 0

    def check(self) -> ExecResult:
        """Return self if the status is "ok", else raise :class:`CodeError` carrying it."""
        if self.status != STATUS_OK:
            raise CodeError(self)
        return self


class Output:
    """Bytes the code wrote to ``stream`` ("stdout" or "stderr"), in order.

    ``text`` is the data decoded as UTF-8 (errors replaced). Inside an Operation the
    decoding is incremental per stream, so a character split across two chunks appears
    whole in the second chunk's text. It is decoded when first asked for: a consumer
    that only wants the bytes never pays for the text. Immutable; equal when stream,
    data and text are.
    """

    __slots__ = ("_carry", "_cut", "_text", "data", "stream")
    stream: StreamName
    data: bytes
    _text: str | None
    _carry: bytes
    _cut: int

    def __init__(self, stream: StreamName, data: bytes, text: str | None = None) -> None:
        _set(self, "stream", stream)
        _set(self, "data", data)
        _set(self, "_text", text)
        _set(self, "_carry", b"")
        _set(self, "_cut", len(data))

    @classmethod
    def _split(cls, stream: StreamName, data: bytes, carry: bytes) -> tuple[Output, bytes]:
        """The event for ``data`` after ``carry`` (the start of a character the previous
        chunk ended in), and what this one carries over to the next: its text is decoded
        later, with the result an incremental decoder would give now."""
        out = _new(cls)
        _set(out, "stream", stream)
        _set(out, "data", data)
        _set(out, "_text", None)
        _set(out, "_carry", carry)
        # Only a character's first bytes can be held back, three at most: decoding the
        # last three bytes of carry + data alone (not final) says how many wait for the
        # next chunk, as an incremental decoder would hold them.
        tail = (carry + data[-3:])[-3:] if carry else data[-3:]
        held = len(tail) - _utf_8_decode(tail, "replace", False)[1]
        _set(out, "_cut", len(carry) + len(data) - held)  # in carry + data
        return out, tail[len(tail) - held :] if held else b""

    @property
    def text(self) -> str:
        text = self._text
        if text is None:
            whole = self._carry + self.data if self._carry else self.data
            text = whole[: self._cut].decode("utf-8", "replace")
            _set(self, "_text", text)
            _set(self, "_carry", b"")  # decoded: let it go
        return text

    def __setattr__(self, name: str, value: object) -> None:
        raise attrs.exceptions.FrozenInstanceError

    def __delattr__(self, name: str) -> None:
        raise attrs.exceptions.FrozenInstanceError

    def __eq__(self, other: object) -> bool:
        if type(other) is not Output:
            return NotImplemented
        return (self.stream, self.data, self.text) == (other.stream, other.data, other.text)

    def __hash__(self) -> int:
        return hash((self.stream, self.data, self.text))

    def __repr__(self) -> str:
        return f"Output(stream={self.stream!r}, data={self.data!r}, text={self.text!r})"


@attrs.frozen
class InputRequest:
    """The code is waiting for a line of input (``input()``, or ``getpass`` when
    ``password`` is True). Answer with :meth:`Operation.send_input` or
    :meth:`Operation.send_eof`."""

    prompt: str = ""
    password: bool = False


class KeptOutput:
    """The output an op keeps for its result: at most ``limit`` bytes (stdout and stderr
    together, the first ones written), the rest counted in :attr:`dropped`.

    Chunks are kept as they came (no copy per chunk); joining and decoding happens once,
    in :meth:`text`, which hands the chunks over: after it, the op holds only the text.
    """

    __slots__ = ("_left", "dropped", "stderr", "stdout")

    def __init__(self, limit: int | None) -> None:
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        # Unlimited is a limit nobody reaches: one comparison per chunk either way.
        self._left = limit if limit is not None else 1 << 62
        #: Bytes of output not kept.
        self.dropped = 0

    def add(self, stream: str, data: bytes) -> None:
        size = len(data)
        left = self._left
        if size <= left:
            self._left = left - size
            (self.stdout if stream == "stdout" else self.stderr).append(data)
            return
        if left:
            (self.stdout if stream == "stdout" else self.stderr).append(data[:left])
            self._left = 0
        self.dropped += size - left

    def text(self, stream: str) -> str:
        """The kept output of ``stream``, decoded, and released from this store."""
        chunks = self.stdout if stream == "stdout" else self.stderr
        if not chunks:
            return ""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return _decode(data)
