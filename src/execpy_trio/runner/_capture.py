"""Output capture at the file-descriptor level, streamed as it is written.

At start-up fds 1 and 2 become the write ends of two pipes (fd 0 becomes /dev/null), so
``print``, ``_write(1, ...)``, C code and child processes all write to them, each stream
in the order written. ``sys.stdout`` and ``sys.stderr`` are line-buffered, write-through
text wrappers on fds 1 and 2: a complete line (or a ``\\r``) reaches the pipe at once.

Two **pump** threads read the pipes in chunks of at most 512 KiB (and under the client's
``max_frame``) and send each chunk as an ``output`` frame while an op runs. Sending blocks
while the client does not read, the pump then stops reading, the pipe fills, and the
writer blocks: memory stays bounded end to end. Bytes written while no op runs wait in
the pipe and go out with the next op.

One lock, ``_idle``, orders the pumps and the main thread: a pump holds it while it reads
and sends a chunk, and the main thread holds it whenever no op runs, so the pumps wait on
it then. At the end of an op the main thread flushes ``sys.stdout``/``sys.stderr``, takes
the lock (so a chunk a pump holds has been sent) and reads the pipes itself until they are
empty; one ``poll`` tells whether there is anything to read at all. A child process that
keeps the pipe open and keeps writing cannot stall this: the drain reads at most what a
full pipe holds plus one chunk, and the rest goes with the next op. Only then does the
``done`` go out: every byte written before the code finished precedes it.

The runner's private copies of the pipes' write ends keep the pipes alive when user code
closes fd 1 or 2; at the end of the op, fds 0, 1 and 2 that user code closed are put back
(one that user code pointed elsewhere with ``dup2`` is its choice and is left alone), and
so are ``sys.stdout``/``sys.stderr`` if user code closed them.

Limit (the GIL): the pumps are Python threads, so they need the GIL to run. Code that
holds the GIL while it writes more than a full pipe to fd 1 or 2 in one go -- in practice
only a C extension that writes without releasing the GIL -- blocks forever, because the
pump cannot empty the pipe. Python code (``print``, ``_write``) and child processes are
not affected: a blocked write releases the GIL. The pipes are therefore enlarged with
``F_SETPIPE_SZ`` to :data:`PIPE_SIZE` (1 MiB) where the system allows it (see
``/proc/sys/fs/pipe-max-size``); otherwise the default (64 KiB on Linux) applies.
"""

from __future__ import annotations

import _thread
import io
import os
import sys

# Bound at import, never looked up at call time: user code may replace or delete them.
from os import dup2 as _dup2
from os import read as _read
from select import POLLIN as _POLLIN
from select import POLLNVAL as _POLLNVAL
from select import poll as _poll

from execpy_trio.protocol import Output

from ._channel import Channel, ChannelLost

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PIPE_SIZE = 1 << 20
#: Room for an output frame's header and map around its payload.
FRAME_OVERHEAD = 64
MAX_CHUNK = 524288
_ERRORS = {"stdout": "surrogateescape", "stderr": "backslashreplace"}


def _grow_pipe(fd: int) -> int:
    import fcntl

    for size in (PIPE_SIZE, 256 * 1024):
        try:
            return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            continue
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 65536


def _text_stream(fd: int, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding="utf-8",
        errors=errors,
        line_buffering=True,
        write_through=True,
    )


