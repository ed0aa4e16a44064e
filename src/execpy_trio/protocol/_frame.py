"""Frame codec: a 4-byte big-endian unsigned length, then exactly one msgpack value.

Theory of operation: :class:`FrameDecoder` is fed whatever bytes arrive, in any chunking,
and hands back complete msgpack values. It refuses a frame whose announced length is over
the limit as soon as the 4-byte header is seen, so an announced 4 GiB frame costs nothing.
A body may expand to at most ``max_objects(max_frame)`` msgpack objects (a frame of empty
lists would otherwise cost 64 bytes of memory per byte received), and nest at most
``MAX_NESTING`` deep; both are refused as ``bad-frame``, naming the limit.
Bytes are appended to one ``bytearray`` and consumed by advancing an offset; the buffer is
compacted only when the consumed part dominates, so feeding one byte at a time and
draining many small frames from one large chunk are both linear. When the buffer is empty
and a chunk holds whole frames, they are decoded straight out of the chunk (no copy).
"""

from __future__ import annotations

import struct

import msgpack

from ._errors import LocalProtocolError, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_unpackb = msgpack.unpackb

HEADER = struct.Struct(">I")
HEADER_SIZE = 4
#: The largest frame anyone may send before the handshake has agreed on limits.
HANDSHAKE_MAX_FRAME = 64 * 1024
#: The smallest ``max_frame`` a peer may announce.
MIN_MAX_FRAME = 64 * 1024
#: What this implementation announces by default.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: The wire format cannot express more.
ABSOLUTE_MAX_FRAME = 0xFFFFFFFF
#: Containers a body may nest (msgpack's own decoder stops there; senders must stay at or
#: under 512, which is where msgpack's encoder stops).
MAX_NESTING = 1024
#: One msgpack object per this many bytes of ``max_frame`` may be in a frame.
BYTES_PER_OBJECT = 16
# Bodies up to this size are sliced out of a received chunk (a copy) rather than viewed:
# creating a memoryview costs more than copying a few hundred bytes.
_COPY_BELOW = 2048
#: A buffer grown past this (by a big frame) is let go once it is empty.
_KEEP_BUFFER = 1 << 20


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed in this protocol")


