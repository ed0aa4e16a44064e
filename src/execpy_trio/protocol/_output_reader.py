"""Output messages read straight from their frames, without msgpack.

``output`` frames carry the bulk of the bytes, so the connection's frame decoder hands
each frame to an :class:`OutputReader` first; anything it does not recognise exactly goes
through msgpack and :func:`~execpy_trio.protocol._messages.message_from_wire` as usual.
"""

from __future__ import annotations

from ._fields import MAX_ID, STDERR, STDOUT
from ._messages import Output

__all__ = ["OutputReader"]

# An Output is built without its validating __init__: the reader has checked every field.
_set = object.__setattr__
_new = object.__new__


_OUTPUT_HEAD = b"\x84\xa4kind\xa6output\xa2op"
_STREAM_KEY = b"\xa6stream"
_STDOUT_VALUE = b"\xa6stdout"
_STDERR_VALUE = b"\xa6stderr"
_DATA_KEY = b"\xa4data"


class OutputReader:
    """Reads output messages straight from frames, without msgpack: ``reader(buf, start,
    stop)`` is the output message in ``buf[start:stop]``, or None.

    Only a body written exactly as this package writes output frames (shortest encodings,
    fields in catalogue order, valid values) is read here; for anything else, valid or
    not, it returns None and the caller decodes the body the general way, which gives the
    same message or the right error. The body must be longer than the fixed part (the
    decoder calls this for bodies over 2 KiB only), so no read goes past ``stop``. The
    encoded head (everything before the payload's bin header) of the last frame read is
    remembered: successive frames of one op's stream share it.
    """

    __slots__ = ("head", "op", "stream")

    def __init__(self) -> None:
        self.head = b""
        self.op = 0
        self.stream = STDOUT

    def __call__(self, buf: bytes | bytearray, start: int, stop: int) -> Output | None:
        head = self.head
        if head and buf.startswith(head, start):
            i = start + len(head)
            op = self.op
            stream = self.stream
        else:
            parsed = _read_output_head(buf, start)
            if parsed is None:
                return None
            i, op, stream = parsed
            self.head = bytes(buf[start:i])
            self.op = op
            self.stream = stream
        marker = buf[i]
        if marker == 0xC5:
            n = (buf[i + 1] << 8) | buf[i + 2]
            i += 3
        elif marker == 0xC6:
            n = int.from_bytes(buf[i + 1 : i + 5], "big")
            i += 5
        elif marker == 0xC4:
            n = buf[i + 1]
            i += 2
        else:
            return None
        if n == 0 or i + n != stop:
            return None
        if type(buf) is bytes:
            data = buf[i:stop]
        else:
            with memoryview(buf) as view:
                data = bytes(view[i:stop])
        msg = _new(Output)
        _set(msg, "op", op)
        _set(msg, "stream", stream)
        _set(msg, "data", data)
        return msg


def _read_output_head(buf: bytes | bytearray, start: int) -> tuple[int, int, str] | None:
    """(end of the head, op, stream) of a canonically written output body, or None."""
    if not buf.startswith(_OUTPUT_HEAD, start):
        return None
    i = start + len(_OUTPUT_HEAD)
    marker = buf[i]
    if marker < 0x80:  # positive fixint
        op = marker
        i += 1
    elif marker == 0xCC:
        op = buf[i + 1]
        i += 2
    elif marker == 0xCD:
        op = int.from_bytes(buf[i + 1 : i + 3], "big")
        i += 3
    elif marker == 0xCE:
        op = int.from_bytes(buf[i + 1 : i + 5], "big")
        i += 5
    elif marker == 0xCF:
        op = int.from_bytes(buf[i + 1 : i + 9], "big")
        i += 9
    else:
        return None
    if not 0 < op <= MAX_ID or not buf.startswith(_STREAM_KEY, i):
        return None
    i += len(_STREAM_KEY)
    if buf.startswith(_STDOUT_VALUE, i):
        stream = STDOUT
    elif buf.startswith(_STDERR_VALUE, i):
        stream = STDERR
    else:
        return None
    i += len(_STDOUT_VALUE)
    if not buf.startswith(_DATA_KEY, i):
        return None
    return i + len(_DATA_KEY), op, stream