class Capture:
    """Owns fds 0, 1, 2, the capture pipes and the pump threads."""

    def __init__(self, channel: Channel, on_lost: Callable[[], None]) -> None:
        self.channel = channel
        self.on_lost = on_lost
        #: Called once when an op goes over its output limit (set by the runner).
        self.on_output_limit: Callable[[], None] = lambda: None
        self.output_left: int | None = None
        self.chunk = MAX_CHUNK - FRAME_OVERHEAD
        devnull = os.open(os.devnull, os.O_RDWR)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pipe_size = min(_grow_pipe(out_w), _grow_pipe(err_w))
        # dup2 makes 0, 1, 2 inheritable: child processes write into the pipes too.
        _dup2(devnull, 0)
        _dup2(out_w, 1)
        _dup2(err_w, 2)
        self._keep = {0: devnull, 1: out_w, 2: err_w}
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self._streams = {out_r: "stdout", err_r: "stderr"}
        self._drain_poll = _poll()
        self._drain_poll.register(out_r, _POLLIN)
        self._drain_poll.register(err_r, _POLLIN)
        for fd in (0, 1, 2):
            self._drain_poll.register(fd, 0)  # reports only POLLNVAL: closed
        #: The op that output is attributed to; None while idle. Changed under _idle.
        self.output_op: int | None = None
        # Held by a pump while it reads and sends a chunk, and by the main thread while no
        # op runs (so the pumps wait on it then). One lock, not one per pump and a gate:
        # the start and end of every op take it once.
        self._idle = _thread.allocate_lock()
        self._idle.acquire()
        self.stdout = _text_stream(1, _ERRORS["stdout"])
        self.stderr = _text_stream(2, _ERRORS["stderr"])
        sys.stdout = sys.__stdout__ = self.stdout  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = self.stderr  # type: ignore[misc]
        for rfd in self._streams:
            _thread.start_new_thread(self._pump, (rfd,))

    def set_peer_limit(self, peer_max_frame: int) -> None:
        self.chunk = min(MAX_CHUNK, peer_max_frame - FRAME_OVERHEAD)

    # -- per op ---------------------------------------------------------------------------

    def begin(self, op: int, output_limit: int | None = None) -> None:
        self.output_op = op
        #: Bytes the op may still write (stdout and stderr together), or None.
        self.output_left = output_limit
        if output_limit is not None:
            # Written while no op ran (a leftover child, a thread, a preload): under a
            # limit it is dropped, not charged to this op.
            self._discard()
        self._idle.release()

    def _within_limit(self, data: bytes) -> bytes:
        """What of ``data`` may be sent under the op's output limit (the caller holds
        ``_idle``); crossing the limit tells the runner, once."""
        left = self.output_left
        assert left is not None
        if len(data) <= left:
            self.output_left = left - len(data)
            return data
        if left >= 0:
            self.output_left = -1  # over: from now on everything is dropped
            self.on_output_limit()
        return data[:left] if left > 0 else b""

    def finish(self, op: int) -> None:
        """Send everything written so far (bounded; see the module docstring)."""
        # Flushing our own stream raises only if user code closed it (a pipe we read
        # cannot fail otherwise): then it is repaired below, with no check per op. A
        # stream that user code deleted or set to None is repaired too.
        damaged = False
        try:
            out = sys.stdout
        except AttributeError:
            out = None
        try:
            err = sys.stderr
        except AttributeError:
            err = None
        if out is None or err is None:
            damaged = True
        for stream, ours in ((out, self.stdout), (err, self.stderr)):
            if stream is not None:
                try:
                    stream.flush()
                except Exception:
                    damaged = damaged or stream is ours
            if stream is not ours:  # replaced by user code: ours may still hold bytes
                try:
                    ours.flush()
                except Exception:
                    damaged = True
        self._idle.acquire()  # a chunk a pump holds has been sent; the pumps wait now
        # One poll: which pipes have data, and whether user code closed fd 0, 1 or 2.
        # Nothing written and nothing closed (the usual case) costs just this call.
        ready = self._drain_poll.poll(0)
        if ready:
            if not self.channel.broken:
                self._drain(op, ready)
            self._restore_fds(ready)
        if self.output_left == -1:
            self._discard()
        if damaged:
            self._repair_streams()
        self.output_op = None
        self.output_left = None

    def _discard(self) -> None:
        """After an op went over its output limit: drop what is still in the pipes (its
        writers have been killed), so that none of it is charged to the next op."""
        for _ in range(64):  # bounded: 64 rounds of up to a chunk per pipe
            ready = [fd for fd, ev in self._drain_poll.poll(0) if fd in self._streams]
            if not ready:
                return
            for rfd in ready:
                try:
                    _read(rfd, self.pipe_size)
                except (BlockingIOError, OSError):
                    pass

    def _restore_fds(self, ready: list[tuple[int, int]]) -> None:
        """Put back fds 0, 1, 2 that user code closed (a replaced one is left alone)."""
        closed = [fd for fd, ev in ready if fd <= 2 and ev & _POLLNVAL]
        for fd in closed:
            _dup2(self._keep[fd], fd)

    def _repair_streams(self) -> None:
        """Put back our streams where user code closed, deleted or cleared them."""
        for name in ("stdout", "stderr"):
            ours = getattr(self, name)
            if ours.closed:
                ours = _text_stream(1 if name == "stdout" else 2, _ERRORS[name])
                setattr(self, name, ours)
            current = sys.__dict__.get(name)
            if current is None or (current is not ours and getattr(current, "closed", False)):
                setattr(sys, name, ours)
            setattr(sys, f"__{name}__", ours)

    def _drain(self, op: int, ready: list[tuple[int, int]]) -> None:
        budget = dict.fromkeys(self._streams, self.pipe_size + self.chunk)
        while True:
            progressed = False
            for rfd, _ev in ready:
                if rfd not in budget or budget[rfd] <= 0:
                    continue
                try:
                    data = _read(rfd, self.chunk)
                except BlockingIOError:
                    continue
                if not data:
                    continue
                budget[rfd] -= len(data)
                progressed = True
                if self.output_left is not None:
                    data = self._within_limit(data)
                    if not data:
                        continue
                try:
                    self.channel.send(Output(op, self._streams[rfd], data))
                except ChannelLost:
                    self.on_lost()
                    return
            if not progressed:
                return
            ready = self._drain_poll.poll(0)

    # -- pump threads ---------------------------------------------------------------------

    def _pump(self, rfd: int) -> None:
        stream = self._streams[rfd]
        idle = self._idle
        poller = _poll()
        poller.register(rfd, _POLLIN)
        send = self.channel.send
        try:
            while True:
                poller.poll()
                with idle:  # waits while no op runs
                    op = self.output_op
                    if op is None:
                        continue
                    try:
                        data = _read(rfd, self.chunk)
                    except BlockingIOError:
                        continue  # the main thread's drain took it
                    if self.output_left is not None:
                        data = self._within_limit(data)
                        if not data:
                            continue  # over the limit: read and dropped, so no writer blocks
                    send(Output(op, stream, data))
        except ChannelLost:
            self.on_lost()
        except BaseException as exc:  # a bug: make it visible, and stop cleanly
            self.channel.diag(f"internal error in the {stream} pump: {exc!r}")
            self.on_lost()
