"""The session: :class:`Runner`, one protocol conversation with one runner.

Theory of operation
-------------------
A Runner speaks the protocol over a :class:`~execpy_trio._transport.Transport` and knows
nothing of processes: where the runner lives is its launcher's business, reached through a
:class:`~execpy_trio.launch.RunnerHandle`. Operations run one at a time, in FIFO order (a
``trio.StrictFIFOLock``); op ids strictly increase.

**One death path.** When the transport's reader stops (the runner closed the stream, broke
the protocol, the stream failed, we killed it or closed it), it calls
:meth:`Runner._decide_end` *before* it wakes anyone. That one call asks the handle how the
runner ended (waiting a bounded time for the exit status and the last diagnostics), builds
the one error that describes it (:class:`RunnerDied`, :class:`RemoteProtocolError`, or
``trio.ClosedResourceError`` if we closed it) and stores it. Every waiter woken afterwards
(an op's consumer, a ping, the next caller) raises that same error without awaiting
anything; :meth:`Runner.wait_closed` returns once it is known.

**Closing.** The supervising task (see :mod:`execpy_trio._open`) runs
:meth:`Runner._shutdown` when the runner is closed or its owner's scope is cancelled: a
running op is interrupted first (cancel, wait up to ``cancel_grace``, kill), then, unless
the close was cancelled, the polite ``shutdown`` (bounded by ``shutdown_timeout``), then
the stream is closed and the handle makes sure the runner is gone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from ._errors import RemoteProtocolError, RunnerDied
from ._operation import Operation
from ._transport import OPEN, PeerClosed, Transport, TransportBroken, TransportStatistics
from .protocol import STATUS_CANCELLED, Eval, Exec, LocalProtocolError, Shutdown

if TYPE_CHECKING:
    from ._options import RunnerOptions
    from ._results import ExecResult
    from .launch import RunnerHandle
    from .protocol import Message, Welcome

__all__ = ["Runner", "RunnerState", "RunnerStatistics"]

#: The states of a runner.
RunnerState = Literal["running", "dead", "closed"]

RUNNING: Final = "running"
DEAD: Final = "dead"
CLOSED: Final = "closed"

#: After the connection ends, how long to wait for the runner to end (to report its exit
#: status) before killing it; and again after the kill.
EXIT_WAIT: Final = 2.0
#: How long a sender that found the transport broken waits for the reader's verdict. The
#: verdict itself is bounded by twice EXIT_WAIT; this only guards against a bug.
VERDICT_WAIT: Final = 3 * EXIT_WAIT
#: After the process exits on its own during a session, how long the stream may stay open
#: (a child that inherited it) before the session breaks it.
STREAM_LINGER: Final = 0.5


@attrs.frozen
class RunnerStatistics:
    """A snapshot of a runner's counters."""

    state: RunnerState
    pid: int | None
    busy: bool
    tasks_waiting: int
    ops_started: int
    ops_completed: int
    ops_cancelled: int
    ops_lost: int
    transport: TransportStatistics


def _check_arguments(
    kind: str, text: object, stdin: object, variables: object, filename: object
) -> None:
    """A TypeError that names the argument of an exec or eval that has the wrong type."""
    what = "expr" if kind == "eval" else "code"
    for name, value, wanted in (
        (what, text, "a str"),
        ("stdin", stdin, "a str or None"),
        ("filename", filename, "a str or None"),
    ):
        if not (isinstance(value, str) or (value is None and name != what)):
            raise TypeError(f"{kind}: {name} must be {wanted}, not {type(value).__name__}")
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"{kind}: variables must be a mapping of names to plain data (a dict) or None, "
            f"not {type(variables).__name__}"
        )


