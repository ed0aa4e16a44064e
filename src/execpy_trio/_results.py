"""What an operation gives back: its events (:class:`Output`, :class:`InputRequest`) and its
completion (:class:`ExecResult`, with :class:`ErrorInfo`), and the capped store of output an
op keeps to build that completion (:class:`KeptOutput`)."""

from __future__ import annotations

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


@attrs.frozen
class Output:
    """Bytes the code wrote to ``stream`` ("stdout" or "stderr"), in order.

    ``text`` is the data decoded as UTF-8 (errors replaced). Inside an Operation the
    decoding is incremental per stream, so a character split across two chunks appears
    whole in the second chunk's text.
    """

    stream: StreamName
    data: bytes
    text: str = attrs.field(default=attrs.Factory(lambda self: _decode(self.data), takes_self=True))


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
