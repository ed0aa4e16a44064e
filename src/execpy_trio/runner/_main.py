"""The runner: set-up, handshake, the request loop, interrupts and exits (its command line
is ``_command.py``; how an op's value and error are sent, ``_execute.Executor``).

Threads and phases
------------------
User code runs in the **main** thread, so that a signal can interrupt it anywhere. While
no op runs, the main thread also reads the channel itself. When an op starts it hands
reading to the **I/O** thread (which answers pings, rejects extra ops as busy, delivers
input replies and turns a cancel into an interrupt) and takes it back before the ``done``.
The I/O thread also watches the parent process (a pidfd) the whole time.

A cancel sets ``cancel_requested`` and sends SIGINT to the main thread with
``pthread_kill``; the handler raises ``KeyboardInterrupt`` only in the RUNNING phase, so
the runner's own code is never interrupted. Sending an input request from the main thread
is a PROTECTED step: a SIGINT that lands then is held and raised right after the frame is
written, so a frame is never cut in half. A cancel that lands just before user code starts
is seen by the check at the start of RUNNING; one that lands after it ended (FINISHING) is
ignored. Either way the op ends in exactly one ``done``. Children of the runner in its
process group get SIGINT too, as a terminal's Ctrl-C would do.

Hardening
---------
* **fork() in user code**: an at-fork hook marks the child (``forked``): its channel is
  broken (it never writes a frame), it kills nothing on the way out, and it ends with
  ``os._exit`` at the end of the user code (exit code as Python's: SystemExit's code, 1
  and a traceback on fd 2 for an exception), so it never runs the request loop. Its fds
  1 and 2 are the capture pipes: its output arrives with the parent's op.
* **Nothing escapes**: after the welcome the runner makes itself a child subreaper
  (Linux ``prctl``), so orphans (double forks, ``setsid`` daemons) become its children;
  every exit path (:meth:`Runner.exit`) SIGKILLs and reaps its process group and all its
  descendants, whatever their session. Only SIGKILL of the runner itself escapes this
  (the client then kills the process group; a cgroup is the complete answer).
* **User code cannot break the runner**: the functions it calls after start-up are bound
  at import (``from os import write as _write``), never looked up on the module at call
  time, and the standard streams are put back at the end of an op if user code deleted,
  cleared or closed them.
"""

from __future__ import annotations

import _thread
import os
import sys
from functools import partial

# Bound at import, never looked up at call time: user code may replace or delete them.
from operator import index as _index
from os import _exit
from os import getppid as _getppid
from os import kill as _kill
from os import write as _write
from time import monotonic as _monotonic
from time import sleep as _sleep

from execpy_trio.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    RUNNER,
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_OK,
    Cancel,
    Connection,
    ConnectionClosed,
    Done,
    Error,
    Eval,
    Exec,
    Hello,
    InputReply,
    InputRequest,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    RemoteProtocolError,
    Shutdown,
    UnknownMessage,
    Welcome,
)

from . import (
    EXIT_CHANNEL_LOST,
    EXIT_HANDSHAKE_TIMEOUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PARENT_DIED,
    EXIT_PROTOCOL,
    EXIT_SETUP_FAILED,
    IMPL_NAME,
    IMPL_VERSION,
    UsageError,
)
from ._channel import Channel, ChannelLost
from ._children import become_subreaper, group_members, has_children, kill_descendants
from ._io import run_io_thread, wake_io
from ._limits import CPU_GRACE

_SIGKILL_NUMBER = 9

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable
    from types import CodeType, FrameType
    from typing import Any, NoReturn
else:
    import _signal  # not `signal`: that imports enum, ~2 ms of start-up for nothing

_getsignal = _signal.getsignal
_SIGINT = _signal.SIGINT

CAPABILITIES = ("exec", "eval", "stdin", "interrupt", "fd-capture", "limits", "preload")
#: Cancels of one op closer together than this (s) signal its child processes once.
INTERRUPT_COALESCE = 0.05
#: The GIL switch interval while the runner lives (s); see Runner.__init__.
SWITCH_INTERVAL = 0.0005
#: After the channel is lost mid-op, how long the op has to unwind before a hard exit.
LOST_GRACE = 1.0