class Runner:
    """A connection to one runner (a process, or any peer speaking the protocol).

    Get one from :func:`open_runner`, :func:`start_runner` or :func:`connect_runner`.
    """

    def __init__(self, handle: RunnerHandle, transport: Transport, options: RunnerOptions) -> None:
        self._handle = handle
        self._transport = transport
        #: The options this runner was started with.
        self.options = options
        self.cancel_grace = options.cancel_grace
        self.shutdown_timeout = options.shutdown_timeout
        self._op_lock = trio.StrictFIFOLock()
        self._next_op = 1
        self._state: RunnerState = RUNNING
        self._kill_reason: str | None = None
        self._killed = False
        # The one error for "the connection ended", decided once (see the module docstring).
        self._death: BaseException | None = None
        self._death_known = trio.Event()
        self._gone = trio.Event()
        self._close_requested = trio.Event()
        self._forceful_close = False
        self._finished = trio.Event()
        self._current: Operation | None = None
        self._ops_started = 0
        self._ops_completed = 0
        self._ops_cancelled = 0
        self._ops_lost = 0

    # -- information ----------------------------------------------------------------------

    @property
    def welcome(self) -> Welcome:
        """The runner's handshake answer: version, implementation, language, pid, ..."""
        welcome = self._transport.welcome
        assert welcome is not None, "a Runner exists only after the handshake"
        return welcome

    @property
    def pid(self) -> int:
        """The runner's process id: as it reported it (remote for ``ssh``-style commands),
        translated to this host's for a sandboxed runner (its own PID namespace)."""
        return self._handle.local_pid(self.welcome.pid)

    @property
    def handle(self) -> RunnerHandle:
        """The launcher's handle of this runner (where it lives)."""
        return self._handle

    @property
    def process(self) -> trio.Process | None:
        """The runner's local OS process, when a local launcher started it; else None."""
        process: trio.Process | None = getattr(self._handle, "process", None)
        return process

    @property
    def state(self) -> RunnerState:
        """One of "running", "dead" (it died, broke the protocol, or was killed) or "closed"."""
        if self._state == RUNNING and self._transport.state != OPEN:
            return DEAD
        return self._state

    @property
    def is_alive(self) -> bool:
        return self.state == RUNNING

    @property
    def returncode(self) -> int | None:
        """The exit status once the runner has ended (negative: killed by a signal)."""
        return self._handle.returncode

    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the runner wrote to its own stderr (its diagnostics)."""
        return self._handle.stderr_tail()

    @property
    def killed(self) -> bool:
        """Whether this client killed the runner (:meth:`kill`, or an op that ignored its
        cancel past ``cancel_grace``), as opposed to it ending on its own or being closed."""
        return self._killed

    def resident_memory(self) -> int | None:
        """Bytes of RAM the runner's process uses now (its resident set), or None when
        the launcher cannot see it (no local process, or it has ended)."""
        welcome = self._transport.welcome
        if welcome is None or self.state != RUNNING:
            return None
        return self._handle.resident_memory(self._handle.local_pid(welcome.pid))

    def statistics(self) -> RunnerStatistics:
        welcome = self._transport.welcome
        return RunnerStatistics(
            state=self.state,
            pid=self._handle.local_pid(welcome.pid) if welcome else None,
            busy=self._current is not None,
            tasks_waiting=self._op_lock.statistics().tasks_waiting,
            ops_started=self._ops_started,
            ops_completed=self._ops_completed,
            ops_cancelled=self._ops_cancelled,
            ops_lost=self._ops_lost,
            transport=self._transport.statistics(),
        )

    def __repr__(self) -> str:
        welcome = self._transport.welcome
        return f"<Runner pid={self.pid if welcome else '?'} state={self.state}>"

    # -- operations -----------------------------------------------------------------------

    async def exec(
        self,
        code: str,
        *,
        stdin: str | None = None,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
    ) -> ExecResult:
        """Run ``code`` in the runner's namespace and return its :class:`ExecResult`.

        ``variables`` are bound in the namespace first (plain msgpack data). ``filename``
        is the name tracebacks show for the code (default ``<exec-N>``); its lines come
        from ``code``, not from a file. ``stdin`` is
        canned input; ``input()`` raises EOFError once it is used up, and at once without
        it: exec never waits for input (use :meth:`exec_stream` to answer interactively).
        An error in the code is a result with status "error", not an exception (call
        ``.check()``). The result keeps at most ``result_output_limit`` bytes of output
        (``result.truncated`` says when it was cut). Raises RunnerDied if the runner dies,
        RemoteProtocolError if it breaks the protocol, trio.ClosedResourceError if the
        runner was closed.

        Cancellation: waits its turn in FIFO order and can be cancelled while waiting
        (nothing ran). Once sent, cancelling interrupts the code in the runner: the client
        sends ``cancel`` and waits, shielded, up to ``cancel_grace`` seconds for the
        cancelled completion, killing the runner if none comes; then trio.Cancelled
        propagates. No timeout of its own: use ``trio.move_on_after``/``fail_after``.
        """
        # A plain coroutine, not the exec_stream context manager: at tens of microseconds
        # per round trip, the layers show.
        op = await self._start(
            "exec", code, variables, allow_stdin=False, stdin=stdin, filename=filename
        )
        await self._collect(op)
        return op.result

    async def eval(self, expr: str, *, variables: Mapping[str, Any] | None = None) -> Any:
        """Evaluate the expression ``expr`` and return its value as plain data (what
        msgpack can carry: None, bool, int, float, str, bytes, lists, dicts).

        Raises CodeError (with ``.result``) if evaluating raised or the value cannot be
        sent as plain data; output the expression prints is discarded. Otherwise the same
        errors, cancellation and timeout behaviour as :meth:`exec`.
        """
        op = await self._start("eval", expr, variables)
        await self._collect(op)
        op.result.check()
        return op.value

    @contextlib.asynccontextmanager
    async def exec_stream(
        self,
        code: str,
        *,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
    ) -> AsyncIterator[Operation]:
        """Run ``code`` with live output and interactive input; yields an :class:`Operation`.

        ``variables`` and ``filename`` are as for :meth:`exec`.

        Iterate the operation for :class:`Output` and :class:`InputRequest` events (one
        task at a time: a second gets trio.BusyResourceError); answer input requests with
        ``send_input``/``send_eof``. ``op.result`` is set when the iteration ends; the
        events deliver all the output, the result keeps up to ``result_output_limit``
        bytes. Leaving the block before the completion (normally or by an exception)
        cancels the op in the runner, as below, and ``op.result`` then has status
        "cancelled".

        Backpressure: while you do not read events, the runner's output waits (bounded
        memory). Cancellation: as for :meth:`exec`: cancel is sent, output is drained
        (and kept in ``op.result``) for up to ``cancel_grace`` seconds while waiting for
        the completion, and the runner is killed if none comes (then leaving the block
        normally raises RunnerDied).
        """
        op = await self._start("exec", code, variables, allow_stdin=True, filename=filename)
        try:
            try:
                yield op
            except BaseException:
                if not op.finished:
                    await op.abandon()
                raise
            if not op.finished:
                await op.abandon()
                if op.state == "lost":
                    raise self.lost_error().with_traceback(None)
        finally:
            self._end(op)

    async def ping(self) -> float:
        """Round trip time of a ping to the runner, in seconds. Works while an op runs
        (the runner answers pings from its I/O thread), unless the op's output is not
        being read (backpressure holds the pong back).

        No timeout of its own: wrap it in ``trio.fail_after``. Cancellation: safe (a late
        pong is ignored). Raises RunnerDied if the connection breaks.
        """
        self._check_usable("ping")
        try:
            return await self._transport.ping()
        except TransportBroken:
            pass  # raised below, outside the handler: the shared error stays as built
        except trio.ClosedResourceError:
            self._check_usable("ping")
            raise
        raise (await self.verdict()).with_traceback(None)

    async def _start(
        self,
        kind: str,
        text: str,
        variables: Mapping[str, Any] | None,
        *,
        allow_stdin: bool = False,
        stdin: str | None = None,
        filename: str | None = None,
    ) -> Operation:
        """Wait for our turn, register the op and send its request; return it running.

        The caller then holds the op lock and must call :meth:`_end` on every path.
        Cancellation: a cancel point, cancellable while waiting its turn (FIFO); raises
        Cancelled only before anything was written: then there is nothing to undo. Not a
        schedule point when the runner is free: the caller's wait for the answer is one.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if type(text) is not str or not (
            (stdin is None or type(stdin) is str)
            and (variables is None or isinstance(variables, Mapping))
            and (filename is None or type(filename) is str)
        ):
            _check_arguments(kind, text, stdin, variables, filename)
        lock = self._op_lock
        try:
            lock.acquire_nowait()  # fails also when others wait: they go first (FIFO)
        except trio.WouldBlock:
            await lock.acquire()
        except RuntimeError:  # this very task holds it: waiting would be waiting on itself
            raise RuntimeError(
                f"cannot start {kind} on this runner: this task is already running "
                f"{self._current.description if self._current else 'an op'} on it (an op "
                "inside an exec_stream block?); ops on one runner run one at a time: finish "
                "the block first, or use another runner"
            ) from None
        try:
            self._check_usable(kind)
            transport = self._transport
            if transport.state != OPEN:
                raise (await self.verdict()).with_traceback(None)
            op_id = self._next_op
            self._next_op += 1
            vars_ = dict(variables) if variables is not None else None
            if kind == "exec":
                msg: Message = Exec(op_id, text, allow_stdin, stdin, vars_, filename or None)
            else:
                msg = Eval(op_id, text, vars_)
            op = Operation(
                self, op_id, kind, text, transport.open_op(op_id), self.options.result_output_limit
            )
            self._current = op  # before sending: a failed send is reported for this op
            try:
                await self._send(msg, reply_follows=True)
            except BaseException:
                self._current = None
                transport.close_op(op_id)
                raise
        except BaseException:
            lock.release()
            raise
        self._ops_started += 1
        return op

    async def _collect(self, op: Operation) -> None:
        """Run ``op`` to its end for exec and eval; abandon it if we are interrupted."""
        try:
            await op.collect()
        except BaseException:
            if not op.finished:
                await op.abandon()
            raise
        finally:
            self._end(op)

    def _end(self, op: Operation) -> None:
        """The op is over for this client (finished, abandoned or lost): count it, stop
        routing it and let the next caller in."""
        state = op.state
        if state == "completed":
            self._ops_completed += 1
            if op.completion_status == STATUS_CANCELLED:
                self._ops_cancelled += 1
        elif state == "lost":
            self._ops_lost += 1
        self._current = None
        self._transport.close_op(op.op_id)
        op.release()
        self._op_lock.release()

    # -- what operations need (OpHost) ----------------------------------------------------

    async def send_for(self, op: Operation, msg: Message) -> None:
        await self._send(msg)

    async def _send(self, msg: Message, *, reply_follows: bool = False) -> None:
        try:
            await self._transport.send(msg, reply_follows=reply_follows)
            return
        except TransportBroken:
            pass  # raised below, outside the handler: the shared error stays as built
        except trio.ClosedResourceError:
            self._check_usable(f"send {msg.KIND!r}")
            raise
        raise (await self.verdict()).with_traceback(None)

    def lost_error(self) -> BaseException:
        """The one error for "the connection ended" (known before any waiter wakes)."""
        death = self._death
        if death is None:  # pragma: no cover - the transport wakes nobody before the verdict
            return trio.ClosedResourceError("the connection to the runner ended")
        return death

    async def verdict(self) -> BaseException:
        """The error for a broken connection, for a sender that found it broken before
        the reader's verdict was in (bounded; usually it already is)."""
        if self._death is None:
            with trio.move_on_after(VERDICT_WAIT):
                await self._death_known.wait()
        return self.lost_error()

    # -- death ----------------------------------------------------------------------------

    async def _decide_end(self) -> None:
        """Called once by the transport's reader when it stops, before it wakes anyone:
        decide how the runner ended, and store the one error that says so."""
        handle = self._handle
        handle.stream_ended()
        try:
            death = await self._diagnose()
            if self._death is None:  # a close may have decided while we diagnosed
                self._death = death
        finally:
            if self._death is None:  # pragma: no cover - cancelled mid-diagnosis
                self._death = trio.ClosedResourceError("the connection to the runner ended")
            if self._state == RUNNING:
                self._state = DEAD
            self._death_known.set()
            if self._state == DEAD:
                self._gone.set()

    async def _diagnose(self) -> BaseException:
        op = self._current
        running = op.description if op is not None and not op.finished else None
        if self._state == CLOSED:
            return self._closed_error(running)
        handle = self._handle
        failure = self._transport.failure
        if isinstance(failure, RemoteProtocolError):
            handle.kill()  # unusable: stop it now rather than at close
            with trio.move_on_after(EXIT_WAIT):
                await handle.wait()  # so that wait_closed() means it is gone
            exc = RemoteProtocolError(
                f"{f'while {running} was running: ' if running else ''}{failure}; this "
                "runner is unusable now (it was stopped): start a new one",
                error_code=failure.error_code,
            )
            exc.__cause__ = failure
            return exc
        reason = self._kill_reason
        if reason is None:
            if isinstance(failure, PeerClosed):
                reason = "it closed the connection"
            elif failure is not None:
                reason = f"the connection failed ({failure})"
            else:
                reason = "the connection ended"
        with trio.move_on_after(EXIT_WAIT) as waited:
            await handle.wait()
        if waited.cancelled_caught:
            reason += " but did not exit, so the client killed it"
            handle.kill()
            with trio.move_on_after(EXIT_WAIT):
                await handle.wait()
        welcome = self._transport.welcome
        died = RunnerDied(
            pid=handle.local_pid(welcome.pid) if welcome else handle.pid,
            returncode=handle.returncode,
            stderr_tail=handle.stderr_tail(),
            op=running,
            reason=reason,
        )
        died.__cause__ = failure
        return died

    def _closed_error(self, running: str | None) -> trio.ClosedResourceError:
        return trio.ClosedResourceError(
            f"this runner was closed{f' while {running} was running' if running else ''}; "
            "start a new one"
        )

    async def _watch_handle(self) -> None:
        """The runner ended on its own (its process exited): if the stream stays open
        (a child inherited it), do not wait for it forever."""
        await self._handle.wait()
        with trio.move_on_after(STREAM_LINGER):
            await self._transport.reader_done.wait()
        if not self._transport.reader_done.is_set():
            if self._kill_reason is None:
                self._kill_reason = "it exited, but a process it started kept the connection open"
            await self._transport.abort(PeerClosed("exited", clean=False))

    # -- killing and closing --------------------------------------------------------------

    def _check_usable(self, doing: str) -> None:
        if self._state == CLOSED:
            raise trio.ClosedResourceError(
                f"cannot {doing}: this runner was closed; start a new one"
            )
        if self._death is not None:
            raise self._death.with_traceback(None)

    async def kill(self, reason: str = "the client killed it") -> None:
        """Kill the runner now (the launcher's policy: for a local process, SIGKILL to its
        process group) and break the connection.

        Any running op fails with RunnerDied (``reason`` says why). Returns once the
        runner's end is recorded (bounded: its exit is awaited at most a few seconds);
        shielded, so it finishes even when cancelled. Use :meth:`aclose` for an orderly
        shutdown.
        """
        if self._state == RUNNING:
            self._state = DEAD
            self._kill_reason = reason
            self._killed = True
        self._handle.kill()
        with trio.CancelScope(shield=True):
            await self._transport.abort(PeerClosed("killed", clean=False))
            if self._transport.reader_started:
                with trio.move_on_after(VERDICT_WAIT):
                    await self._death_known.wait()

    async def wait_closed(self) -> None:
        """Return once the runner has ended, whatever the reason (it died, was killed, or
        was closed and is gone). Does not close it. Cancellation: safe; no timeout of its
        own."""
        await self._gone.wait()

    async def aclose(self) -> None:
        """Shut the runner down and wait until it is gone (idempotent).

        A running op is interrupted first (cancel, up to ``cancel_grace``, then kill).
        Then ``shutdown`` is sent and the runner gets ``shutdown_timeout`` seconds to exit
        before it is terminated and killed, each step bounded. When aclose is called in a
        cancelled scope, the polite part is skipped: the runner is killed at once.
        Shielded: completes even when the caller is cancelled (and does not raise
        Cancelled). An op running in another task is interrupted: its caller gets the
        "cancelled" result, or RunnerDied if the runner had to be killed for ignoring the
        cancel.
        """
        if trio.current_effective_deadline() == -math.inf:
            self._forceful_close = True
        self._close_requested.set()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    async def _shutdown(self) -> None:
        """The end of the session; always bounded; called shielded by the supervisor."""
        forceful = self._forceful_close
        transport = self._transport
        op = self._current
        if op is not None and not op.finished and self.state == RUNNING:
            await op.abandon(by_session=True)
        was_usable = self.state == RUNNING
        if not was_usable and transport.reader_started and not self._death_known.is_set():
            # The connection ended on its own and the reader is still deciding why: that
            # verdict, not "closed", is what the waiters must get.
            with trio.move_on_after(VERDICT_WAIT):
                await self._death_known.wait()
        if self._state != CLOSED:
            running = op.description if op is not None and not op.finished else None
            self._state = CLOSED
            if self._death is None:
                self._death = self._closed_error(running)
        transport.drop_ops()
        if was_usable and not forceful:
            with trio.move_on_after(self.shutdown_timeout):
                try:
                    await transport.send(Shutdown())
                    await self._handle.wait()
                except (TransportBroken, trio.ClosedResourceError, LocalProtocolError):
                    pass
        await transport.aclose()
        if transport.reader_started:
            with trio.move_on_after(VERDICT_WAIT):
                await transport.reader_done.wait()
        await self._handle.close(wait=0 if forceful else min(self.shutdown_timeout, 0.5))
        self._death_known.set()
        self._gone.set()