def pack_body(value: Any) -> bytes:
    """Encode one value as msgpack (str as str, bytes as bin), without the header."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(value).__name__} as msgpack: {exc}") from exc


def max_objects(max_frame: int) -> int:
    """How many msgpack objects a frame may expand to, for a receiver's ``max_frame``.

    Each array element, each map key and each map value counts one, and each array and
    map one more (itself, the body's map included): an empty list is counted as it is
    built, so a frame of them is refused early. A byte is at most two counts (an empty
    container in a container), so a body of up to half the budget in bytes is always
    within it and is decoded without counting. At the default 16 MiB the budget is
    1,048,576, at most about 70 MiB of Python objects, where an unbounded frame of empty
    lists would cost 1.1 GiB.
    """
    return max_frame // BYTES_PER_OBJECT


def unpack_body(body: bytes | bytearray | memoryview, max_frame: int | None = None) -> Any:
    """Decode exactly one msgpack value, or raise RemoteProtocolError (``bad-frame``).

    ``max_frame`` is the receiver's frame limit; the body may hold ``max_objects`` of it.
    Without it, no budget applies beyond the body's length.
    """
    try:
        return _decode(body, None if max_frame is None else max_objects(max_frame))
    except Exception as exc:  # msgpack raises many unrelated types; all mean "bad frame"
        raise _bad_frame(exc, body, max_frame) from exc


def undecodable_reason(
    body: bytes | bytearray | memoryview, max_frame: int, reserve: int = 0
) -> str | None:
    """Why a receiver with ``max_frame`` would refuse ``body``, or None if it would not.

    ``reserve``: objects kept back from the budget for the message ``body`` is to be a
    field of (the rest of a done around an eval value).
    """
    try:
        _decode(body, max_objects(max_frame) - reserve)
    except Exception as exc:
        return _why(exc, body, max_frame)
    return None


def _decode(body: bytes | bytearray | memoryview, limit: int | None) -> Any:
    # A body of up to half the budget in bytes is always within it: decoded uncounted.
    # msgpack >= 1.0 defaults: raw=False (str is str), use_list=True, strict_map_key=True
    # (map keys are str or bytes); passing them again costs time on every frame.
    if limit is not None and len(body) * 2 > limit:
        return _unpack_counted(body, limit)
    return _unpackb(body, ext_hook=_refuse_ext)


class _OverBudget(Exception):
    pass


class _ObjectBudget:
    """msgpack hooks that count the objects decoded and stop past the limit.

    The hooks run as each container is completed, so a container is counted after its
    elements are built; ``max_array_len``/``max_map_len`` at the same limit bound that.
    """

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def list_hook(self, value: list[Any]) -> list[Any]:
        self.left -= len(value) + 1
        if self.left < 0:
            raise _OverBudget
        return value

    def map_hook(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self.left -= 2 * len(value) + 1
        if self.left < 0:
            raise _OverBudget
        return value


def _unpack_counted(body: bytes | bytearray | memoryview, limit: int) -> Any:
    budget = _ObjectBudget(limit)
    return _unpackb(
        body,
        ext_hook=_refuse_ext,
        list_hook=budget.list_hook,
        object_hook=budget.map_hook,
        max_array_len=limit,
        max_map_len=limit,
    )


def _bad_frame(
    exc: Exception, body: bytes | bytearray | memoryview, max_frame: int | None
) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"frame body of {len(body)} bytes (starting {bytes(body[:16]).hex(' ')}) is not one "
        f"valid msgpack value: {_why(exc, body, max_frame)}",
        error_code="bad-frame",
    )


def _why(exc: Exception, body: bytes | bytearray | memoryview, max_frame: int | None) -> str:
    limit = max_objects(max_frame if max_frame is not None else len(body))
    over_length = "exceeds max_" in str(exc)
    if isinstance(exc, _OverBudget) or (over_length and len(body) * 2 > limit):
        return (
            f"it expands to more than {limit} objects, the limit for a receiver whose "
            f"max_frame is {max_frame} bytes (one object per {BYTES_PER_OBJECT} bytes); "
            "send the data in smaller pieces"
        )
    if isinstance(exc, msgpack.StackError):
        return f"it nests containers deeper than {MAX_NESTING} levels"
    if isinstance(exc, msgpack.ExtraData):
        return (
            f"it holds more than one value ({len(exc.extra)} bytes follow the first); "
            "a frame holds exactly one"
        )
    if isinstance(exc, msgpack.FormatError):
        return "it contains a byte that starts no msgpack type (0xc1 is reserved)"
    if isinstance(exc, UnicodeDecodeError):
        return f"a str is not valid UTF-8 ({exc.reason} at byte {exc.start} of the str)"
    text = str(exc)
    if "incomplete input" in text or over_length:
        # (A container announcing more elements than the body has bytes is refused
        # before it is read: it cannot be complete.)
        return "it ends in the middle of a value"
    if "map key" in text:
        return f"a map key is not a str or bin ({text.split(' is not')[0]}); keys are strings"
    return f"{type(exc).__name__}: {text}"


def frame(body: bytes) -> bytes:
    """Prefix an encoded body with its length header."""
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental, bounded frame decoder.

    Feed it bytes with :meth:`feed`, then call :meth:`next_value` until it returns
    :data:`NEED_DATA`. Values come out one at a time so that an invalid frame is reported
    only after every valid frame before it has been taken. ``max_frame`` is the largest body
    accepted and may be raised at any time (the handshake does). After an error the decoder
    is unusable: the caller must close the connection.
    """

    __slots__ = (
        "_buf",
        "_chunk",
        "_chunk_pos",
        "_end",
        "_pos",
        "_view",
        "fast_path",
        "max_frame",
    )

    def __init__(
        self,
        max_frame: int = HANDSHAKE_MAX_FRAME,
        fast_path: Callable[[bytes | bytearray, int, int], Any] | None = None,
    ) -> None:
        # The bytes buffered are _buf[_pos:_end]; the room after _end is kept for the next
        # read (read_into), so that reads go into memory that is already there.
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        #: A view of _buf for read_into (made once; released before _buf is resized).
        self._view: memoryview | None = None
        # An immutable chunk fed while nothing was buffered is decoded in place (no copy).
        self._chunk: bytes | None = None
        self._chunk_pos = 0
        if max_frame < MIN_MAX_FRAME:
            # The object budget relies on it: bodies of up to 2048 bytes are decoded
            # without counting, which is safe only from a budget of 4096 up.
            raise ValueError(f"max_frame must be at least {MIN_MAX_FRAME}, not {max_frame}")
        self.max_frame = max_frame
        #: Optional ``fast_path(buffer, start, stop)`` tried on bodies over 2 KiB before
        #: msgpack: it returns what to hand out for ``buffer[start:stop]`` (a value the
        #: caller recognises), or None to decode the body the general way. The connection
        #: uses it to build big output messages straight from the frame.
        self.fast_path = fast_path

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as values."""
        pending = self._end - self._pos
        if self._chunk is not None:
            pending += len(self._chunk) - self._chunk_pos
        return pending

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. A ``bytes`` object may be kept (not copied) until consumed."""
        if not data:
            return
        if self._chunk is not None:
            self._spill()
        pos = self._pos
        end = self._end
        if type(data) is bytes:
            if pos == end:
                self._pos = self._end = 0
                self._chunk = data
                self._chunk_pos = 0
                return
            if end - pos >= HEADER_SIZE:
                # A frame straddles reads: copy in just the rest of it and keep the
                # remainder as the borrowed chunk, instead of copying the whole read.
                (length,) = HEADER.unpack_from(self._buf, pos)
                need = pos + HEADER_SIZE + length - end
                if 0 < need < len(data) and length <= self.max_frame:
                    with memoryview(data) as view:
                        self._append(view[:need])
                    self._chunk = data
                    self._chunk_pos = need
                    return
        self._append(data)

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        end = self._end
        if end + n > len(self._buf):
            self._make_room(n)
            end = self._end
        self._buf[end : end + n] = data
        self._end = end + n

    def _make_room(self, n: int) -> None:
        """At least ``n`` bytes of room after the buffered ones: move them to the front,
        and grow the buffer if that is not enough."""
        buf = self._buf
        pos = self._pos
        pending = self._end - pos
        if pos:
            if pending:
                buf[:pending] = buf[pos : self._end]
            self._pos = 0
            self._end = pending
        short = pending + n - len(buf)
        if short > 0:
            self._release_view()
            buf.extend(bytes(max(short, len(buf) // 2)))

    def _release_view(self) -> None:
        # Before the buffer is resized or dropped: an export would forbid the resize.
        if self._view is not None:
            self._view.release()
            self._view = None

    def read_into(self, readinto: Callable[[memoryview], int], size: int) -> int:
        """Read once with ``readinto(view)``, straight into the buffer; return what it
        returned (0 at the end of the stream; its exceptions propagate, nothing changed).

        ``size`` is the most to read, raised to what completes an announced frame.
        Reading into memory the decoder already has costs far less than a fresh ``bytes``
        per read (measured: a quarter of the CPU for 256 KiB reads); ``readinto`` must not
        keep the view.
        """
        if self._chunk is not None:
            self._spill()
        pending = self._end - self._pos
        if pending >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(self._buf, self._pos)
            if length <= self.max_frame:
                size = max(size, HEADER_SIZE + length - pending)
        if self._end + size > len(self._buf):
            self._make_room(size)
        end = self._end
        view = self._view
        if view is None:
            view = self._view = memoryview(self._buf)
        # Released on the way out, also when readinto raises: its traceback may outlive
        # the call (holding the view), and the buffer must stay free to grow.
        with view[end : end + size] as room:
            n = readinto(room)
        self._end = end + n
        return n

    def next_value(self) -> Any:
        """Return the next complete value, or :data:`NEED_DATA`.

        Raises RemoteProtocolError for an oversized announced length (before buffering the
        body) or a body that is not exactly one valid msgpack value.
        """
        chunk = self._chunk
        # The buffer, when it holds anything, comes first: feed() leaves a chunk beside it
        # only when the buffer ends on a frame boundary.
        if chunk is not None and self._pos == self._end:
            pos = self._chunk_pos
            end = len(chunk)
            if end - pos < HEADER_SIZE:
                return self._spill()
            (length,) = HEADER.unpack_from(chunk, pos)
            if length > self.max_frame:
                self._check_length(length)
            stop = pos + HEADER_SIZE + length
            if stop > end:
                return self._spill()
            self._chunk_pos = stop
            if stop == end:
                self._chunk = None
            # A small body is cheaper to copy out than to view; a large one is viewed.
            if length <= _COPY_BELOW:
                body: bytes | memoryview = chunk[pos + HEADER_SIZE : stop]
            else:
                if self.fast_path is not None:
                    value = self.fast_path(chunk, pos + HEADER_SIZE, stop)
                    if value is not None:
                        return value
                body = memoryview(chunk)[pos + HEADER_SIZE : stop]
            if length <= _COPY_BELOW:
                try:  # unpack_body, inline: this is the hot path
                    return _unpackb(body, ext_hook=_refuse_ext)
                except Exception as exc:
                    raise _bad_frame(exc, body, self.max_frame) from exc
            return unpack_body(body, self.max_frame)
        buf = self._buf
        pos = self._pos
        end = self._end
        if end - pos < HEADER_SIZE:
            return NEED_DATA
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            self._check_length(length)
        stop = pos + HEADER_SIZE + length
        if stop > end:
            return NEED_DATA
        value = None
        if length <= _COPY_BELOW:
            small = buf[pos + HEADER_SIZE : stop]  # a small copy, cheaper than a view
            try:  # unpack_body, inline: this is the hot path of read_into's reads
                value = _unpackb(small, ext_hook=_refuse_ext)
            except Exception as exc:
                raise _bad_frame(exc, small, self.max_frame) from exc
        elif self.fast_path is not None:
            value = self.fast_path(buf, pos + HEADER_SIZE, stop)
        if value is None:
            with memoryview(buf) as view:
                body = view[pos + HEADER_SIZE : stop]
                try:
                    value = unpack_body(body, self.max_frame)
                finally:
                    body.release()
        self._pos = stop
        if stop == end:
            self._pos = self._end = 0
            if len(buf) > _KEEP_BUFFER:
                self._release_view()  # after a big frame: do not hold its memory
                self._buf = bytearray()
        # (Otherwise the consumed prefix is dropped when room is needed: _make_room.)
        return value

    def _spill(self) -> Any:
        # A partial frame is left in the borrowed chunk: copy just that tail and wait.
        assert self._chunk is not None
        with memoryview(self._chunk) as view:
            self._append(view[self._chunk_pos :])
        self._chunk = None
        return NEED_DATA

    def _check_length(self, length: int) -> None:
        if length > self.max_frame:
            raise RemoteProtocolError(
                f"peer announced a frame of {length} bytes, over the limit of "
                f"{self.max_frame} bytes; refusing it before reading it",
                error_code="frame-too-large",
            )


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`FrameDecoder.next_value` when no complete frame is buffered.
NEED_DATA: Any = _NeedData()