# Phases of the main thread (see the module docstring).
IDLE, PREPARING, RUNNING, PROTECTED, FINISHING = range(5)


class Runner:
    def __init__(self, fd: int | None, stdio: bool, hello_timeout: float) -> None:
        self.pid = os.getpid()
        self.ppid = _getppid()
        self.main_ident = _thread.get_ident()
        self.hello_timeout = hello_timeout
        self.phase = IDLE
        self.deferred_interrupt = False
        self.cancel_requested = False
        self._interrupted_at = 0.0
        self.interrupt_delivered = False
        self.shutdown_requested = False
        self.lost = False
        self.running_op: int | None = None
        from ._limits import Limits

        #: The limits in force (none until the hello asks for some).
        self.limits = Limits(None)
        #: The limit error the running op is to be stopped with, instead of a cancel.
        self.pending_limit: BaseException | None = None
        self._cpu_tripped = False
        self._cpu_tripped_at = 0.0
        #: True in a child that user code forked: it must never touch the channel.
        self.forked = False
        #: Orphans among our descendants become our children (set after the welcome).
        self.subreaper = False
        # A thread waiting for the GIL gets it after this long at most (Python's default
        # is 5 ms): the I/O thread must read a cancel and send the interrupt while user
        # code spins, and every hand-off costs one wait (measured: a cancelled tight loop
        # 14 ms p99 at 5 ms, 3 ms at 0.5 ms). The cost is a GIL hand-off per I/O tick.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._exiting = _thread.allocate_lock()

        # The diagnostic stream: our original stderr, on a private (CLOEXEC) fd.
        try:
            self.diag_fd = os.dup(2)
        except OSError:
            self.diag_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if stdio:
                rfd, wfd = os.dup(0), os.dup(1)
            else:
                assert fd is not None
                os.fstat(fd)
                if fd <= 2:
                    fd = os.dup(fd)
                else:
                    os.set_inheritable(fd, False)
                rfd = wfd = fd
        except OSError as exc:
            raise UsageError(f"the channel descriptor is not usable: {exc}") from None

        # Our own process group (the client uses start_new_session; a shell or ssh may
        # not), so that the group holds our children and nobody else's.
        if os.getpgrp() != self.pid:
            try:
                os.setsid()
            except OSError:
                pass
        self.group_leader = os.getpgrp() == self.pid

        trace = self._trace if os.environ.get("EXECPY_TRACE") == "1" else None
        self.conn = Connection(RUNNER, trace=trace)
        self.channel = Channel(rfd, wfd, self.conn, self.diag)
        self.channel.read_lock.acquire()  # the main thread reads until an op starts

        #: One bound method, so that "is it still ours?" is an identity check.
        self._sigint_handler = self._on_sigint
        _signal.signal(_SIGINT, self._sigint_handler)
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        # User code's os._exit ends the runner: what the code started must end with it.
        os._exit = self._user_os_exit

        from ._capture import Capture
        from ._execute import Executor
        from ._hooks import AfterImport
        from ._input import Input

        self.capture = Capture(self.channel, self.channel_lost)
        self.input = Input(self._send_input_request)
        self.executor = Executor()
        AfterImport(
            {"getpass": self.input.patch_getpass, "linecache": self.executor.on_linecache_import}
        ).install()

        # Hand-off of reading between the main and I/O threads (see _io._io_loop).
        self._handoff = _thread.allocate_lock()
        self._op_gen = 0
        self._op_active = False
        self._io_sleeping = True
        #: Complete frames left in the decoder while the control queue was full.
        self._io_backlog = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.channel.on_control_room = partial(wake_io, self)
        self._pidfd: int | None = None
        if self.ppid > 1:
            try:
                self._pidfd = os.pidfd_open(self.ppid)
            except (AttributeError, OSError):
                self._pidfd = None  # old kernel or not Linux: poll getppid() instead
            # The parent may have died before pidfd_open; then the pidfd names another
            # process or fails, and getppid() has changed: check once more.
            if _getppid() != self.ppid:
                self.parent_died()
        _thread.start_new_thread(run_io_thread, (self,))

    # -- diagnostics and exits ------------------------------------------------------------

    def diag(self, text: str) -> None:
        try:
            _write(self.diag_fd, f"execpy-runner[{self.pid}]: {text}\n".encode("utf-8", "replace"))
        except OSError:
            pass

    def _trace(self, direction: str, msg: Message) -> None:
        self.diag(f"{direction} {msg!r:.400}")

    def exit(self, code: int) -> NoReturn:
        """Kill the children in our process group and exit now, from any thread."""
        if self.forked:
            _exit(code)  # a forked child kills nothing: the group is the runner's
        self._exiting.acquire()  # a second caller waits here until the process is gone
        try:
            self.kill_descendants()
        finally:
            _exit(code)

    def _user_os_exit(self, status: int) -> NoReturn:
        """``os._exit`` as user code sees it: the process ends at once, as Python's does,
        but first what the op wrote to fds 1 and 2 is sent and the descendants end."""
        status = _index(status)  # a TypeError for a non-int, as os._exit gives
        if not -0x80000000 <= status <= 0x7FFFFFFF:
            # Checked first, as os._exit does: it raises and the code goes on, with
            # nothing drained or killed on the way.
            raise OverflowError(f"os._exit() status {status} does not fit in a C int")
        if (
            not self.forked
            and self.running_op is not None
            and _thread.get_ident() == self.main_ident
        ):
            try:
                self.capture.finish(self.running_op)
            except BaseException:  # the exit must happen whatever the capture does
                pass
        self.exit(status)

    def internal_error(self, exc: BaseException) -> NoReturn:
        try:
            import traceback

            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:
            text = repr(exc)
        self.diag(f"internal error, please report it:\n{text}")
        self.exit(EXIT_INTERNAL)

    def protocol_failure(self, exc: RemoteProtocolError) -> NoReturn:
        state = self.channel.state_at_read
        self.diag(
            f"protocol error ({exc.error_code}) while in state {state}: {exc}; "
            f"the last bytes received began with {self.channel.last_chunk[:120]!r}; "
            f"sending a fatal error and exiting with code {EXIT_PROTOCOL}"
        )
        self.channel.send_fatal(Error(exc.error_code, str(exc), fatal=True))
        self.exit(EXIT_PROTOCOL)

    def parent_died(self) -> NoReturn:
        self.diag(f"the parent process {self.ppid} died; exiting")
        self.exit(EXIT_PARENT_DIED)

    def channel_lost(self) -> None:
        """The client is gone while an op runs: interrupt it, kill children, exit soon."""
        if self.lost or self.forked:
            return  # in a forked child, the send fails with EOFError and that is all
        self.lost = True
        if self.running_op is None:
            self.exit(EXIT_CHANNEL_LOST)
        self.diag(f"the channel was lost while op {self.running_op} ran; interrupting it")
        self.cancel_requested = True
        self.signal_children(_signal.SIGKILL)
        _signal.pthread_kill(self.main_ident, _signal.SIGINT)
        self.input.finish()
        _thread.start_new_thread(self._exit_later, (LOST_GRACE,))

    def _exit_later(self, delay: float) -> None:
        _sleep(delay)
        self.diag(f"op still running {delay:g} s after the channel was lost; exiting")
        self.exit(EXIT_CHANNEL_LOST)

    def signal_children(self, signum: int) -> None:
        """Signal every process in our process group but ourselves."""
        if self.forked or not self.group_leader:
            return
        if self.subreaper and not has_children():
            # Every process of our group hangs below a child of ours (we are the
            # subreaper of our descendants): none, so one system call instead of a walk
            # of /proc (a millisecond or more, which every cancel would wait for).
            return
        for pid in group_members(self.pid):
            try:
                _kill(pid, signum)
            except OSError:
                pass

    def kill_descendants(self) -> None:
        """SIGKILL our process group and every descendant, whatever its group, and reap."""
        kill_descendants(self.pid, self.pid if self.group_leader else None)

    # -- fork() in user code -------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The child of a fork() in user code shares the channel: it must never speak on
        # it (a send raises ChannelLost at once) and never reads it (it has no I/O thread,
        # and it ends at the end of the user code, before the loop would read again).
        # The descriptors stay open: closing them could close a descriptor that user
        # code in the child has dup'ed or reused, and the client copes with a channel
        # that outlives the runner. Its fds 1 and 2 are still the capture pipes, so its
        # output is still captured.
        self.forked = True
        self.channel.broken = True

    def _child_exit(self, exc: BaseException | None) -> NoReturn:
        """End a forked child at the end of the user code, as Python would end it."""
        code = 0
        try:
            if isinstance(exc, SystemExit):
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code & 0xFF
                else:
                    code = 1
                    _write(2, f"{exc.code}\n".encode("utf-8", "replace"))
            elif exc is not None:
                code = 1
                text = self.executor.error_info(exc, 1 << 20)["traceback"]
                _write(2, text.encode("utf-8", "replace"))
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
        finally:
            _exit(code)

    # -- interrupts -----------------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        phase = self.phase
        if phase == RUNNING:
            self.interrupt_delivered = True
            limit = self.pending_limit
            if limit is not None:
                raise limit
            raise KeyboardInterrupt
        if phase == PROTECTED:
            self.deferred_interrupt = True
        # IDLE, PREPARING (seen at the start of RUNNING) and FINISHING: ignored.

    def interrupt(self) -> None:
        """Cancel the running op (from the I/O thread)."""
        if self.cancel_requested and not self.interrupt_delivered:
            return  # the last one has not landed yet: the redelivery sees to it
        self.cancel_requested = True
        ours = _getsignal(_SIGINT) is self._sigint_handler
        if ours or self.phase == RUNNING:
            # A handler of the user's must not run in our code (PROTECTED, FINISHING):
            # then the redelivery sends it once the code runs again.
            _signal.pthread_kill(self.main_ident, _signal.SIGINT)
            # The user's handler gets one SIGINT per cancel, as from one Ctrl-C.
            self.interrupt_delivered = not ours
        now = _monotonic()
        if now - self._interrupted_at >= INTERRUPT_COALESCE:
            # A flood of cancels walks /proc once per moment, not once per cancel.
            self._interrupted_at = now
            self.signal_children(_signal.SIGINT)

    def _redeliver_interrupt(self) -> None:
        # A SIGINT that arrives while the main thread ignores it (os.system() and
        # subprocess.call() with a shell do, during their wait) is lost. Until the handler
        # has raised once, send it again now and then: never twice after it raised, so
        # cleanup code after the KeyboardInterrupt is not interrupted a second time.
        # The children get it again too: one that was being spawned when the first came
        # (os.system() forks with SIGINT ignored until the child resets it) missed it, and
        # the main thread waits for that child.
        # Only while user code runs: a handler of the user's would raise in our code.
        if self.cancel_requested and not self.interrupt_delivered and self.phase == RUNNING:
            _signal.pthread_kill(self.main_ident, _signal.SIGINT)
            self.signal_children(_signal.SIGINT)
            if _getsignal(_SIGINT) is not self._sigint_handler:
                self.interrupt_delivered = True  # once, for a handler of the user's

    def _send_input_request(self, msg: InputRequest, written: Callable[[], None]) -> None:
        if _thread.get_ident() != self.main_ident:
            self._send_or_lose(msg)
            written()
            return
        previous = self.phase
        self.phase = PROTECTED
        try:
            self._send_or_lose(msg)
            written()
        finally:
            self.phase = previous
        if self.deferred_interrupt and previous == RUNNING:
            self.deferred_interrupt = False
            raise self.pending_limit or KeyboardInterrupt()

    def _send_or_lose(self, msg: Message) -> None:
        try:
            self.channel.send(msg)
        except ChannelLost:
            self.channel_lost()
            raise EOFError("the client closed the channel") from None

    # -- the main loop --------------------------------------------------------------------

    def serve(self) -> NoReturn:
        self._handshake()
        chan = self.channel
        while True:
            try:
                ev = chan.read_event()
            except RemoteProtocolError as exc:
                self.protocol_failure(exc)
            kind = type(ev)
            if kind is Exec or kind is Eval:
                self._run_op(ev)
            elif kind is Ping:
                self._send_or_exit(Pong(ev.token))
            elif kind is Cancel or kind is InputReply:
                pass  # for an op that already ended: harmless
            elif kind is Shutdown:
                self.exit(EXIT_OK)
            elif kind is ConnectionClosed:
                if not ev.clean:
                    self.diag(f"the channel closed in state {ev.state}")
                self.exit(EXIT_OK if ev.clean else EXIT_CHANNEL_LOST)
            else:
                self._other_message(ev, self._send_or_exit)

    def _send_or_exit(self, msg: Message) -> None:
        try:
            self.channel.send(msg)
        except ChannelLost as exc:
            self.diag(str(exc))
            self.exit(EXIT_CHANNEL_LOST)

    def _other_message(self, ev: Any, send: Any) -> None:
        if type(ev) is UnknownMessage:
            send(
                Error(
                    "unknown-kind",
                    f"unknown message kind {ev.kind!r}; this runner ({IMPL_NAME} "
                    f"{IMPL_VERSION}) speaks protocol {PROTOCOL_VERSION[0]}."
                    f"{PROTOCOL_VERSION[1]}; the message was ignored",
                )
            )
        elif type(ev) is Error:
            self.diag(f"the client reported an error: {ev.code}: {ev.message}")
            if ev.fatal:
                self.exit(EXIT_PROTOCOL)
        else:  # the state machine lets nothing else through; be loud if it ever does
            self.diag(f"ignored unexpected {ev!r:.200}")

    def _handshake(self) -> None:
        chan = self.channel
        deadline = _monotonic() + self.hello_timeout
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                self.diag(
                    f"no hello from the client within {self.hello_timeout:g} s; exiting "
                    f"with code {EXIT_HANDSHAKE_TIMEOUT} (is the client speaking protocol "
                    f"{PROTOCOL_VERSION[0]} on this channel?)"
                )
                self.exit(EXIT_HANDSHAKE_TIMEOUT)
            try:
                ev = chan.read_event(int(remaining * 1000) + 1)
            except RemoteProtocolError as exc:
                self.protocol_failure(exc)
            if ev is not NEED_DATA:
                break
        if type(ev) is ConnectionClosed:
            self.diag("the channel closed before the client sent hello")
            self.exit(EXIT_CHANNEL_LOST)
        if type(ev) is not Hello:  # only a fatal error gets past the state machine
            self._other_message(ev, self._send_or_exit)
            self.exit(EXIT_PROTOCOL)
        self._set_up(ev)
        v = sys.version_info
        self._send_or_exit(
            Welcome(
                PROTOCOL_VERSION,
                IMPL_NAME,
                IMPL_VERSION,
                "python",
                f"{v[0]}.{v[1]}.{v[2]}",
                self.pid,
                self.conn.max_frame,
                CAPABILITIES,
                self.limits.applied or None,
            )
        )
        self.capture.set_peer_limit(self.conn.peer_max_frame)
        # Orphans among our descendants (a double fork, a setsid daemon) become our
        # children instead of init's, so that exit() finds and kills them. Only user code
        # starts processes, so this can wait until the welcome is out (it costs ~0.6 ms).
        self.subreaper = become_subreaper()

    def _set_up(self, hello: Hello) -> None:
        """The hello's preload, then its limits: before the welcome and any user code.
        Either failing is a fatal error the client reports as a failed start."""
        from ._limits import LimitError, Limits

        for name in hello.preload:
            try:
                __import__(name)
            except BaseException as exc:  # anything the module raises, SystemExit too
                self._setup_failed(
                    "preload-failed",
                    f"preload: importing {name!r} failed:\n"
                    + self.executor.error_info(exc, self._value_limit())["traceback"],
                )
        try:
            self.limits = Limits(hello.limits)
            self.limits.apply()
        except LimitError as exc:
            self._setup_failed("limits-failed", f"limits: {exc}")
        self.capture.on_output_limit = self._output_limit_exceeded

    def _setup_failed(self, code: str, message: str) -> NoReturn:
        self.diag(message)
        self.channel.send_fatal(Error(code, message, fatal=True))
        self.exit(EXIT_SETUP_FAILED)

    # -- limits ---------------------------------------------------------------------------

    def _output_limit_exceeded(self) -> None:
        from ._limits import OutputLimitExceeded

        self._limit_exceeded(
            OutputLimitExceeded(
                f"the op wrote more than {self.limits.output_bytes} bytes to stdout and "
                "stderr; the rest was dropped"
            )
        )

    def _check_cpu(self) -> None:
        """The I/O thread's check of the op's CPU time (only with a cpu_seconds limit)."""
        if self.phase not in (RUNNING, PROTECTED):
            return
        if self._cpu_tripped:
            if _monotonic() - self._cpu_tripped_at > CPU_GRACE:
                self.diag(
                    f"op {self.running_op} went on {CPU_GRACE:g} s after its CPU limit "
                    "(the code swallowed CPULimitExceeded or ignores interrupts): killing "
                    "the runner"
                )
                self.kill_descendants()
                _kill(self.pid, _SIGKILL_NUMBER)
            return
        if self.limits.cpu_exceeded():
            from ._limits import CPULimitExceeded

            self._cpu_tripped = True
            self._cpu_tripped_at = _monotonic()
            self._limit_exceeded(
                CPULimitExceeded(f"the op used more than {self.limits.cpu_seconds:g} s of CPU time")
            )

    def _limit_exceeded(self, exc: BaseException) -> None:
        """Stop the running op with ``exc`` instead of KeyboardInterrupt (any thread),
        and its child processes: they are over the op's budget too (and, for the output
        limit, its writers, whose output would otherwise be charged to the next op)."""
        if self.pending_limit is None:
            self.pending_limit = exc  # first: the op's end may come before the rest
            self.interrupt()
            self.kill_descendants()

    # -- one op ---------------------------------------------------------------------------

    def _run_op(self, msg: Exec | Eval) -> None:
        # This is the round trip's path: it avoids calls and allocations where it can.
        op = msg.op
        chan = self.channel
        self.phase = PREPARING
        self.running_op = op
        self.cancel_requested = self.interrupt_delivered = self.deferred_interrupt = False
        self.pending_limit = None
        limits = self.limits
        if limits.cpu_seconds is not None:
            self._cpu_tripped = False
            limits.begin_op()
        # Input's state between ops is that of an op without stdin: set it up only if used.
        if type(msg) is Exec and (msg.stdin or msg.allow_stdin):
            with_input = True
            self.input.begin(op, msg.stdin, msg.allow_stdin)
        else:
            with_input = False
        self.capture.begin(op, limits.output_bytes)
        # Hand reading to the I/O thread (lock first: see _channel's theory of operation).
        chan.read_lock.release()
        with self._handoff:
            self._op_gen += 1
            self._op_active = True
            wake = self._io_sleeping
            self._io_sleeping = False
        if wake:
            wake_io(self)

        status, value, error = self._execute(msg)

        self.phase = FINISHING
        if limits.memory is not None:
            limits.room_for_us()  # the code may have kept all it could allocate
        if _getsignal(_SIGINT) is not self._sigint_handler:
            # User code set its own (or ignored SIGINT): it lasts for its op only, or no
            # later op could be cancelled. Put back before anything else, so that a
            # redelivered interrupt cannot reach the user's handler in our own code.
            _signal.signal(_SIGINT, self._sigint_handler)
        self.capture.finish(op)
        if limits.cpu_seconds is not None and not self._cpu_tripped and limits.cpu_exceeded():
            # Over, and no tick saw it (a child that reaped its own): the op still ends
            # in the limit's error.
            from ._limits import CPULimitExceeded

            self.pending_limit = CPULimitExceeded(
                f"the op used more than {limits.cpu_seconds:g} s of CPU time"
            )
        limit = self.pending_limit
        if limit is not None and (error is None or error["type"] != type(limit).__name__):
            # Crossed after the code ended (the output limit, seen in the final drain),
            # or the code swallowed it: the op still ends in the limit's error.
            status, value, error = (
                STATUS_ERROR,
                None,
                self.executor.error(limit, self._value_limit()),
            )
        if limits.cpu_seconds is not None:
            limits.end_op()
        if with_input:
            self.input.finish()
        self.input.repair()
        with self._handoff:
            self._op_active = False
            wake = chan.reader_is_io
        if wake:
            wake_io(self)  # the I/O thread holds read_lock: make it let go
        chan.read_lock.acquire()
        self.executor.forget_temporary()
        self.running_op = None
        self.phase = IDLE
        if self.lost:
            self.exit(EXIT_CHANNEL_LOST)
        try:
            # Within the client's object budget: an eval value was checked with room for
            # the rest of the done, and any other done holds a few dozen values at most.
            chan.send(Done(op, status, value, error), objects_checked=True)
        except LocalProtocolError as exc:
            # Too large for the client (a huge eval value is checked earlier; this is
            # the last line of defence): say so instead of failing the connection.
            self._send_or_exit(
                Done(
                    op,
                    STATUS_ERROR,
                    None,
                    {"type": "ValueError", "message": str(exc), "traceback": ""},
                )
            )
        except ChannelLost as exc:
            self.diag(str(exc))
            self.exit(EXIT_CHANNEL_LOST)
        if self.shutdown_requested:
            self.exit(EXIT_OK)

    def _execute(self, msg: Exec | Eval) -> tuple[str, Any, dict[str, str] | None]:
        ex = self.executor
        ns = ex.ns
        head: CodeType | None
        expr: CodeType | None
        try:
            if msg.variables:
                ns.update(msg.variables)
            if isinstance(msg, Exec):
                is_exec = True
                if msg.filename:
                    head, expr = ex.compile_code("exec", msg.code, msg.filename, True)
                else:
                    head, expr = ex.compile_code("exec", msg.code, f"<exec-{msg.op}>")
            else:
                is_exec = False
                head, expr = ex.compile_code("eval", msg.expr, f"<eval-{msg.op}>")
        except BaseException as exc:  # SyntaxError, ValueError (NUL), RecursionError, ...
            return STATUS_ERROR, None, self.executor.error(exc, self._value_limit())
        # The exceptions are never bound to a local that outlives its handler: the
        # traceback holds this frame, and that would make a reference cycle.
        try:
            try:
                if self.limits.memory is not None:
                    self.limits.limit_for_the_code()
                self.phase = RUNNING
                if self.cancel_requested:
                    raise self.pending_limit or KeyboardInterrupt()
                value = None
                if head is not None:
                    exec(head, ns)
                if expr is not None:
                    value = eval(expr, ns)
                    value = (
                        ex.exec_value(value, self._value_limit())
                        if is_exec
                        else ex.eval_value(value, self.conn.peer_max_frame)
                    )
                self.phase = FINISHING
                if self.forked:
                    self._child_exit(None)
                return STATUS_OK, value, None
            except BaseException as exc:
                self.phase = FINISHING
                return self._failed(exc)
        except KeyboardInterrupt as ki:  # landed in the handler above, before FINISHING
            self.phase = FINISHING
            return self._failed(ki)

    def _failed(self, exc: BaseException) -> tuple[str, Any, dict[str, str] | None]:
        if self.forked:
            self._child_exit(exc)
        if isinstance(exc, MemoryError):
            self.limits.room_for_us()  # room to format and send the error
        if type(exc) is KeyboardInterrupt and self.cancel_requested:
            return STATUS_CANCELLED, None, self.executor.error(exc, self._value_limit())
        return STATUS_ERROR, None, self.executor.error(exc, self._value_limit())

    def _value_limit(self) -> int:
        # In UTF-8 bytes, for each of the value, the message and the traceback: all three
        # together still fit in the client's frame.
        return max(1024, self.conn.peer_max_frame // 4)
