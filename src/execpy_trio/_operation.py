"""One operation (``exec`` or ``eval``) from its request to its end: events, input replies,
and the cancel-and-drain that ends it early.

Theory of operation
-------------------
An :class:`Operation` reads the messages of its op from a bounded channel that the
transport's reader fills. It has one consumer at a time (a second gets
``trio.BusyResourceError``). It ends in exactly one of these states, after which
``finished`` is True:

============  ==============================================================================
completed     the runner's ``done`` arrived: ``result`` is that completion
rejected      the runner refused the op (nothing ran): ``result`` raises the
              :class:`OperationRejected`
lost          the connection ended first: ``result`` raises the session's one error for
              that (RunnerDied, RemoteProtocolError, ClosedResourceError), except when we had
              cancelled the op: then it is status "cancelled", with that error in ``error``
============  ==============================================================================

Ending early (:meth:`Operation.abandon`, run when the caller's scope is cancelled or an
``exec_stream`` block is left) sends ``cancel`` and keeps draining the channel, shielded
and bounded by ``cancel_grace``, until the cancelled completion arrives: draining matters,
because a full channel stops the reader and the ``done`` queues behind the output. If
none comes in time, the runner is killed.

The operation talks to its session only through :class:`OpHost`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import trio

from ._errors import ExecpyError, OperationRejected
from ._results import ErrorInfo, ExecResult, InputRequest, KeptOutput, Output
from .protocol import STATUS_CANCELLED, Cancel, Done, Error, InputReply, LocalProtocolError
from .protocol import InputRequest as InputRequestMsg
from .protocol import Output as OutputMsg

if TYPE_CHECKING:
    from ._opchannel import OpChannel
    from .protocol import Message

__all__ = ["OpHost", "OpState", "Operation"]

#: The states of an operation (see the module docstring).
OpState = Literal["running", "completed", "rejected", "lost"]

RUNNING: Final = "running"
COMPLETED: Final = "completed"
REJECTED: Final = "rejected"
LOST: Final = "lost"


class OpHost(Protocol):
    """What an operation needs from its session."""

    @property
    def cancel_grace(self) -> float: ...

    @property
    def is_alive(self) -> bool: ...

    async def send_for(self, op: Operation, msg: Message) -> None:
        """Send ``msg`` on the op's behalf; raise the session's error if it cannot."""

    def lost_error(self) -> BaseException:
        """The one error for "the connection ended": known before any channel ends."""

    async def verdict(self) -> BaseException:
        """Wait (bounded) until that error is known, and return it."""

    async def kill(self, reason: str) -> None:
        """Kill the runner, and return once its end is recorded."""


def describe(op: int, kind: str, text: str) -> str:
    """``op 3 (exec 'print(1)')``: how errors name an operation."""
    stripped = text.strip()
    first = stripped.splitlines()[0] if stripped else ""
    if len(first) > 60 or "\n" in stripped:
        first = first[:57] + "..."
    return f"op {op} ({kind} {first!r})"


class Operation:
    """One running operation, from :meth:`Runner.exec_stream`.

    Iterate it (``async for event in op``) to get :class:`Output` and
    :class:`InputRequest` events as they happen; iteration ends after the completion, and
    then :attr:`result` holds the :class:`ExecResult`.
    """

    def __init__(
        self,
        host: OpHost,
        op_id: int,
        kind: str,
        text: str,
        channel: OpChannel,
        result_output_limit: int | None,
    ) -> None:
        self._host = host
        #: The protocol op id.
        self.op_id = op_id
        self._kind = kind
        self._text = text
        self._channel = channel
        self._kept = KeptOutput(result_output_limit)
        # Per stream, the start of a character that the last output event ended in.
        self._carry: dict[str, bytes] = {}
        self._state: OpState = RUNNING
        self._awaiting_input = False
        self._cancel_sent = False
        self._consuming = False
        self._drained_by_session = False
        self._ended: trio.Event | None = None  # made only when someone waits for the end
        # The completion; the result is built from it when first asked for (joining and
        # decoding all the output is wasted on a stream consumer that never looks).
        self._done: Done | None = None
        self._result: ExecResult | None = None
        self._failure: BaseException | None = None

    # -- information ----------------------------------------------------------------------

    @property
    def description(self) -> str:
        """A short description, used in error messages."""
        return describe(self.op_id, self._kind, self._text)

    @property
    def state(self) -> OpState:
        """ "running", "completed", "rejected" or "lost" (see the module docstring)."""
        return self._state

    @property
    def finished(self) -> bool:
        """True once the operation has ended, in whichever way."""
        return self._state != RUNNING

    @property
    def result(self) -> ExecResult:
        """The completion.

        Raises RuntimeError while the operation runs; for an op that was rejected or
        whose runner was lost without our cancel, the error that says so.
        """
        result = self._result
        if result is not None:
            return result
        if self._failure is not None:
            raise self._failure.with_traceback(None)
        done = self._done
        if done is None:
            raise RuntimeError(
                f"{self.description} has not finished: iterate the operation to the end "
                "(or leave the exec_stream block, which cancels it) before reading .result"
            )
        error = None
        if done.error is not None:
            error = ErrorInfo(done.error["type"], done.error["message"], done.error["traceback"])
        result = self._result = self._build(done.status, done.value, error)
        return result

    @property
    def completion_status(self) -> str | None:
        """The status of the runner's completion, once it came (else None)."""
        return self._done.status if self._done is not None else None

    def release(self) -> None:
        """For the session: the op is over for this client; drop what is still buffered."""
        self._channel.close()

    @property
    def value(self) -> Any:
        """The completion's value as plain data (what ``eval`` returns)."""
        return self._done.value if self._done is not None else None

    def _build(self, status: Any, value: Any, error: ErrorInfo | None) -> ExecResult:
        kept = self._kept
        return ExecResult(
            status, value, kept.text("stdout"), kept.text("stderr"), error, kept.dropped
        )

    def __repr__(self) -> str:
        return f"<Operation {self.description} {self._state}>"

    # -- events ---------------------------------------------------------------------------

    def __aiter__(self) -> Operation:
        return self

    async def __anext__(self) -> Output | InputRequest:
        """The next event.

        Raises RunnerDied if the runner dies, RemoteProtocolError if it breaks the
        protocol, OperationRejected if it refused the op, trio.BusyResourceError if
        another task is already waiting for this op's events. Cancellation: always a cancel
        point, and the event being waited for is not lost (it stays queued); leaving the
        exec_stream block cancels the op in the runner. A schedule point when it waits;
        events already queued (at most ``op_buffer``) are handed out without yielding.
        """
        if self._state != RUNNING:
            raise StopAsyncIteration
        if self._consuming and self._drained_by_session:
            await self._wait_ended()  # the runner is being closed: its shutdown reads the rest
            raise StopAsyncIteration
        self._enter_consumer()
        try:
            while True:
                try:
                    msg: Message | None = await self._channel.receive()
                except trio.EndOfChannel:
                    msg = None
                if msg is None:  # raised outside the handler: the shared error stays as built
                    raise self._lose().with_traceback(None)
                event = self._absorb(msg)
                if event is not None:
                    return event
                if self._state != RUNNING:
                    raise StopAsyncIteration
        finally:
            self._consuming = False

    def _enter_consumer(self) -> None:
        if self._consuming:
            raise trio.BusyResourceError(
                f"another task is already reading the events of {self.description}: an "
                "operation has one consumer; hand the events on with a memory channel"
            )
        self._consuming = True

    async def collect(self) -> None:
        """For the session: consume messages until the completion, keeping output only for
        the result (the loop of exec and eval, which show no events).

        Raises as ``__anext__``; a cancel point (and a schedule point while it waits).
        """
        channel = self._channel
        kept = self._kept
        self._enter_consumer()
        try:
            while self._state == RUNNING:
                try:
                    msg: Message | None = await channel.receive()
                except trio.EndOfChannel:
                    msg = None
                if msg is None:
                    raise self._lose().with_traceback(None)
                if type(msg) is OutputMsg:
                    kept.add(msg.stream, msg.data)
                elif type(msg) is InputRequestMsg:  # pragma: no cover - allow_stdin is False
                    self._awaiting_input = True
                    await self.send_eof()
                else:
                    self._absorb(msg)
        finally:
            self._consuming = False
        if channel.filled:
            # The completion came from a direct read, without waiting: yield once, so
            # that a loop of execs lets the other tasks (and deadlines) run.
            channel.filled = False
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _absorb(self, msg: Message) -> Output | InputRequest | None:
        kind = type(msg)
        if kind is OutputMsg:
            assert isinstance(msg, OutputMsg)
            stream = msg.stream
            self._kept.add(stream, msg.data)
            event, self._carry[stream] = Output._split(
                stream,  # type: ignore[arg-type]
                msg.data,
                self._carry.get(stream, b""),
            )
            return event
        if kind is InputRequestMsg:
            assert isinstance(msg, InputRequestMsg)
            self._awaiting_input = True
            return InputRequest(msg.prompt, msg.password)
        if kind is Done:
            assert isinstance(msg, Done)
            self._awaiting_input = False
            self._done = msg
            self._end(COMPLETED)
            return None
        if kind is Error:
            assert isinstance(msg, Error)
            # A rejection: the runner did not run the op (no completion follows).
            rejected = self._failure = OperationRejected(self.op_id, msg.code, msg.message)
            self._end(REJECTED)
            raise rejected
        return None  # pragma: no cover - the transport routes nothing else here

    # -- ending ---------------------------------------------------------------------------

    def _end(self, state: OpState) -> None:
        self._state = state
        if self._ended is not None:
            self._ended.set()

    def _lose(self, error: BaseException | None = None) -> BaseException:
        """The connection ended before the completion: end as "lost"; return the error."""
        if error is None:
            error = self._host.lost_error()
        if self._state == RUNNING:
            if self._cancel_sent:
                # We asked for the end: the caller gets what it asked for, and why it came
                # this way (a caller whose cancel scope ate the Cancelled reads this).
                self._result = self._build(
                    STATUS_CANCELLED, None, ErrorInfo(type(error).__name__, str(error), "")
                )
            else:
                self._failure = error
            self._end(LOST)
        return error

    async def _wait_ended(self) -> None:
        if self._state != RUNNING:
            return
        if self._ended is None:
            self._ended = trio.Event()
        await self._ended.wait()

    # -- input and cancel -----------------------------------------------------------------

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
        if self._state == RUNNING:
            self._cancel_sent = True
            await self._host.send_for(self, Cancel(self.op_id))

    async def _reply(self, text: str | None) -> None:
        if self._state != RUNNING:
            raise LocalProtocolError(
                f"{self.description} has already finished; there is no input to answer"
            )
        if not self._awaiting_input:
            raise LocalProtocolError(
                f"{self.description} has no pending input request: answer only after an "
                "InputRequest event, once per request"
            )
        await self._host.send_for(self, InputReply(self.op_id, text))
        self._awaiting_input = False

    async def _request_cancel(self) -> None:
        """Send ``cancel`` once, and end a pending input request with EOF: the interrupted
        ``input()`` leaves its request outstanding (the protocol cannot withdraw it), so
        code that catches the interrupt and reads again gets EOFError, not a wait until the
        grace runs out (spec section 6.6)."""
        if not self._cancel_sent:
            self._cancel_sent = True
            await self._host.send_for(self, Cancel(self.op_id))
        if self._awaiting_input:
            self._awaiting_input = False
            await self._host.send_for(self, InputReply(self.op_id, None))

    async def abandon(self, *, by_session: bool = False) -> None:
        """End the op early: cancel it in the runner and wait for its completion, draining
        its output (kept for the result) meanwhile. If another task is reading the op's
        events, it is left to read them, and this only waits for the end.
        ``by_session``: the session's shutdown reads for a consumer that is not reading
        (an exec_stream block busy elsewhere); that consumer's next read then just waits
        for the end.

        Shielded and bounded by ``cancel_grace``: after it, the runner is killed and the
        op ends "lost" (its result: status "cancelled", ``error.type`` "RunnerDied").
        """
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._host.cancel_grace):
                try:
                    await self._request_cancel()
                    if self._consuming:
                        await self._wait_ended()
                    else:
                        self._drained_by_session = by_session
                        await self._drain()
                except (ExecpyError, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # the connection is gone, and so is the op (the channel says why)
            if self._state == RUNNING:
                await self._give_up()

    async def _drain(self) -> None:
        self._enter_consumer()
        try:
            async for msg in self._channel:
                if isinstance(msg, Error):
                    self._failure = OperationRejected(self.op_id, msg.code, msg.message)
                    self._end(REJECTED)
                else:
                    self._absorb(msg)
                    if self._awaiting_input:
                        self._awaiting_input = False
                        await self._host.send_for(self, InputReply(self.op_id, None))
                if self._state != RUNNING:
                    return
            self._lose()  # the channel ended: the connection is gone
        finally:
            self._consuming = False

    async def _give_up(self) -> None:
        """The cancelled op did not end within the grace: kill the runner."""
        if self._host.is_alive:
            await self._host.kill(
                f"it did not complete {self.description} within cancel_grace="
                f"{self._host.cancel_grace} s after a cancel, so the client killed it"
            )
        # Killed by us or by another task that gave up at the same moment: either way, end
        # with the recorded verdict, not before it is in.
        self._lose(await self._host.verdict())
