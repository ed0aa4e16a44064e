"""The runner's end of the protocol channel: one Connection, shared by four threads.

Theory of operation
-------------------
Threads: the **main** thread (runs user code; reads the channel itself while no op runs),
the **I/O** thread (reads the channel while an op runs, to see cancel, input_reply, ping,
shutdown), and two **pump** threads (send captured output). Reading while idle in the main
thread saves a hand-off between threads on every request (measured ~20 us per round trip).

* ``conn_lock`` guards the :class:`Connection` (state machine and decoder). It is held
  only for the pure computation, never across a system call.
* ``write_lock`` orders frames on the wire: a writer encodes (``conn.send``) and writes
  under it, so the wire order is the state machine's order. Writes block when the peer
  does not read (backpressure); the lock is held meanwhile.
* Frames the I/O thread must send (pong, busy, unknown-kind) go through
  :meth:`send_control`, which never waits for ``write_lock``: the frame is queued and
  written by whoever holds the lock when it releases it (each side re-checks the queue
  after its own step, so none is lost). The I/O thread therefore never blocks behind a
  pump that is blocked on a slow reader. (It can block in a write of its own, when it
  finds the lock free and the peer reads nothing: then the peer's frames, a cancel among
  them, wait behind the ones it does not read, as on any stream.) The queue holds at
  most ``CONTROL_MAX`` frames: when it is full the I/O thread stops reading (so a peer
  that sends pings but reads nothing meets backpressure, not a runner that grows without
  bound), and ``on_control_room`` wakes it when the queue has been written out.
* ``read_lock`` decides who reads: the main thread holds it while idle (and reads with
  blocking reads); the I/O thread holds it, with ``reader_is_io`` set, while it reads for
  a long-running op, and then reads only after poll says bytes are there, so it never sits
  in a blocking read that the main thread would have to wait for. The hand-off itself is
  described in ``_main.Runner._io_loop``.
"""

from __future__ import annotations

import _thread

# Bound at import, never looked up at call time: user code may replace or delete them.
from os import read as _read
from os import set_blocking as _set_blocking
from os import write as _write
from os import writev as _writev
from select import POLLIN as _POLLIN
from select import POLLOUT as _POLLOUT
from select import poll as _poll
from time import monotonic as _monotonic

