"""The Trio client: start a runner, run code in it, stream its output, cancel it.

Three ways to get a :class:`Runner`:

* ``async with open_runner(...) as runner`` spawns ``python -m execpy_trio.runner`` (or your
  ``command``) and shuts it down when the block ends;
* ``runner = await start_runner(nursery, ...)`` does the same inside a nursery you own;
  the runner lives until ``await runner.aclose()`` or until that nursery is cancelled;
* ``async with connect_runner(stream) as runner`` speaks the protocol over a stream that
  is already connected to a runner (tests, custom transports); closing it closes the
  stream.

Operations run one at a time per runner; concurrent callers wait their turn in FIFO order.
Cancellation is structural: when the caller's cancel scope fires during an operation, the
client sends ``cancel``, waits (shielded, at most ``cancel_grace`` seconds) for the
cancelled completion while draining the op's output, and, if none comes, kills the runner.
The caller then sees ``trio.Cancelled`` as usual; the runner is still usable unless it had
to be killed.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ._errors import (
    CodeError,
    OperationRejected,
    RemoteProtocolError,
    RunnerDied,
    RunnerStartError,
    raise_unwrapped,
)
from ._transport import (
    OPEN,
    OpChannel,
    PeerClosed,
    Transport,
    TransportBroken,
    TransportStatistics,
)
from .protocol import (
    ABSOLUTE_MAX_FRAME,
    DEFAULT_MAX_FRAME,
    MIN_MAX_FRAME,
    PROTOCOL_VERSION,
    STATUS_CANCELLED,
    STATUS_OK,
    Cancel,
    Done,
    Error,
    Eval,
    Exec,
    Hello,
    InputReply,
    LocalProtocolError,
    Message,
    Shutdown,
    Welcome,
)
from .protocol import InputRequest as _InputRequestMsg
from .protocol import Output as _OutputMsg

if TYPE_CHECKING:
    from trio.abc import Stream

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "ErrorInfo",
    "ExecResult",
    "InputRequest",
    "Operation",
    "Output",
    "Runner",
    "RunnerStatistics",
    "connect_runner",
    "open_runner",
    "start_runner",
]

#: The default runner command (``--fd N`` or ``--stdio`` is added according to the mode).
DEFAULT_COMMAND: Final = (sys.executable, "-m", "execpy_trio.runner")
#: How many lines of the runner's own stderr are kept for error messages.
STDERR_TAIL_LINES: Final = 50
#: How many characters of one line of the runner's own stderr are kept (its end). A peer
#: may write without newlines: without a cap, memory and the re-joining of the unfinished
#: line would grow without bound.
STDERR_LINE_MAX: Final = 4096
#: After the connection ends, how long to wait for the runner process to exit (to report
#: its exit status) before killing it.
EXIT_WAIT: Final = 2.0
#: After the process exits, how long to wait for the rest of its stderr.
STDERR_WAIT: Final = 0.5

# Runner states.
RUNNING: Final = "running"
DEAD: Final = "dead"
CLOSED: Final = "closed"


# --- results and events --------------------------------------------------------------


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
    expression statement (or None); ``stdout``/``stderr`` everything the code wrote
    (decoded as UTF-8 with errors replaced); ``error`` the exception, for status "error".
    """

    status: str
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def check(self) -> ExecResult:
        """Return self if the status is "ok", else raise :class:`CodeError` carrying it."""
        if self.status != STATUS_OK:
            raise CodeError(self)
        return self


