"""The runner's I/O thread: it watches the parent, and reads the channel while an op runs.

Functions of the :class:`~execpy_trio.runner._main.Runner` (its state is shared with the
main thread; see ``_main``'s theory of operation and
``_channel``'s for the locks). While an op runs it answers pings, rejects extra ops as
busy, delivers input replies, turns a cancel or a shutdown into an interrupt, checks the
op's CPU time against its limit, and stops reading when its replies are not being written
(backpressure).
"""

from __future__ import annotations

from functools import partial

# Bound at import, never looked up at call time: user code may replace or delete them.
from os import getppid as _getppid
from os import read as _read
from os import write as _write
from select import POLLIN as _POLLIN
from select import poll as _poll

from execpy_trio.protocol import (
    NEED_DATA,
    Cancel,
    ConnectionClosed,
    Error,
    Eval,
    Exec,
    InputReply,
    Message,
    Ping,
    Pong,
    RemoteProtocolError,
    Shutdown,
)

from ._channel import ChannelLost
from ._limits import CPU_TICK_MS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._main import Runner

#: How often the I/O thread looks for a long-running op while ops are being run (ms).
IO_TICK_MS = 2
#: After this many ticks without a new op, it sleeps until the next op wakes it.
IO_DORMANT = 50
#: How often an interrupt the main thread has not taken yet is sent again (ms).
REDELIVER_MS = 100


def wake_io(runner: Runner) -> None:
    try:
        _write(runner._wake_w, b"!")
    except BlockingIOError:
        pass  # already full of wake-ups: it will wake


def run_io_thread(runner: Runner) -> None:
    try:
        _io_loop(runner)
    except BaseException as exc:
        runner.internal_error(exc)


def _io_loop(runner: Runner) -> None:
    """Watch the parent; read the channel while an op runs for more than a moment.

    Waking this thread at the start of every op and back at its end costs two thread
    switches and a GIL hand-off per op, more than the rest of a round trip. So it
    wakes on its own every IO_TICK while ops are being run, and takes over reading
    when it sees the same op running on two ticks in a row: a short op never involves
    it, and a cancel, ping or input reply waits at most two ticks. When no op has
    started for IO_DORMANT ticks it sleeps until the main thread wakes it at the next
    op start. While it reads, it holds ``read_lock``; the main thread takes it back
    at the end of the op by waking it.
    """
    chan = runner.channel
    handoff = runner._handoff
    idle = _poll()
    busy = _poll()
    for poller in (idle, busy):
        poller.register(runner._wake_r, _POLLIN)
        if runner._pidfd is not None:
            poller.register(runner._pidfd, _POLLIN)
    busy.register(chan.rfd, _POLLIN)
    # Without a pidfd, notice the parent's death by polling getppid() twice a second.
    watch_ppid = runner._pidfd is None and runner.ppid > 1
    dormant_timeout = 500 if watch_ppid else None
    last_gen = -1
    quiet_ticks = 0
    while True:
        if chan.reader_is_io:
            pending = runner.cancel_requested and not runner.interrupt_delivered
            # With replies piling up unwritten, read nothing more (backpressure).
            blocked = runner._io_backlog or chan.control_full()
            timeout = REDELIVER_MS if pending else dormant_timeout
            if runner.limits.cpu_seconds is not None and runner._op_active:
                timeout = CPU_TICK_MS if timeout is None else min(timeout, CPU_TICK_MS)
            ready = (idle if blocked else busy).poll(timeout)
            if pending and not ready:
                runner._redeliver_interrupt()
        else:
            ready = idle.poll(dormant_timeout if runner._io_sleeping else IO_TICK_MS)
        for fd, _ev in ready:
            if fd == runner._wake_r:
                _read(runner._wake_r, 4096)
                if runner._io_backlog and chan.reader_is_io and not chan.control_full():
                    _io_read(runner, buffered_only=True)
            elif fd == runner._pidfd:
                runner.parent_died()
            else:
                _io_read(runner)
                if runner.lost:
                    # End of stream stays readable: polling it again would spin at full
                    # CPU (and take the GIL from the unwinding op) until the exit.
                    busy.unregister(chan.rfd)
        if watch_ppid and _getppid() != runner.ppid:
            runner.parent_died()
        if runner.limits.cpu_seconds is not None and runner._op_active:
            runner._check_cpu()
        took_over = False
        with handoff:
            if chan.reader_is_io:
                if not runner._op_active:
                    # What is left in the decoder is the main thread's to read now.
                    runner._io_backlog = False
                    chan.reader_is_io = False
                    chan.read_lock.release()
            elif runner._op_active:
                quiet_ticks = 0
                if runner._op_gen == last_gen and chan.read_lock.acquire(False):
                    chan.reader_is_io = took_over = True
                last_gen = runner._op_gen
            elif runner._op_gen == last_gen:
                quiet_ticks += 1
                if quiet_ticks >= IO_DORMANT:
                    runner._io_sleeping = True
            else:
                last_gen = runner._op_gen
                quiet_ticks = 0
        if took_over:
            # Frames that came in the same read as the op's request (a ping or cancel
            # right behind it) are already decoded-ready: no poll would report them.
            _io_read(runner, buffered_only=True)


def _io_read(runner: Runner, buffered_only: bool = False) -> None:
    """Read a chunk if one is there, then act on every complete frame buffered.

    Stops while the control queue is full (its replies are not being written): the
    rest stays in the decoder, ``_io_backlog`` is set, and the channel is not read
    again until the queue has room and the backlog is done.
    """
    chan = runner.channel
    try:
        if not buffered_only:
            chan.fill_if_readable()
        while True:
            if chan.control_full():
                runner._io_backlog = True
                return
            ev = chan.next_buffered()
            if ev is NEED_DATA:
                runner._io_backlog = False
                return
            _io_dispatch(runner, ev)
            if type(ev) is ConnectionClosed:
                return
    except RemoteProtocolError as exc:
        runner.protocol_failure(exc)


def _io_dispatch(runner: Runner, ev: Any) -> None:
    kind = type(ev)
    if kind is Cancel:
        if ev.op == runner.running_op:
            runner.interrupt()
    elif kind is InputReply:
        runner.input.deliver(ev.op, ev.text)
    elif kind is Ping:
        _control(runner, Pong(ev.token))
    elif kind is Exec or kind is Eval:
        _control(
            runner,
            Error(
                "busy",
                f"op {ev.op} rejected: op {runner.running_op} is still running; wait "
                "for its done (or cancel it) before sending another exec or eval",
                op=ev.op,
            ),
        )
    elif kind is Shutdown:
        runner.shutdown_requested = True
        runner.interrupt()
    elif kind is ConnectionClosed:
        runner.channel_lost()
    else:
        runner._other_message(ev, partial(_control, runner))


def _control(runner: Runner, msg: Message) -> None:
    try:
        runner.channel.send_control(msg)
    except ChannelLost:
        runner.channel_lost()
