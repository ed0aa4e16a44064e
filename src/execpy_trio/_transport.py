"""The transport: one protocol connection over any ``trio.abc.Stream``.

Theory of operation
-------------------
A :class:`Transport` owns a byte stream and a sans-IO :class:`~execpy_trio.protocol.Connection`
in the client role. It has exactly one **reader task** (:meth:`Transport.run_reader`, started
by its owner in a nursery) that decodes frames and routes each message:

* op-scoped messages (``output``, ``input_request``, ``done``, an ``error`` naming an op) go
  to that op's bounded :class:`OpChannel`, registered with :meth:`Transport.open_op`
  *before* the request is sent (so no answer can arrive for an op nobody listens to);
* ``pong`` wakes the :meth:`Transport.ping` waiting for that token;
* an ``error`` without an op is logged; a fatal one breaks the transport;
* an unknown kind is answered with a non-fatal ``unknown-kind`` error, then ignored. The
  reader never waits to write that answer: it goes into a small queue that a notice writer
  task (owned by the reader) sends; when the queue is full, the answer is dropped and
  counted (``notices_dropped``). A peer that floods unknown kinds while not reading cannot
  stall the reader.

Writes go through one FIFO lock, and the sans-IO ``send`` happens under it, so the order of
the connection's state changes is the order of the bytes on the wire. A frame is written
whole or the transport is broken: the write is shielded from cancellation (a half-written
frame would corrupt the stream), and bounded by ``write_timeout`` instead, after which the
transport is broken. The timeout measures progress, not total time: it is the longest the
peer may go without accepting a byte, so a slow but live peer is never declared dead. A
caller cancelled while its frame is being written gets ``Cancelled`` at its next
checkpoint, once the frame is out.

Fast paths (a round trip is a few tens of microseconds, so per-message overhead shows):
when the stream is a socket or a file descriptor (``trio.SocketStream``,
``trio.lowlevel.FdStream``, or a ``StapledStream`` writing to one), a frame is first
written with one non-blocking ``os.write``. Nothing can interrupt a system call, so no
shield and no timeout are needed for it; only a partial write (the OS buffer is full)
takes the shielded, timed path for the rest. Reading, likewise, is a non-blocking read on
the descriptor, and a wait for readability only when there is nothing (see "Direct read").
An :class:`OpChannel` is a bounded FIFO with at most one waiting task on each side,
lighter than a memory channel; delivering to it never makes the reader yield (the reader
yields on every read that did not wait).

States: ``OPEN``; ``BROKEN`` (the peer ended the stream, sent something invalid, or the
stream failed: :meth:`Transport.send` raises :class:`TransportBroken`, whose ``cause`` says
why); ``CLOSED`` (this side called :meth:`Transport.aclose`: :class:`trio.ClosedResourceError`,
as for any Trio resource we closed ourselves). Both are permanent. Breaking the transport
stops the reader; when the reader stops, it first awaits its owner's ``before_release``
callback (the session decides there, once, how the runner ended), and only then ends every
op channel and wakes every ping, so every consumer wakes up (``EndOfChannel``) to an answer
that is already known.

Backpressure
------------
Each op channel holds at most ``op_buffer`` messages. When a consumer stops reading, the
reader blocks on that channel, stops reading the stream, the OS buffers fill, and the
runner's writer blocks: memory stays bounded however much the code prints. The price is
that nothing else from the runner (a ``pong``, the ``done``) gets through either. That is
why a side that cancels an op must keep **draining the op's channel** while it waits for
the cancelled completion: draining unblocks the reader, the runner's remaining output
flows (and is dropped), and the ``done`` arrives behind it. Writing the ``cancel`` never
depends on the reader, so a full channel cannot stop the cancel from being sent.

Direct read
-----------
Waking the reader task and then the consumer costs two scheduling steps per message, more
than the rest of a short round trip; and when client and runner share a CPU, the runner
has usually answered before the request's write returns. So a consumer whose op channel
is empty first calls :meth:`Transport.fill` in its own task: if the reader is *parked*
(waiting for the stream to become readable, holding no bytes, with no complete frame left
in the connection), it reads once and routes what came, in order, with the reader's
routing, and only then waits. The reader is never bypassed for anything it must handle
itself: a protocol error is left to it (it is stopped and finds the error on its way
out), the end of the stream is met by its next read, and a full op channel takes the one
message already decoded over its capacity and the fill stops: the consumer's next fill
goes on from there, and if the consumer goes away instead, :meth:`Transport.close_op`
routes (drops) what was left. A consumer served by a fill yields before its next fill,
and exec yields once at its end, so neither can starve the other tasks.

Reads go into the decoder's own buffer (:meth:`Connection.receive_into`): a fresh
``bytes`` per 256 KiB read costs four times the CPU of the read itself.

Frame log: with the ``execpy_trio.frames`` logger at DEBUG, every message sent and
received is logged (off by default; checking the level costs one call per message).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

from ._opchannel import OpChannel
from .protocol import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from .protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Done,
    Error,
    ExecpyError,
    Hello,
    Message,
    Ping,
    Pong,
    RemoteProtocolError,
    UnknownMessage,
    Welcome,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from trio.abc import Stream

__all__ = [
    "BROKEN",
    "CLOSED",
    "OPEN",
    "OpChannel",
    "Transport",
    "TransportBroken",
    "TransportState",
    "TransportStatistics",
]

frames_log: Final = logging.getLogger("execpy_trio.frames")
log: Final = logging.getLogger("execpy_trio.transport")

#: The states of a transport (see the module docstring).
TransportState = Literal["OPEN", "BROKEN", "CLOSED"]
OPEN: Final = "OPEN"
BROKEN: Final = "BROKEN"
CLOSED: Final = "CLOSED"

#: Bytes asked for per read (more when a frame announced needs it). Large reads matter for
#: output throughput (measured with output frames of up to 256 KiB: 256 KiB beats 64 and
#: 128 KiB, and 1 MiB; the round trip does not care).
RECEIVE_SIZE: Final = 256 * 1024
#: A frame that does not fit the OS buffer at once is written in pieces of this size when
#: the stream is not a plain descriptor, so that progress can be measured between pieces.
WRITE_PIECE: Final = 64 * 1024
#: Answers to notices (``unknown-kind``) waiting to be written; more are dropped.
NOTICE_QUEUE: Final = 16


class TransportBroken(ExecpyError, trio.BrokenResourceError):
    """The connection to the runner is broken. ``cause`` is the underlying failure:
    a :class:`~execpy_trio.RemoteProtocolError`, :class:`PeerClosed`, or a stream error."""

    def __init__(self, message: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.cause = cause


class PeerClosed(ExecpyError):
    """The runner ended its byte stream. ``clean`` is True when the protocol allowed it
    (no op running, or after a shutdown)."""

    def __init__(self, state: str, clean: bool) -> None:
        self.state = state
        self.clean = clean
        super().__init__(
            f"the runner closed the connection in protocol state {state} "
            f"({'cleanly' if clean else 'with an operation still open'})"
        )


@attrs.frozen
class TransportStatistics:
    """Counters of one transport (a snapshot)."""

    state: TransportState
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    ops_open: int
    notices_dropped: int


class Transport:
    """One client-side protocol connection over ``stream``. See the module docstring."""

    def __init__(
        self,
        stream: Stream,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        op_buffer: int = 16,
        write_timeout: float = 10.0,
    ) -> None:
        if op_buffer < 1:
            raise ValueError(f"op_buffer must be at least 1, not {op_buffer}")
        self._stream = stream
        self.conn = Connection("client", max_frame=max_frame, trace=_trace)
        self._write_lock = trio.StrictFIFOLock()
        self._fd_of = _fd_getter(stream)
        self._read_fd_of = _fd_getter(stream, reading=True)
        #: The reader waits for the stream to become readable, holding no bytes and with
        #: no complete frame left in the connection: a consumer may read (Direct read).
        self._reader_parked = False
        #: A protocol error a direct read found, for the reader to handle as its own.
        self._stashed: RemoteProtocolError | None = None
        #: A direct read stopped at a full op channel with frames left in the connection.
        self._stranded = False
        self._op_buffer = op_buffer
        #: Seconds a frame write may go without progress before the transport breaks.
        self.write_timeout = write_timeout
        self.state: TransportState = OPEN
        #: Why the transport is BROKEN (None while OPEN or when we closed it).
        self.failure: BaseException | None = None
        self._ops: dict[int, OpChannel] = {}
        self._pings: dict[int, trio.Event] = {}
        self._tokens = itertools.count(1)
        #: Set when the reader task has finished (for any reason).
        self.reader_done = trio.Event()
        self._reader_scope: trio.CancelScope | None = None
        self.reader_started = False
        self._notices: deque[Message] = deque()
        self._notice_ready = trio.Event()
        self._notices_dropped = 0
        self._frames_sent = 0
        self._frames_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0

    # -- state ----------------------------------------------------------------------------

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            state=self.state,
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            ops_open=len(self._ops),
            notices_dropped=self._notices_dropped,
        )

    @property
    def welcome(self) -> Welcome | None:
        return self.conn.peer_welcome

    def _unusable(self, doing: str) -> BaseException:
        if self.state == CLOSED:
            return trio.ClosedResourceError(
                f"cannot {doing}: this side closed the connection to the runner"
            )
        return TransportBroken(
            f"cannot {doing}: the connection to the runner is broken ({self.failure})",
            self.failure,
        )

    def _break(self, failure: BaseException) -> None:
        """Move to BROKEN (unless already done or CLOSED) and stop the reader, which wakes
        every waiter once its owner knows why (or wake them now if no reader runs)."""
        if self.state == OPEN:
            self.state = BROKEN
            self.failure = failure
        self._stop_reader()

    def _stop_reader(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        elif not self.reader_started:
            self._wake_all()  # no reader will: nobody waits for the owner's verdict

    def _wake_all(self) -> None:
        self.drop_ops()
        for event in self._pings.values():
            event.set()
        self._pings.clear()

    # -- writing --------------------------------------------------------------------------

    async def send(self, msg: Message, *, reply_follows: bool = False) -> None:
        """Write one message.

        Raises LocalProtocolError if the message is illegal now (nothing is sent),
        TransportBroken or trio.ClosedResourceError if the transport is not OPEN.

        Cancellation: a cancel point before anything is written, and cancellable while
        waiting for the write lock (in both cases nothing was sent). Once writing starts
        the frame is written whole, shielded; if the peer accepts no byte for
        ``write_timeout`` seconds the transport is BROKEN. A schedule point, unless
        ``reply_follows``: the caller is about to wait for the answer, which is one.
        """
        if self.state != OPEN:
            raise self._unusable(f"send {msg.KIND!r}")
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._write_lock
        yielded = False
        # Nobody writes or waits to (the usual case): a frame the OS takes whole in one
        # write needs no lock, since no other task runs in between; only the rest of a
        # partial write does. Otherwise FIFO order behind the writer and its waiters.
        held = lock.locked() or self._fd_of is None
        if held:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
        try:
            if held and self.state != OPEN:
                raise self._unusable(f"send {msg.KIND!r}")
            data = self.conn.send(msg)  # LocalProtocolError: nothing sent, state unchanged
            sent = self._write_now(data, msg.KIND)
            if sent < len(data):
                if not held:
                    lock.acquire_nowait()  # free: we have not yielded since we looked
                    held = True
                yielded = await self._write_rest(data, max(sent, 0), msg.KIND)
        finally:
            if held:
                lock.release()
        if not yielded and not reply_follows:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _write_now(self, data: bytes, kind: str) -> int:
        """One non-blocking write of a frame, when the stream is a descriptor: the bytes
        the OS took (all of them: the frame counts as sent), or -1 for another stream.

        A system call cannot be interrupted halfway, so it needs neither a shield nor a
        timeout. Usually the frame fits in the OS buffer.
        """
        fd_of = self._fd_of
        fd = fd_of() if fd_of is not None else -1
        if fd < 0:
            return -1
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._write_failed(kind, exc) from exc
        self._bytes_sent += sent
        if sent == len(data):
            self._frames_sent += 1
        return sent

    async def _write_rest(self, data: bytes, sent: int, kind: str) -> bool:
        """Write what is left of a frame after ``sent`` bytes (the caller holds the write
        lock); True if that went through the stream (a checkpoint)."""
        size = len(data)
        fd_of = self._fd_of
        fd = fd_of() if fd_of is not None else -1
        rest = memoryview(data)[sent:]
        # A frame must go out whole: a cancel halfway would leave the peer mid-frame. One
        # scope both shields and bounds the write; its deadline moves on with every byte
        # the peer accepts, so it bounds a stall, not the time a big frame takes.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.write_timeout
            try:
                if fd >= 0:
                    assert fd_of is not None
                    await self._write_fd(fd_of, rest, scope)
                else:
                    await self._write_pieces(rest, scope)
            except trio.ClosedResourceError:
                raise self._unusable(f"send {kind!r}") from None
            except (trio.BrokenResourceError, OSError) as exc:
                raise self._write_failed(kind, exc) from exc
        if scope.cancelled_caught:
            failure = TimeoutError(
                f"writing a {kind!r} frame of {size} bytes made no progress for "
                f"{self.write_timeout} s (write_timeout): the runner is not reading"
            )
            self._break(failure)
            raise TransportBroken(f"{failure}; the connection is now unusable", failure)
        self._frames_sent += 1
        return True

    async def _write_fd(
        self, fd_of: Callable[[], int], rest: memoryview, scope: trio.CancelScope
    ) -> None:
        while rest:
            fd = fd_of()
            if fd >= 0:
                await trio.lowlevel.wait_writable(fd)
            # Asked again after every wait: if the stream was closed meanwhile, its number
            # may already belong to another file.
            if fd < 0 or fd_of() != fd:
                raise trio.ClosedResourceError("the stream was closed during a write")
            try:
                sent = os.write(fd, rest)
            except BlockingIOError:
                continue
            if sent:
                self._bytes_sent += sent
                rest = rest[sent:]
                scope.deadline = trio.current_time() + self.write_timeout

    async def _write_pieces(self, rest: memoryview, scope: trio.CancelScope) -> None:
        for start in range(0, len(rest), WRITE_PIECE):
            piece = rest[start : start + WRITE_PIECE]
            await self._stream.send_all(piece)
            self._bytes_sent += len(piece)
            scope.deadline = trio.current_time() + self.write_timeout

    def _write_failed(self, kind: str, exc: BaseException) -> TransportBroken:
        self._break(exc)
        return TransportBroken(
            f"cannot send {kind!r}: the connection to the runner broke ({exc!r}); "
            "the runner has probably exited",
            exc,
        )

    async def _send_fatal(self, exc: RemoteProtocolError) -> None:
        # Best effort: tell the runner why we are hanging up, once, without waiting long.
        try:
            data = self.conn.send(Error(exc.error_code, str(exc)[:4000], fatal=True))
        except Exception:  # already sent one, or cannot encode: nothing more to say
            return
        with trio.move_on_after(1.0):
            async with self._write_lock:
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    # -- handshake ------------------------------------------------------------------------

    async def handshake(self, hello: Hello) -> Welcome:
        """Send ``hello`` and read until the runner's ``welcome``; run before the reader.

        Raises RemoteProtocolError (garbage, a fatal error from the runner, a version
        mismatch) or TransportBroken (the stream ended or failed). No timeout of its own:
        the caller bounds it. Cancellation leaves the transport unusable (close it).
        """
        await self.send(hello)
        while True:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                await self._send_fatal(exc)
                self._break(exc)
                raise
            if type(event) is Welcome:
                self._frames_received += 1
                return event
            if isinstance(event, ConnectionClosed):
                failure = PeerClosed(event.state, clean=False)
                self._break(failure)
                raise TransportBroken(
                    "the runner closed the connection before sending its welcome", failure
                )
            if type(event) is Error:
                # Only a fatal error can come before the welcome (the state machine says so).
                refused = RemoteProtocolError(
                    f"the runner refused the handshake ({event.code}): {event.message}",
                    error_code=event.code,
                )
                self._break(refused)
                raise refused
            if event is not NEED_DATA:  # pragma: no cover - the state machine forbids it
                raise RemoteProtocolError(f"unexpected {event!r} during the handshake")
            await self._receive_into_conn()

    async def _receive_into_conn(self) -> None:
        """Read a chunk into the connection, or return after waiting for one (a consumer
        may have read it meanwhile: the caller asks the connection again either way)."""
        fd_of = self._read_fd_of
        if fd_of is not None:
            fd = fd_of()
            if fd < 0:
                raise self._unusable("receive")
            try:
                n = self.conn.receive_into(_reader_of(fd), RECEIVE_SIZE)
            except BlockingIOError:
                n = -1  # wait below, outside the handler: nothing of the read is kept
            except OSError as exc:
                self._break(exc)
                raise TransportBroken(f"the connection to the runner broke ({exc!r})", exc) from exc
            if n < 0:
                self._reader_parked = True
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    raise self._unusable("receive") from None
                finally:
                    self._reader_parked = False
                return
            self._bytes_received += n
            # Read without waiting: yield, so that a runner that never stops sending
            # cannot starve the other tasks (as the stream's receive_some does).
            await trio.lowlevel.checkpoint()
            return
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except trio.ClosedResourceError:
            raise self._unusable("receive") from None
        except (trio.BrokenResourceError, OSError) as exc:
            self._break(exc)
            raise TransportBroken(f"the connection to the runner broke ({exc!r})", exc) from exc
        self._bytes_received += len(data)
        self.conn.receive_data(data)

    # -- reading --------------------------------------------------------------------------

    async def run_reader(self, before_release: Callable[[], Awaitable[None]] | None = None) -> None:
        """The reader task: decode and route until the stream ends, fails, or is closed.

        Never raises (except Cancelled): every failure is recorded in :attr:`failure`.
        When it stops it awaits ``before_release`` (shielded: the owner decides there why
        the connection ended), then ends every op channel and wakes every waiter. Run it
        in a nursery owned by whoever owns the transport; it owns the notice writer.
        """
        self.reader_started = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_notices)
                with trio.CancelScope() as self._reader_scope:
                    if self.state == OPEN:
                        await self._read_and_record()
                stashed, self._stashed = self._stashed, None
                if stashed is not None:  # a direct read found it, and stopped us
                    await self._record_protocol_error(stashed)
                nursery.cancel_scope.cancel()
        finally:
            self._reader_scope = None
            try:
                if before_release is not None:
                    with trio.CancelScope(shield=True):
                        await before_release()
            finally:
                self._wake_all()
                self.reader_done.set()

    async def _read_and_record(self) -> None:
        try:
            await self._read_loop()
        except RemoteProtocolError as exc:
            await self._record_protocol_error(exc)
        except TransportBroken:
            pass  # already recorded by _break
        except trio.ClosedResourceError:
            pass  # we closed it: state is CLOSED

    async def _record_protocol_error(self, exc: RemoteProtocolError) -> None:
        log.debug("protocol error from the runner: %s", exc)
        if self.state == OPEN:
            self.state = BROKEN
            self.failure = exc
        if not isinstance(exc, _FatalFromPeer):
            # Before waking anyone: a woken owner may close the stream right away.
            with trio.CancelScope(shield=True):
                await self._send_fatal(exc)
        self._break(exc)

    async def _read_loop(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                await self._receive_into_conn()
                continue
            if isinstance(event, ConnectionClosed):
                self._break(PeerClosed(event.state, event.clean))
                return
            self._frames_received += 1
            await self._route(event)

    async def _route(self, msg: Message) -> None:
        if not self._route_now(msg):
            op: int = msg.op  # type: ignore[attr-defined]
            channel = self._ops[op]
            # Waits while the op's consumer is behind: this is the backpressure. (If the
            # consumer goes away meanwhile, the message is dropped.)
            await channel.put(msg)
            if type(msg) is Done or type(msg) is Error:
                channel.end()
                self._ops.pop(op, None)

    def fill(self, *, read: bool = True) -> bool:
        """Direct read: in a consumer's task, route what the runner has already sent,
        while the reader is parked; True if anything was routed. See the module docstring.

        At most one read; stops at a full op channel (that message goes one over). With
        ``read`` False it only routes what a direct read left in the connection.
        """
        if not self._reader_parked or self._reader_scope is None or self.state != OPEN:
            return False
        conn = self.conn
        routed = False
        try:
            # A parked reader left no complete frame in the connection; only a fill that
            # stopped early (stranded) can have: otherwise, straight to the read.
            event = conn.next_event() if self._stranded else NEED_DATA
            while True:
                if event is NEED_DATA:
                    self._stranded = False
                    if not read:
                        return routed
                    read = False
                    fd = self._read_fd_of()  # type: ignore[misc]
                    try:
                        self._bytes_received += conn.receive_into(_reader_of(fd), RECEIVE_SIZE)
                    except OSError:
                        return routed  # nothing yet, or a failure the reader will meet
                elif isinstance(event, ConnectionClosed):
                    return routed  # the end of the stream: the reader wakes to it
                else:
                    self._frames_received += 1
                    routed = True
                    if not self._route_now(event):
                        op: int = event.op  # type: ignore[union-attr]
                        channel = self._ops[op]
                        channel.put_over(event)
                        if type(event) is Done or type(event) is Error:
                            channel.end()
                            self._ops.pop(op, None)
                        self._stranded = True
                        return True
                event = conn.next_event()
        except RemoteProtocolError as exc:
            # The reader's to handle (tell the runner, break): stop it, it finds it.
            self._stashed = exc
            self._reader_scope.cancel()
            return routed

    def _route_now(self, msg: Message) -> bool:
        """Route ``msg`` without waiting; False if its op's channel is full (then nothing
        was done). Raises _FatalFromPeer for a fatal error from the runner."""
        op = getattr(msg, "op", None)
        if op is not None:
            channel = self._ops.get(op)
            if channel is not None:
                if not channel.put_nowait(msg):
                    return False
                if type(msg) is Done or type(msg) is Error:
                    channel.end()
                    self._ops.pop(op, None)
            return True
        kind = type(msg)
        if kind is Pong:
            event = self._pings.pop(msg.token, None)  # type: ignore[attr-defined]
            if event is not None:
                event.set()
        elif kind is Error:
            assert isinstance(msg, Error)
            if msg.fatal:
                raise _FatalFromPeer(msg)
            log.warning("the runner reported an ignored message (%s): %s", msg.code, msg.message)
        elif kind is UnknownMessage:
            assert isinstance(msg, UnknownMessage)
            # Never wait here: the answer is queued for the notice writer, or dropped.
            if len(self._notices) < NOTICE_QUEUE:
                log.debug("answering unknown message kind %r", msg.kind)
                self._notices.append(
                    Error("unknown-kind", f"this client does not know message kind {msg.kind!r}")
                )
                self._notice_ready.set()
            else:
                self._notices_dropped += 1
                log.debug("dropped the answer to unknown kind %r (queue full)", msg.kind)
        return True

    async def _write_notices(self) -> None:
        """Send the queued answers to notices, one at a time, each bounded."""
        while True:
            await self._notice_ready.wait()
            self._notice_ready = trio.Event()
            while self._notices:
                notice = self._notices.popleft()
                try:
                    await self.send(notice)
                except (TransportBroken, trio.ClosedResourceError):
                    return

    # -- ops and pings --------------------------------------------------------------------

    def open_op(self, op: int) -> OpChannel:
        """Register op ``op`` and return the channel its messages will arrive on.

        The channel ends (EndOfChannel) after the op's ``done`` or rejection, or when the
        transport stops; then :attr:`failure` / :attr:`state` say why.
        """
        if self.state != OPEN:
            raise self._unusable(f"start op {op}")
        fill = self.fill if self._read_fd_of is not None else None
        channel = self._ops[op] = OpChannel(self._op_buffer, fill)
        return channel

    def close_op(self, op: int) -> None:
        """Stop routing messages of ``op``: what is buffered and what comes later is
        dropped, and a consumer still waiting gets trio.ClosedResourceError."""
        channel = self._ops.pop(op, None)
        if channel is not None:
            channel.close()
            if self._stranded:
                self.fill(read=False)  # nobody else would: the reader waits for bytes

    async def ping(self) -> float:
        """Send a ping and wait for its pong; return the round trip time in seconds.

        No timeout of its own (wrap it in ``trio.fail_after``). Cancellation: the pong, if
        it comes later, is ignored. Raises TransportBroken/ClosedResourceError if the
        transport stops meanwhile.
        """
        token = next(self._tokens)
        event = trio.Event()
        self._pings[token] = event
        try:
            start = trio.current_time()
            await self.send(Ping(token), reply_follows=True)
            await event.wait()
            if self.state != OPEN:
                raise self._unusable("wait for a pong")
            return trio.current_time() - start
        finally:
            self._pings.pop(token, None)

    def drop_ops(self) -> None:
        """End every op channel now (their consumers see EndOfChannel); later op messages
        are dropped. Used when the owner is shutting down and nobody will read them."""
        for channel in self._ops.values():
            channel.end()
        self._ops.clear()

    # -- closing --------------------------------------------------------------------------

    async def abort(self, failure: BaseException) -> None:
        """Break the transport on purpose (``failure`` says why) and close the stream.

        Finishes even when cancelled.
        """
        self._break(failure)
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def aclose(self) -> None:
        """Close the stream; the reader stops and every waiter wakes up.

        Idempotent. Finishes even when cancelled (the stream is closed either way).
        """
        if self.state == OPEN:
            self.state = CLOSED
        self._stop_reader()
        with trio.CancelScope(shield=True):
            # trio closes streams even when cancelled; shield so a cancelled caller does
            # not skip the rest of the clean-up that follows this call.
            await self._stream.aclose()


def _fd_getter(stream: Stream, reading: bool = False) -> Callable[[], int] | None:
    """How to get the fd that ``stream`` writes to (``reading``: reads from), -1 once
    closed, if it is a kind of stream known to use a non-blocking fd with plain ``write``
    and ``read``; else None."""
    if os.name != "posix":  # pragma: no cover - the fast path is for POSIX fds
        return None
    if isinstance(stream, trio.StapledStream):
        stream = stream.receive_stream if reading else stream.send_stream
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno
    if isinstance(stream, trio.lowlevel.FdStream):
        return stream.fileno
    return None


def _reader_of(fd: int) -> Callable[[memoryview], int]:
    return lambda view: os.readv(fd, (view,))


class _FatalFromPeer(RemoteProtocolError):
    def __init__(self, msg: Error) -> None:
        super().__init__(
            f"the runner reported a fatal protocol error ({msg.code}): {msg.message}",
            error_code=msg.code,
        )


def _trace(direction: str, msg: Message) -> None:
    if frames_log.isEnabledFor(logging.DEBUG):
        frames_log.debug("%s %.500r", direction, msg)