from execpy_trio.protocol import (
    NEED_DATA,
    Connection,
    LocalProtocolError,
    Message,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

READ_SIZE = 65536
#: Control frames (pong, busy, unknown-kind) queued behind a blocked writer before the
#: I/O thread stops reading the channel.
CONTROL_MAX = 64


class ChannelLost(Exception):
    """The peer is gone: end of stream, or a read or write failed."""


class Channel:
    def __init__(self, rfd: int, wfd: int, conn: Connection, diag: Callable[[str], None]) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.conn = conn
        self.diag = diag
        self.conn_lock = _thread.allocate_lock()
        self.write_lock = _thread.allocate_lock()
        self.read_lock = _thread.allocate_lock()
        self.reader_is_io = False
        self.broken = False
        #: The start of the last chunk read, for diagnostics after a protocol error.
        self.last_chunk = b""
        #: The connection state before the last event was decoded, for diagnostics.
        self.state_at_read = conn.state
        self._control: list[Message] = []
        #: Called (by a writer, holding ``write_lock``) when a full control queue has
        #: been written out: the I/O thread waits for it before it reads again.
        self.on_control_room: Callable[[], None] | None = None
        self._room_wanted = False
        self._readable = _poll()
        self._readable.register(rfd, _POLLIN)
        self._writable = _poll()
        self._writable.register(wfd, _POLLOUT)

    # -- writing --------------------------------------------------------------------------

    def send(self, msg: Message, objects_checked: bool = False) -> None:
        """Encode and write one frame; blocks while the peer does not read.

        Raises ChannelLost if the write fails, LocalProtocolError if ``msg`` is illegal now
        (``objects_checked``: see Connection.send_pieces).
        """
        # _send_locked, inline: this is every done's and every output chunk's path.
        with self.write_lock:
            if self.broken:
                raise ChannelLost("the channel is closed")
            try:
                with self.conn_lock:
                    pieces = self.conn.send_pieces(msg, objects_checked)
            except LocalProtocolError:
                if self._control:  # queued meanwhile: still ours to write
                    self._flush_control()
                raise
            if len(pieces) == 1:
                self.write_all(pieces[0])
            else:
                # An output frame: its head and payload in one writev, so the payload is
                # never copied into a frame buffer (one copy less per chunk).
                self.write_pieces(pieces)
            if self._control:
                self._flush_control()
        if self._control:
            self._kick()

    def send_control(self, msg: Message) -> None:
        """Queue a frame and write it now if nobody is writing; never waits for a writer."""
        self._control.append(msg)
        self._kick()

    def _kick(self) -> None:
        while self._control and self.write_lock.acquire(False):
            try:
                self._flush_control()
            finally:
                self.write_lock.release()

    def control_full(self) -> bool:
        """True if the I/O thread must stop reading: its replies are not being written.

        Then ``on_control_room`` is called once the queue has been written out.
        """
        # The flag first, then the check: a writer that empties the queue in between
        # sees the flag and calls back (at worst once too often, never once too few).
        self._room_wanted = True
        if len(self._control) >= CONTROL_MAX:
            return True
        self._room_wanted = False
        return False

    def _flush_control(self) -> None:
        while self._control:
            msg = self._control.pop(0)
            try:
                self._send_locked(msg)
            except LocalProtocolError as exc:
                # E.g. a pong after the connection failed: nothing to tell the peer.
                self.diag(f"dropped {msg.KIND!r} frame: {exc}")
        if self._room_wanted:
            self._room_wanted = False
            if self.on_control_room is not None:
                self.on_control_room()

    def _send_locked(self, msg: Message) -> None:
        if self.broken:
            raise ChannelLost("the channel is closed")
        with self.conn_lock:
            data = self.conn.send(msg)
        self.write_all(data)

    def write_all(self, data: bytes) -> None:
        try:
            try:
                n = _write(self.wfd, data)
            except BlockingIOError:
                n = 0
            if n < len(data):
                self._write_rest(memoryview(data)[n:])
        except OSError as exc:
            self.broken = True
            raise ChannelLost(f"writing to the channel failed: {exc}") from exc

    def write_pieces(self, pieces: tuple[bytes, ...]) -> None:
        try:
            try:
                n = _writev(self.wfd, pieces)
            except BlockingIOError:
                n = 0
            if n < sum(len(p) for p in pieces):
                # A short write (a signal, or a full buffer on a non-blocking fd): finish
                # with plain writes from where it stopped.
                self._write_rest(memoryview(b"".join(pieces))[n:])
        except OSError as exc:
            self.broken = True
            raise ChannelLost(f"writing to the channel failed: {exc}") from exc

    def _write_rest(self, rest: memoryview) -> None:
        # The channel may be a non-blocking descriptor (a --stdio runner whose parent set
        # O_NONBLOCK on the pipes): then EAGAIN means "full", and we wait until it is not.
        while len(rest):
            try:
                rest = rest[_write(self.wfd, rest) :]
            except BlockingIOError:
                self._writable.poll()

    def send_fatal(self, msg: Message) -> None:
        """Best effort, bounded: a fatal error frame on the way out. Never blocks for long."""
        if not self.write_lock.acquire(True, 1.0):
            return
        try:
            with self.conn_lock:
                data = self.conn.send(msg)
            _set_blocking(self.wfd, False)
            _write(self.wfd, data)
        except (OSError, LocalProtocolError) as exc:
            self.diag(f"could not send the fatal error frame: {exc}")
        finally:
            self.write_lock.release()

    # -- reading --------------------------------------------------------------------------

    def next_buffered(self) -> Any:
        """The next complete event already received, or NEED_DATA (no system call)."""
        with self.conn_lock:
            self.state_at_read = self.conn.state
            return self.conn.next_event()

    def _read_chunk(self) -> bytes:
        # End of stream is fed to the connection as b"", which then reports
        # ConnectionClosed; a read error is treated the same way.
        data = self._try_read_chunk()
        while data is None:
            # A non-blocking descriptor (a --stdio runner whose parent set O_NONBLOCK on
            # the pipes) with nothing to read: wait for data, as a blocking read would.
            self._readable.poll()
            data = self._try_read_chunk()
        return data

    def _try_read_chunk(self) -> bytes | None:
        """A chunk, b"" at end of stream or on error, None if it would block."""
        try:
            data = _read(self.rfd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            self.diag(f"reading the channel failed: {exc}")
            data = b""
        self.last_chunk = data  # kept whole: it is sliced only for a diagnostic
        return data

    def fill(self) -> None:
        """Read one chunk into the connection (the caller holds ``read_lock``)."""
        data = self._try_read_chunk()  # the I/O thread must never block in a read
        if data is not None:
            with self.conn_lock:
                self.conn.receive_data(data)

    def read_event(self, timeout_ms: int | None = None) -> Any:
        """The next event, reading as needed (the caller holds ``read_lock``).

        Returns NEED_DATA only if ``timeout_ms`` passed without a complete frame. This is
        the idle main thread's path to every request: one lock round per chunk read.
        """
        conn = self.conn
        lock = self.conn_lock
        with lock:
            self.state_at_read = conn.state
            ev = conn.next_event()
        deadline = 0.0
        if timeout_ms is not None:
            deadline = _monotonic() + timeout_ms / 1000
        while ev is NEED_DATA:
            if timeout_ms is not None:
                # One bound for the whole frame, not per chunk: a peer that trickles a
                # frame byte by byte must not stretch the wait without end.
                remaining = int((deadline - _monotonic()) * 1000) + 1
                if remaining <= 0 or not self._readable.poll(remaining):
                    return NEED_DATA
            data = self._read_chunk()
            with lock:
                conn.receive_data(data)
                self.state_at_read = conn.state
                ev = conn.next_event()
        return ev

    def fill_if_readable(self) -> None:
        """For the I/O thread, holding ``read_lock``: read a chunk if one is there."""
        if self._readable.poll(0):
            self.fill()