def _decode_all(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _joined(chunks: list[bytes]) -> str:
    if not chunks:
        return ""
    if len(chunks) == 1:
        return chunks[0].decode("utf-8", "replace")
    return b"".join(chunks).decode("utf-8", "replace")


_new_decoder: Final = codecs.getincrementaldecoder("utf-8")


@attrs.frozen
class Output:
    """Bytes the code wrote to ``stream`` ("stdout" or "stderr"), in order.

    ``text`` is the data decoded as UTF-8 (errors replaced). Inside an Operation the
    decoding is incremental per stream, so a character split across two chunks appears
    whole in the second chunk's text.
    """

    stream: str
    data: bytes
    text: str = attrs.field(
        default=attrs.Factory(lambda self: _decode_all(self.data), takes_self=True)
    )


@attrs.frozen
class InputRequest:
    """The code is waiting for a line of input (``input()``, or ``getpass`` when
    ``password`` is True). Answer with :meth:`Operation.send_input` or
    :meth:`Operation.send_eof`."""

    prompt: str = ""
    password: bool = False


@attrs.frozen
class RunnerStatistics:
    """A snapshot of a runner's counters."""

    state: str
    pid: int | None
    busy: bool
    tasks_waiting: int
    ops_started: int
    ops_completed: int
    ops_cancelled: int
    transport: TransportStatistics


# --- operations ------------------------------------------------------------------------


def _describe(op: int, kind: str, text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    if len(first) > 60 or "\n" in text.strip():
        first = first[:57] + "..."
    return f"op {op} ({kind} {first!r})"


class Operation:
    """One running operation, from :meth:`Runner.exec_stream`.

    Iterate it (``async for event in op``) to get :class:`Output` and
    :class:`InputRequest` events as they happen; iteration ends after the completion, and
    then :attr:`result` holds the :class:`ExecResult`.
    """

    def __init__(
        self, runner: Runner, op_id: int, kind: str, text: str, channel: OpChannel
    ) -> None:
        self._runner = runner
        #: The protocol op id.
        self.op_id = op_id
        self._kind = kind
        self._text = text
        self._channel = channel
        self._chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        # Made on first use: exec and eval never need them.
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._awaiting_input = False
        self._finished = False
        # The completion; the result is built from it when first asked for (joining and
        # decoding all the output is wasted on a stream consumer that never looks).
        self._done: Done | None = None
        self._result: ExecResult | None = None
        self._raw_value: Any = None

    @property
    def description(self) -> str:
        """A short description, used in error messages."""
        return _describe(self.op_id, self._kind, self._text)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def result(self) -> ExecResult:
        """The completion. Raises RuntimeError if the operation has not finished yet."""
        result = self._result
        if result is None:
            done = self._done
            if done is None:
                raise RuntimeError(
                    f"{self.description} has not finished: iterate the operation to the end "
                    "(or leave the exec_stream block, which cancels it) before reading .result"
                )
            error = None
            if done.error is not None:
                error = ErrorInfo(
                    done.error["type"], done.error["message"], done.error["traceback"]
                )
            result = self._result = ExecResult(
                done.status,
                done.value,
                _joined(self._chunks["stdout"]),
                _joined(self._chunks["stderr"]),
                error,
            )
        return result

    def __aiter__(self) -> Operation:
        return self

    async def __anext__(self) -> Output | InputRequest:
        """The next event.

        Raises RunnerDied if the runner dies, RemoteProtocolError if it breaks the
        protocol, OperationRejected if it refused the op. Cancellation: always a cancel
        point, and the event being waited for is not lost (it stays queued); leaving the
        exec_stream block cancels the op in the runner. A schedule point when it waits;
        events already queued (at most ``op_buffer``) are handed out without yielding.
        """
        if self._finished:
            raise StopAsyncIteration
        while True:
            try:
                msg = await self._channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise await self._runner._connection_lost(self.description) from None
            event = self._absorb(msg)
            if event is not None:
                return event
            if self._finished:
                raise StopAsyncIteration

    async def _collect(self) -> None:
        """Consume messages until the completion, keeping output only for the result: the
        loop of exec and eval, which show no events.

        Raises as ``__anext__``; a cancel point (and a schedule point while it waits).
        """
        channel = self._channel
        chunks = self._chunks
        while not self._finished:
            try:
                msg = await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise await self._runner._connection_lost(self.description) from None
            if type(msg) is _OutputMsg:
                chunks[msg.stream].append(msg.data)
            elif type(msg) is _InputRequestMsg:  # pragma: no cover - allow_stdin is False
                self._awaiting_input = True
                await self.send_eof()
            else:
                self._absorb(msg)

    def _absorb(self, msg: Message) -> Output | InputRequest | None:
        kind = type(msg)
        if kind is _OutputMsg:
            assert isinstance(msg, _OutputMsg)
            stream = msg.stream
            self._chunks[stream].append(msg.data)
            decoder = self._decoders.get(stream)
            if decoder is None:
                decoder = self._decoders[stream] = _new_decoder("replace")
            return Output(stream, msg.data, decoder.decode(msg.data))
        if kind is _InputRequestMsg:
            assert isinstance(msg, _InputRequestMsg)
            self._awaiting_input = True
            return InputRequest(msg.prompt, msg.password)
        if kind is Done:
            assert isinstance(msg, Done)
            self._finish(msg)
            return None
        if kind is Error:
            assert isinstance(msg, Error)
            # A rejection: the runner did not run the op (no completion follows).
            self._reject()
            raise OperationRejected(self.op_id, msg.code, msg.message)
        return None  # pragma: no cover - the transport routes nothing else here

    def _killed(self, reason: str) -> None:
        """The runner was killed for not completing this cancelled op: say so in .result
        (with the output that came), for a caller whose cancel scope ate the Cancelled."""
        self._result = ExecResult(
            STATUS_CANCELLED,
            None,
            _joined(self._chunks["stdout"]),
            _joined(self._chunks["stderr"]),
            ErrorInfo("RunnerDied", reason, ""),
        )

    def _reject(self) -> None:
        self._finished = True
        self._result = ExecResult(STATUS_CANCELLED)

    def _finish(self, msg: Done) -> None:
        self._awaiting_input = False
        self._finished = True
        self._done = msg
        self._raw_value = msg.value
        self._runner._ops_completed += 1
        if msg.status == STATUS_CANCELLED:
            self._runner._ops_cancelled += 1

    async def send_input(self, text: str) -> None:
        """Answer the pending InputRequest with ``text`` (one line; a trailing newline is
        optional and removed, as ``input()`` would).

        Raises LocalProtocolError if no input request is pending. Cancellation: may be
        cancelled before the reply is written (then nothing was sent); a reply is never
        half-written.
        """
        if text.endswith("\n"):
            text = text[:-1]
        await self._reply(text)

    async def send_eof(self) -> None:
        """Answer the pending InputRequest with end of input: ``input()`` raises EOFError.

        Same errors and cancellation behaviour as :meth:`send_input`.
        """
        await self._reply(None)

    async def cancel(self) -> None:
        """Ask the runner to interrupt the code, and keep the operation open.

        Unlike leaving the block, this does not wait: keep iterating to receive the rest
        of the output and the completion (normally status "cancelled"; "ok" or "error" if
        the code finished first). Harmless after the completion. Cancellation: may be
        cancelled before the request is written (then nothing was sent).
        """
        if not self._finished:
            await self._runner._send(Cancel(self.op_id), self)

    async def _reply(self, text: str | None) -> None:
        if self._finished:
            raise LocalProtocolError(
                f"{self.description} has already finished; there is no input to answer"
            )
        if not self._awaiting_input:
            raise LocalProtocolError(
                f"{self.description} has no pending input request: answer only after an "
                "InputRequest event, once per request"
            )
        await self._runner._send(InputReply(self.op_id, text), self)
        self._awaiting_input = False


# --- the runner ------------------------------------------------------------------------


class Runner:
    """A connection to one runner process (or any peer speaking the protocol).

    Get one from :func:`open_runner`, :func:`start_runner` or :func:`connect_runner`.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        process: trio.Process | None,
        cancel_grace: float,
        shutdown_timeout: float,
        handshake_timeout: float,
        kill_group: bool,
    ) -> None:
        self._transport = transport
        #: The runner's OS process, when this client spawned it.
        self.process = process
        self.cancel_grace = cancel_grace
        self.shutdown_timeout = shutdown_timeout
        self.handshake_timeout = handshake_timeout
        self._kill_group = kill_group
        self._op_lock = trio.StrictFIFOLock()
        self._next_op = 1
        self._state = RUNNING
        self._kill_reason: str | None = None
        self._stderr_lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_partial = ""
        self._stderr_done = trio.Event()
        self._close_requested = trio.Event()
        self._finished = trio.Event()
        self._busy = False
        self._ops_started = 0
        self._ops_completed = 0
        self._ops_cancelled = 0
        if process is None:
            self._stderr_done.set()

    # -- information ----------------------------------------------------------------------

    @property
    def welcome(self) -> Welcome:
        """The runner's handshake answer: version, implementation, language, pid, ..."""
        welcome = self._transport.welcome
        assert welcome is not None, "a Runner exists only after the handshake"
        return welcome

    @property
    def pid(self) -> int:
        """The runner's process id as it reported it (remote for ``ssh``-style commands)."""
        return self.welcome.pid

    @property
    def state(self) -> str:
        """One of "running", "dead" (it died, broke the protocol, or was killed) or "closed"."""
        if self._state == RUNNING and self._transport.state != OPEN:
            return DEAD
        return self._state

    @property
    def is_alive(self) -> bool:
        return self.state == RUNNING

    @property
    def returncode(self) -> int | None:
        """The process's exit status once it has exited (negative: killed by a signal)."""
        return self.process.returncode if self.process is not None else None

    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the runner wrote to its own stderr (its diagnostics)."""
        lines = tuple(self._stderr_lines)
        if self._stderr_partial:
            lines = (*lines, self._stderr_partial)
        return lines[-STDERR_TAIL_LINES:]

    def statistics(self) -> RunnerStatistics:
        return RunnerStatistics(
            state=self.state,
            pid=self._transport.welcome.pid if self._transport.welcome else None,
            busy=self._busy,
            tasks_waiting=self._op_lock.statistics().tasks_waiting,
            ops_started=self._ops_started,
            ops_completed=self._ops_completed,
            ops_cancelled=self._ops_cancelled,
            transport=self._transport.statistics(),
        )

    def __repr__(self) -> str:
        pid = self._transport.welcome.pid if self._transport.welcome else "?"
        return f"<Runner pid={pid} state={self.state}>"

    # -- operations -----------------------------------------------------------------------

    async def exec(
        self,
        code: str,
        *,
        stdin: str | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> ExecResult:
        """Run ``code`` in the runner's namespace and return its :class:`ExecResult`.

        ``variables`` are bound in the namespace first (plain msgpack data). ``stdin`` is
        canned input; ``input()`` raises EOFError once it is used up, and at once without
        it: exec never waits for input (use :meth:`exec_stream` to answer interactively).
        An error in the code is a result with status "error", not an exception (call
        ``.check()``). Raises RunnerDied if the runner dies, RemoteProtocolError if it
        breaks the protocol, trio.ClosedResourceError if the runner was closed.

        Cancellation: waits its turn in FIFO order and can be cancelled while waiting
        (nothing ran). Once sent, cancelling interrupts the code in the runner: the client
        sends ``cancel`` and waits, shielded, up to ``cancel_grace`` seconds for the
        cancelled completion, killing the runner if none comes; then trio.Cancelled
        propagates. No timeout of its own: use ``trio.move_on_after``/``fail_after``.
        """
        # A plain coroutine, not the exec_stream context manager: at tens of microseconds
        # per round trip, the layers show.
        op = await self._start("exec", code, variables, allow_stdin=False, stdin=stdin)
        try:
            await op._collect()
        except BaseException:
            if not op.finished:
                await self._abandon(op)
            raise
        finally:
            self._end(op)
        return op.result

    async def eval(self, expr: str, *, variables: Mapping[str, Any] | None = None) -> Any:
        """Evaluate the expression ``expr`` and return its value as plain data (what
        msgpack can carry: None, bool, int, float, str, bytes, lists, dicts).

        Raises CodeError (with ``.result``) if evaluating raised or the value cannot be
        sent as plain data; output the expression prints is discarded. Otherwise the same
        errors, cancellation and timeout behaviour as :meth:`exec`.
        """
        op = await self._start("eval", expr, variables)
        try:
            await op._collect()
        except BaseException:
            if not op.finished:
                await self._abandon(op)
            raise
        finally:
            self._end(op)
        op.result.check()
        return op._raw_value

    @contextlib.asynccontextmanager
    async def exec_stream(
        self, code: str, *, variables: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Operation]:
        """Run ``code`` with live output and interactive input; yields an :class:`Operation`.

        Iterate the operation for :class:`Output` and :class:`InputRequest` events; answer
        input requests with ``send_input``/``send_eof``. ``op.result`` is set when the
        iteration ends. Leaving the block before the completion (normally or by an
        exception) cancels the op in the runner, as below, and ``op.result`` then has
        status "cancelled".

        Backpressure: while you do not read events, the runner's output waits (bounded
        memory). Cancellation: as for :meth:`exec`: cancel is sent, output is drained
        (and kept in ``op.result``) for up to ``cancel_grace`` seconds while waiting for
        the completion, and the runner is killed if none comes (then leaving the block
        normally raises RunnerDied).
        """
        op = await self._start("exec", code, variables, allow_stdin=True)
        try:
            try:
                yield op
            except BaseException:
                if not op.finished:
                    await self._abandon(op)
                raise
            if not op.finished:
                await self._abandon(op)
                if not op.finished:
                    raise await self._connection_lost(op.description)
        finally:
            self._end(op)

    async def ping(self) -> float:
        """Round trip time of a ping to the runner, in seconds. Works while an op runs
        (the runner answers pings from its I/O thread), unless the op's output is not
        being read (backpressure holds the pong back).

        No timeout of its own: wrap it in ``trio.fail_after``. Cancellation: safe (a late
        pong is ignored). Raises RunnerDied if the connection breaks.
        """
        self._check_not_closed("ping")
        try:
            return await self._transport.ping()
        except TransportBroken:
            raise await self._connection_lost(None) from None
        except trio.ClosedResourceError:
            self._check_not_closed("ping")
            raise

    async def _start(
        self,
        kind: str,
        text: str,
        variables: Mapping[str, Any] | None,
        *,
        allow_stdin: bool = False,
        stdin: str | None = None,
    ) -> Operation:
        """Wait for our turn, register the op and send its request; return it running.

        The caller then holds the op lock and must call :meth:`_end` on every path.
        Cancellation: a cancel point, cancellable while waiting its turn (FIFO); raises
        Cancelled only before anything was written: then there is nothing to undo. Not a
        schedule point when the runner is free: the caller's wait for the answer is one.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._op_lock
        try:
            lock.acquire_nowait()  # fails also when others wait: they go first (FIFO)
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self._check_not_closed(kind)
            transport = self._transport
            if transport.state != OPEN:
                raise await self._connection_lost(None)
            op_id = self._next_op
            self._next_op += 1
            vars_ = dict(variables) if variables is not None else None
            if kind == "exec":
                msg: Message = Exec(op_id, text, allow_stdin, stdin, vars_)
            else:
                msg = Eval(op_id, text, vars_)
            op = Operation(self, op_id, kind, text, transport.open_op(op_id))
            try:
                await self._send(msg, op, reply_follows=True)
            except BaseException:
                transport.close_op(op_id)
                raise
        except BaseException:
            lock.release()
            raise
        self._ops_started += 1
        self._busy = True
        return op

    def _end(self, op: Operation) -> None:
        """The op is over for this client (finished, abandoned or lost): stop routing it
        and let the next caller in."""
        self._busy = False
        self._transport.close_op(op.op_id)
        op._channel.close()
        self._op_lock.release()

    async def _send(self, msg: Message, op: Operation, *, reply_follows: bool = False) -> None:
        try:
            await self._transport.send(msg, reply_follows=reply_follows)
        except TransportBroken:
            raise await self._connection_lost(op.description) from None
        except trio.ClosedResourceError:
            self._check_not_closed(f"send {msg.KIND!r} for {op.description}")
            raise

    async def _abandon(self, op: Operation) -> None:
        """Cancel ``op`` in the runner and wait for its completion, draining its output.

        Shielded and bounded by ``cancel_grace``; kills the runner if the grace expires.
        """
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.cancel_grace):
                try:
                    await self._transport.send(Cancel(op.op_id))
                    if op._awaiting_input:
                        # The interrupted input() leaves its request outstanding (the
                        # protocol cannot withdraw it): end it, so code that catches the
                        # interrupt and reads again gets EOFError, not a wait until the
                        # grace runs out (spec section 6.6).
                        op._awaiting_input = False
                        await self._transport.send(InputReply(op.op_id, None))
                    # Keep reading: a full op channel would stop the reader, and the
                    # cancelled completion queues behind the output.
                    async for msg in op._channel:
                        if type(msg) is _InputRequestMsg:
                            op._absorb(msg)
                            op._awaiting_input = False
                            await self._transport.send(InputReply(op.op_id, None))
                        elif type(msg) is Error:
                            op._reject()
                        else:
                            op._absorb(msg)
                        if op.finished:
                            return
                except (TransportBroken, trio.ClosedResourceError):
                    pass  # the connection is gone: so is the op
                if not op.finished:
                    return  # the channel ended: the connection broke; callers report it
            if not op.finished and self._transport.state == OPEN:
                reason = (
                    f"it did not complete {op.description} within cancel_grace="
                    f"{self.cancel_grace} s after a cancel, so the client killed it"
                )
                op._killed(reason)
                await self.kill(reason)

    # -- death, closing -------------------------------------------------------------------

    def _check_not_closed(self, doing: str) -> None:
        if self._state == CLOSED:
            raise trio.ClosedResourceError(
                f"cannot {doing}: this runner was closed; start a new one"
            )

    async def _connection_lost(self, op: str | None) -> BaseException:
        """The error to raise now that the connection is unusable (called by waiters)."""
        if self._state == CLOSED:
            return trio.ClosedResourceError(
                f"this runner was closed{f' while {op} was running' if op else ''}; start a new one"
            )
        failure = self._transport.failure
        if isinstance(failure, RemoteProtocolError):
            # The runner is unusable; stop it now rather than at close.
            self._state = DEAD
            self._signal_kill()
            exc = RemoteProtocolError(
                f"{f'while {op} was running: ' if op else ''}{failure}; this runner is "
                "unusable now (it was stopped): start a new one",
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
        self._state = DEAD
        if self.process is not None:
            # Shielded and short: the exit status and stderr make the report useful.
            with trio.CancelScope(shield=True):
                if not await self._wait_for_exit(EXIT_WAIT):
                    reason += " but did not exit, so the client killed it"
                    self._signal_kill()
                    await self._wait_for_exit(EXIT_WAIT)
                with trio.move_on_after(STDERR_WAIT):
                    await self._stderr_done.wait()
        welcome = self._transport.welcome
        return RunnerDied(
            pid=welcome.pid if welcome else (self.process.pid if self.process else None),
            returncode=self.returncode,
            stderr_tail=self.stderr_tail(),
            op=op,
            reason=reason,
        )

    def _signal_kill(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            if self._kill_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except (ProcessLookupError, PermissionError):
            pass

    async def kill(self, reason: str = "the client killed it") -> None:
        """Kill the runner now (SIGKILL to its process group) and break the connection.

        Any running op fails with RunnerDied. Does not wait for anything; finishes even
        when cancelled. Use :meth:`aclose` for an orderly shutdown.
        """
        if self._state == RUNNING:
            self._state = DEAD
            self._kill_reason = reason
        self._signal_kill()
        await self._transport.abort(PeerClosed("killed", clean=False))

    async def aclose(self) -> None:
        """Shut the runner down and wait until it is gone (idempotent).

        Sends ``shutdown`` and waits up to ``shutdown_timeout`` for the process to exit,
        then closes the connection and terminates it, then kills its process group, each
        step bounded. Shielded: completes even when the caller is cancelled. An op running
        in another task ends with trio.ClosedResourceError.
        """
        self._close_requested.set()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    async def _shutdown(self) -> None:
        """The orderly exit; always bounded; called shielded by the runner's owner task."""
        was_usable = self.state == RUNNING
        if self._state == RUNNING:
            self._state = CLOSED
        self._transport.drop_ops()
        process = self.process
        if was_usable:
            with trio.move_on_after(self.shutdown_timeout):
                try:
                    await self._transport.send(Shutdown())
                    if process is not None:
                        await process.wait()
                    else:
                        await self._transport.reader_done.wait()
                except (TransportBroken, trio.ClosedResourceError, LocalProtocolError):
                    pass
        await self._transport.aclose()
        if process is None:
            return
        # Closing the connection alone makes a healthy runner exit.
        if not await self._wait_for_exit(min(self.shutdown_timeout, 0.5)):
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await self._wait_for_exit(min(self.shutdown_timeout, 1.0))
        # Always, even after a clean exit: the code may have left children in the group.
        # (Safe from pid reuse: the group id stays reserved while any member lives.)
        self._signal_kill()
        if self._kill_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        await self._wait_for_exit(5.0)

    # -- background tasks -----------------------------------------------------------------

    async def _wait_for_exit(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds for the process to exit; True if it has.

        Waits on the process itself rather than on the watcher task, which may already
        have been cancelled along with its nursery (leaving a block by cancellation).
        """
        process = self.process
        if process is None:
            return True
        with trio.move_on_after(limit):
            await process.wait()
        return process.returncode is not None

    async def _watch_process(self) -> None:
        assert self.process is not None
        await self.process.wait()
        # The runner is gone. Normally the reader has seen EOF already; if something else
        # still holds the connection open (a child that inherited it), do not wait forever.
        with trio.move_on_after(0.5):
            await self._transport.reader_done.wait()
        if not self._transport.reader_done.is_set():
            await self._transport.abort(PeerClosed("exited", clean=False))

    async def _read_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                    break
                if not data:
                    break
                text = self._stderr_partial + decoder.decode(data)
                *lines, partial = text.split("\n")
                self._stderr_lines.extend(x[-STDERR_LINE_MAX:] for x in lines[-STDERR_TAIL_LINES:])
                self._stderr_partial = partial[-STDERR_LINE_MAX:]
        finally:
            self._stderr_done.set()


# --- starting --------------------------------------------------------------------------


@attrs.frozen
class _Config:
    command: Sequence[str] | None
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    stdio: bool
    handshake_timeout: float
    cancel_grace: float
    shutdown_timeout: float
    max_frame: int
    op_buffer: int


def _build_command(cfg: _Config, fd: int | None) -> list[str]:
    if cfg.command is None:
        base = list(DEFAULT_COMMAND)
        return [*base, "--stdio"] if fd is None else [*base, "--fd", str(fd)]
    command = [str(a) for a in cfg.command]
    if fd is None:
        return command
    if "{fd}" in command:
        return [str(fd) if a == "{fd}" else a for a in command]
    return [*command, "--fd", str(fd)]


async def _spawn(cfg: _Config) -> tuple[trio.Process, Stream, Sequence[str]]:
    env = None
    if cfg.env is not None:
        env = {**os.environ, **cfg.env}
    try:
        if cfg.stdio:
            command = _build_command(cfg, None)
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=cfg.cwd,
            )
            assert process.stdin is not None and process.stdout is not None
            return process, trio.StapledStream(process.stdin, process.stdout), command
        ours, theirs = socket.socketpair()
        try:
            command = _build_command(cfg, theirs.fileno())
            process = await trio.lowlevel.open_process(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=cfg.cwd,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return process, trio.SocketStream(trio.socket.from_stdlib_socket(ours)), command
    except OSError as exc:
        raise RunnerStartError(
            f"could not start the runner command {cfg.command or list(DEFAULT_COMMAND)!r}: "
            f"{exc}; check that the command exists and is executable"
        ) from exc


def _hello(max_frame: int) -> Hello:
    from . import __version__

    return Hello(PROTOCOL_VERSION, "execpy-trio", __version__, max_frame)


async def _handshake(runner: Runner, transport: Transport, command: str, limit: float) -> None:
    failure: BaseException | None = None
    with trio.move_on_after(limit) as scope:
        try:
            await transport.handshake(_hello(transport.conn.max_frame))
            return
        except (RemoteProtocolError, TransportBroken, trio.ClosedResourceError) as exc:
            failure = exc
    # Failed: stop the process so its stderr is complete and its exit status known.
    if runner.process is not None:
        runner._signal_kill()
        await runner._wait_for_exit(EXIT_WAIT)
        with trio.move_on_after(STDERR_WAIT):
            await runner._stderr_done.wait()
    if scope.cancelled_caught:
        what = (
            f"no welcome from the runner within handshake_timeout={limit} s (state "
            f"{transport.conn.state})"
        )
        advice = "check the command starts an execpy runner, or raise handshake_timeout"
    elif isinstance(failure, RemoteProtocolError):
        what = f"the handshake failed: {failure}"
        advice = "make sure the runner and the client come from matching execpy versions"
    else:
        what = "the runner closed the connection before its welcome"
        advice = "see its stderr below"
    code = runner.process.returncode if runner.process is not None else None
    exit_note = f" (it exited with status {code})" if code is not None else ""
    raise RunnerStartError(
        f"{what}{exit_note}; command: {command}; {advice}",
        stderr_tail=runner.stderr_tail(),
        returncode=code,
    ) from failure


async def _run_runner(
    cfg: _Config,
    stream: Stream | None = None,
    *,
    task_status: trio.TaskStatus[Runner] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own one runner from spawn to exit: the task behind all three ways to get one."""
    process: trio.Process | None = None
    command = "<connected stream>"
    if stream is None:
        process, stream, argv = await _spawn(cfg)
        command = " ".join(argv)
    transport = Transport(stream, max_frame=cfg.max_frame, op_buffer=cfg.op_buffer)
    runner = Runner(
        transport,
        process=process,
        cancel_grace=cfg.cancel_grace,
        shutdown_timeout=cfg.shutdown_timeout,
        handshake_timeout=cfg.handshake_timeout,
        kill_group=process is not None,
    )
    try:
        async with trio.open_nursery() as nursery:
            try:
                if process is not None:
                    nursery.start_soon(runner._watch_process)
                    if process.stderr is not None:
                        nursery.start_soon(runner._read_stderr, process.stderr)
                await _handshake(runner, transport, command, cfg.handshake_timeout)
                nursery.start_soon(transport.run_reader)
                task_status.started(runner)
                await runner._close_requested.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await runner._shutdown()
                    if process is not None:
                        for pipe in (process.stdin, process.stdout, process.stderr):
                            if pipe is not None:
                                await pipe.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
    finally:
        runner._finished.set()


def _config(
    command: Sequence[str] | None,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    stdio: bool,
    handshake_timeout: float,
    cancel_grace: float,
    shutdown_timeout: float,
    max_frame: int,
    op_buffer: int,
) -> _Config:
    if not MIN_MAX_FRAME <= max_frame <= ABSOLUTE_MAX_FRAME:
        raise ValueError(
            f"max_frame must be between {MIN_MAX_FRAME} and {ABSOLUTE_MAX_FRAME}, not {max_frame}"
        )
    if op_buffer < 1:
        raise ValueError(f"op_buffer must be at least 1, not {op_buffer}")
    return _Config(
        command=tuple(command) if command is not None else None,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdio=stdio,
        handshake_timeout=handshake_timeout,
        cancel_grace=cancel_grace,
        shutdown_timeout=shutdown_timeout,
        max_frame=max_frame,
        op_buffer=op_buffer,
    )


async def start_runner(
    nursery: trio.Nursery,
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdio: bool = False,
    handshake_timeout: float = 10.0,
    cancel_grace: float = 2.0,
    shutdown_timeout: float = 2.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    op_buffer: int = 16,
) -> Runner:
    """Start a runner whose supervising task lives in ``nursery``; return it when ready.

    The runner lives until ``await runner.aclose()`` or until ``nursery`` is cancelled
    (then it is shut down as by aclose). Options as for :func:`open_runner`. Raises
    RunnerStartError. Cancellation while starting kills the half-started runner.
    """
    cfg = _config(
        command, env, cwd, stdio, handshake_timeout, cancel_grace, shutdown_timeout,
        max_frame, op_buffer,
    )  # fmt: skip
    try:
        runner: Runner = await nursery.start(_run_runner, cfg)
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
    return runner


@contextlib.asynccontextmanager
async def open_runner(
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdio: bool = False,
    handshake_timeout: float = 10.0,
    cancel_grace: float = 2.0,
    shutdown_timeout: float = 2.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    op_buffer: int = 16,
) -> AsyncIterator[Runner]:
    """Start a runner process, yield a :class:`Runner`, and shut it down at the end.

    By default runs ``sys.executable -m execpy_trio.runner --fd N`` over a private
    socketpair (fd N in the child). ``command`` replaces the program: in fd mode an
    argument ``"{fd}"`` is replaced by the fd number, otherwise ``--fd N`` is appended; with
    ``stdio=True`` the protocol runs over the child's stdin/stdout and the command is used
    as given (e.g. ``["ssh", "host", "python3", "-m", "execpy_trio.runner", "--stdio"]``).
    ``env`` adds to (and overrides) the inherited environment; ``cwd`` sets the directory.

    Timeouts: ``handshake_timeout`` bounds start-up (RunnerStartError after it);
    ``cancel_grace`` is how long a cancelled op may take to complete before the runner is
    killed; ``shutdown_timeout`` bounds the orderly exit before the process is terminated
    and its process group killed. ``max_frame`` is the largest frame we accept;
    ``op_buffer`` the number of messages buffered per op (backpressure).

    Raises RunnerStartError. Cancellation: while starting, the half-started runner is
    killed; at the end of the block (also when leaving it by cancellation) the shutdown
    is shielded and bounded, so no process is left behind.
    """
    cfg = _config(
        command, env, cwd, stdio, handshake_timeout, cancel_grace, shutdown_timeout,
        max_frame, op_buffer,
    )  # fmt: skip
    async with _runner_scope(cfg, None) as runner:
        yield runner


@contextlib.asynccontextmanager
async def connect_runner(
    stream: Stream,
    *,
    handshake_timeout: float = 10.0,
    cancel_grace: float = 2.0,
    shutdown_timeout: float = 2.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    op_buffer: int = 16,
) -> AsyncIterator[Runner]:
    """Speak the protocol over ``stream``, already connected to a runner; yield a Runner.

    For tests (``trio.testing.memory_stream_pair``) and custom transports (a Unix socket
    to a runner started elsewhere). The stream is closed at the end. There is no process
    to kill: "killing" the runner (cancel grace expired) closes the stream, and RunnerDied
    has no exit status. Raises RunnerStartError if the handshake fails. Cancellation as
    for :func:`open_runner`.
    """
    cfg = _config(
        None, None, None, False, handshake_timeout, cancel_grace, shutdown_timeout,
        max_frame, op_buffer,
    )  # fmt: skip
    async with _runner_scope(cfg, stream) as runner:
        yield runner


@contextlib.asynccontextmanager
async def _runner_scope(cfg: _Config, stream: Stream | None) -> AsyncIterator[Runner]:
    try:
        async with trio.open_nursery() as nursery:
            runner: Runner = await nursery.start(_run_runner, cfg, stream)
            try:
                yield runner
            finally:
                await runner.aclose()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
