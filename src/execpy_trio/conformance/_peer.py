"""The kit's side of one connection: a runner process it started, the frames both ways,
and the checks every frame from the runner must pass, in every check.

The kit is a client written to catch a runner out, so it does not use the library's
Connection: it sends what a check tells it to, including what no client may send (raw
bytes, stale op ids, a done from the client), and it reads only when a check asks, so
that a check can stop reading and see backpressure. What it receives it holds to the spec
frame by frame (:meth:`Peer.receive`): the frame format and size, the sender's encoding
and the schema (:mod:`._rules`), and the kit's model of the connection and its ops
(:mod:`._model`). The first breach fails the check, citing the rule.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..protocol import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    Done,
    Error,
    InputRequest,
    Message,
    Output,
    Pong,
    Welcome,
    pack_body,
)
from ._log import FrameLog, describe, hexdump, key_of, summarize
from ._model import ConnectionModel
from ._rules import CheckFailed, check_frame, violation

__all__ = ["CheckFailed", "FrameLog", "OpResult", "Peer", "describe", "hello_of", "key_of"]

#: The protocol version the kit speaks.
KIT_VERSION = (1, 1)
_HEADER = struct.Struct(">I")
#: Bytes of the runner's own stderr kept for the report.
STDERR_TAIL = 8192
#: How long a runner has to exit once it has closed the stream or been told to.
EXIT_BOUND = 3.0
#: How long the kit reads, after a check, what a runner still sends.
DRAIN_BOUND = 1.0
#: Messages the kit reads past while it waits for one pong.
BARRIER_LIMIT = 100
#: Output the kit keeps for one op: more than any check's code writes.
OP_OUTPUT_LIMIT = 64 * 1024 * 1024


@attrs.define
class OpResult:
    """Everything the runner sent for one op."""

    op: int
    events: list[Message] = attrs.Factory(list)
    done: Done | None = None
    rejected: Error | None = None

    def data(self, stream: str) -> bytes:
        return b"".join(e.data for e in self.events if type(e) is Output and e.stream == stream)

    @property
    def stdout(self) -> bytes:
        return self.data("stdout")

    @property
    def stderr(self) -> bytes:
        return self.data("stderr")

    @property
    def status(self) -> str | None:
        return None if self.done is None else self.done.status

    @property
    def error_type(self) -> str | None:
        if self.done is None or self.done.error is None:
            return None
        return self.done.error.get("type")

    def describe(self) -> str:
        if self.rejected is not None:
            return f"op {self.op} rejected: {summarize(self.rejected.to_wire())}"
        if self.done is None:
            return f"op {self.op} with no done"
        text = f"done {summarize(self.done.to_wire(), 300)}"
        for name in ("stdout", "stderr"):
            data = self.data(name)
            if data:
                text += f", {name} {summarize(data, 120)}"
        return text


InputHandler = Callable[[InputRequest], "str | None"]


class Peer:
    """One runner process started for a check, and the kit's connection to it."""

    def __init__(self, command: Sequence[str], log: FrameLog, name: str) -> None:
        self.command = list(command)
        self.log = log
        self.name = name
        self.process: trio.Process | None = None
        self._buffer = bytearray()
        self._eof = False
        self.stderr_tail = bytearray()
        #: The kit's model of the connection: every frame received is held to it.
        self.model = ConnectionModel()
        self.notes: list[str] = []
        #: What the check is waiting for, for the report when its time runs out.
        self.waiting_for = "the runner to start"
        self.writing = ""
        #: Messages received, and how many when the current wait began.
        self.received = 0
        self._received_at_wait = 0
        self._last = ""
        self._next_op = 0
        self._next_token = 0

    # What checks read of the model (and set: a check that sends raw bytes says which
    # state the connection is in).

    @property
    def state(self) -> str:
        return self.model.state

    @state.setter
    def state(self, value: str) -> None:
        self.model.state = value

    @property
    def welcome(self) -> Welcome | None:
        return self.model.welcome

    @property
    def fatal(self) -> Error | None:
        return self.model.fatal

    @property
    def max_frame(self) -> int:
        return self.model.max_frame

    @property
    def runner_max_frame(self) -> int:
        return self.model.runner_max_frame

    def track(self, value: dict[str, Any]) -> None:
        """Track a message the check sent as raw bytes, as :meth:`send` tracks its own."""
        self.model.on_send(value)

    # -- the process ------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        self.process = await trio.lowlevel.open_process(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        nursery.start_soon(self._drain_stderr)

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            while True:
                chunk = await self.process.stderr.receive_some(65536)
                if not chunk:
                    return
                self.stderr_tail += chunk
                del self.stderr_tail[:-STDERR_TAIL]

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def wait_exit(self, within: float = EXIT_BOUND) -> int | None:
        """The exit status, or None if the runner is still running after ``within`` s."""
        assert self.process is not None
        with trio.move_on_after(within):
            await self.process.wait()
        return self.process.returncode

    async def aclose(self) -> None:
        """End the runner and everything in its process group; bounded, even if cancelled."""
        if self.process is None:
            return
        process = self.process
        with trio.CancelScope(shield=True):
            await self.close_input()
            if process.returncode is None:
                # Closing the stream asks a runner to exit; give it a moment to do so.
                with trio.move_on_after(0.5):
                    await process.wait()
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.returncode is None:
                process.kill()
                await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()

    # -- sending ----------------------------------------------------------------------------

    def new_op(self) -> int:
        self._next_op += 1
        return self._next_op

    def skip_ops(self, to: int) -> None:
        """Make the next op id ``to + 1``."""
        self._next_op = max(self._next_op, to)

    def new_token(self) -> int:
        self._next_token += 1
        return self._next_token

    async def send(self, message: Message | dict[str, Any], *, track: bool = True) -> None:
        """Send one message (a map may be anything msgpack can encode, valid or not).

        ``track``: the kit expects the runner to treat it as valid, and updates its model;
        a check sending something invalid on purpose passes False.
        """
        value = message.to_wire() if isinstance(message, Message) else message
        body = pack_body(value)
        self.log.add(f"{self.name}C", summarize(value, 300))
        if track:
            self.model.on_send(value)
        elif type(value) is dict and value.get("kind") in ("exec", "eval"):
            self.model.refused_ops[value.get("op")] = summarize(value, 120)
        await self._write(
            _HEADER.pack(len(body)) + body,
            f"its {value.get('kind')!r}" if type(value) is dict else "",
        )

    async def send_raw(self, data: bytes, what: str, *, refused_op: int | None = None) -> None:
        """Send bytes as they are; ``refused_op``: the op id of a request in them that the
        runner must refuse (so that accepting it is reported as such)."""
        if refused_op is not None:
            self.model.refused_ops[refused_op] = what
        self.log.add(f"{self.name}C", f"raw bytes ({what}): {hexdump(data)}")
        await self._write(data, what)

    async def _write(self, data: bytes, what: str = "") -> None:
        assert self.process is not None and self.process.stdin is not None
        #: While a write blocks, the runner is not reading: that is what a timeout means.
        self.writing = f"the runner to read what the kit sends ({what or f'{len(data)} bytes'})"
        try:
            await self.process.stdin.send_all(data)
            self.writing = ""
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise CheckFailed(
                "the runner to read what the kit sends",
                f"the stream closed while the kit was writing ({exc or type(exc).__name__}); "
                f"{self._ended()}",
            ) from None

    async def close_input(self) -> None:
        """Close the kit's sending side: the runner reads end of stream."""
        assert self.process is not None
        if self.process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.process.stdin.aclose()

    # -- receiving --------------------------------------------------------------------------

    async def _fill(self, n: int) -> bool:
        assert self.process is not None and self.process.stdout is not None
        while len(self._buffer) < n:
            chunk = await self.process.stdout.receive_some(max(65536, n - len(self._buffer)))
            if not chunk:
                self._eof = True
                return False
            self._buffer += chunk
        return True

    def since_last_read(self) -> str:
        """What arrived while the kit waited, for a report of a wait that timed out."""
        seen = self.received - self._received_at_wait
        if not seen:
            return " (no frames arrived)"
        return f" ({seen} frames arrived meanwhile; the last: {self._last})"

    async def receive(self, waiting_for: str = "a frame") -> Message | None:
        """The next message, held to every rule; None at a clean end of stream."""
        if waiting_for != self.waiting_for:
            self._received_at_wait = self.received
        self.waiting_for = waiting_for
        if not await self._fill(4):
            if self._buffer:
                raise violation(
                    "3.1",
                    f"the stream ended after {len(self._buffer)} bytes of a frame header: "
                    f"{hexdump(bytes(self._buffer))}",
                    "whole frames",
                )
            self.log.add(f"{self.name}R", "end of stream")
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        limit = (
            self.max_frame if self.state in ("open", "closing", "error") else HANDSHAKE_MAX_FRAME
        )
        if length == 0:
            self.log.add(f"{self.name}R", "frame of length 0")
            raise violation("3.1", "a frame of length 0 (no body)", "a body of one msgpack value")
        if length > limit:
            self.log.add(f"{self.name}R", f"frame header announcing {length} bytes")
            raise violation(
                "3.3",
                f"a frame announcing {length} bytes, over the kit's max_frame of {limit}",
                f"frames of at most {limit} bytes",
            )
        if not await self._fill(4 + length):
            got = len(self._buffer) - 4
            self.log.add(f"{self.name}R", f"truncated frame: {got} of {length} bytes")
            raise violation(
                "3.1",
                f"the stream ended {got} bytes into a frame of {length}",
                "whole frames",
            )
        body = bytes(self._buffer[4 : 4 + length])
        del self._buffer[: 4 + length]
        message = check_frame(body, self.max_frame, self._log_received, self.note)
        self.received += 1
        self._last = describe(message)
        self.model.on_receive(message, self.waiting_for)
        return message

    def _log_received(self, text: str) -> None:
        self.log.add(f"{self.name}R", text)

    def note(self, text: str) -> None:
        if text not in self.notes and len(self.notes) < 20:
            self.notes.append(text)

    def _ended(self) -> str:
        code = self.returncode
        if code is None:
            return "the runner is still running"
        from .._errors import describe_exit

        return f"the runner {describe_exit(code)}"

    # -- helpers for checks -----------------------------------------------------------------

    async def expect(self, what: str, *kinds: str) -> Message:
        """The next message, which must be one of ``kinds`` (a kind, or ``error/fatal``,
        ``error/reject``, ``error/notice``). Output of the op in flight is passed over
        unless ``kinds`` names it: however a runner splits output into frames, it may
        arrive between any two messages."""
        while True:
            msg = await self.receive(what)
            if msg is None:
                raise CheckFailed(what, f"the end of the stream; {self._ended()}")
            if type(msg) is not Output or "output" in kinds:
                break
        if kinds and key_of(msg) not in kinds and msg.KIND not in kinds:
            raise CheckFailed(what, describe(msg))
        return msg

    async def wait_output(self, op: int, marker: bytes) -> OpResult:
        """Read op ``op``'s messages until its stdout holds ``marker`` (the code has got that
        far and is still running); its done before that fails the check."""
        result = await self.collect(
            op,
            until=lambda r: marker in r.stdout,
            what=f"op {op}'s code to write {marker!r} to stdout while it runs",
        )
        if result.done is not None or result.rejected is not None:
            raise CheckFailed(f"op {op} to write {marker!r} and go on running", result.describe())
        return result

    async def hello(self, *, track: bool = True, **fields: Any) -> None:
        """Send the kit's hello, with ``fields`` over it."""
        await self.send(hello_of(**fields), track=track)

    async def handshake(self, **fields: Any) -> Welcome:
        """Send a hello (the kit's own, with ``fields`` over it) and expect the welcome."""
        await self.hello(**fields)
        msg = await self.expect("a welcome", "welcome")
        assert type(msg) is Welcome
        return msg

    async def start_op(
        self, code: str | None = None, *, expr: str | None = None, **fields: Any
    ) -> int:
        op = fields.pop("op", None) or self.new_op()
        if expr is not None:
            await self.send({"kind": "eval", "op": op, "expr": expr, **fields})
        else:
            await self.send({"kind": "exec", "op": op, "code": code, **fields})
        return op

    async def collect(
        self,
        op: int,
        *,
        on_input: InputHandler | None = None,
        until: Callable[[OpResult], bool] | None = None,
        keep_output: bool = True,
        what: str = "",
    ) -> OpResult:
        """Read until op ``op`` ends (or ``until`` says stop), answering input requests with
        ``on_input`` (an input request without a handler fails the check)."""
        result = OpResult(op)
        kept = 0
        while True:
            msg = await self.receive(what or f"the end of op {op} (its done)")
            if msg is None:
                raise CheckFailed(
                    f"op {op} to end with a done",
                    f"the end of the stream after {describe_events(result)}; {self._ended()}",
                )
            if type(msg) is Error:
                if msg.fatal:
                    raise CheckFailed(
                        f"op {op} to end with a done", f"a fatal error: {describe(msg)}"
                    )
                if msg.op == op:
                    result.rejected = msg
                    return result
                continue
            if type(msg) is Pong:
                continue
            if getattr(msg, "op", None) != op:
                raise CheckFailed(f"messages about op {op}", describe(msg))
            if type(msg) is Output:
                kept += len(msg.data)
                if kept > OP_OUTPUT_LIMIT:
                    raise CheckFailed(
                        f"the output of op {op}'s code",
                        f"more than {OP_OUTPUT_LIMIT} bytes of output, more than the code writes",
                    )
                if keep_output:
                    result.events.append(msg)
            else:
                result.events.append(msg)
            if type(msg) is Done:
                result.done = msg
                return result
            if type(msg) is InputRequest:
                if on_input is None:
                    raise CheckFailed(f"op {op} to run without input", describe(msg))
                text = on_input(msg)
                await self.send({"kind": "input_reply", "op": op, "text": text})
            if until is not None and until(result):
                return result

    async def run(self, code: str | None = None, **fields: Any) -> OpResult:
        """Run one op to its end (``expr=`` for an eval)."""
        on_input = fields.pop("on_input", None)
        op = await self.start_op(code, **fields)
        return await self.collect(op, on_input=on_input)

    async def barrier(self) -> list[Message]:
        """Ping and read up to the pong; what came before it is returned."""
        token = self.new_token()
        await self.send({"kind": "ping", "token": token})
        seen: list[Message] = []
        while True:
            msg = await self.receive(f"the pong for ping {token}")
            if msg is None:
                raise CheckFailed(
                    f"a pong for ping {token}", f"the end of the stream; {self._ended()}"
                )
            if type(msg) is Pong and msg.token == token:
                return seen
            seen.append(msg)
            if len(seen) > BARRIER_LIMIT:
                raise CheckFailed(
                    f"the pong for ping {token}",
                    f"more than {BARRIER_LIMIT} other messages first (the last: {describe(msg)})",
                )

    async def expect_fatal(self, what: str, codes: Sequence[str]) -> Error:
        """Expect a fatal error with one of ``codes``, then the end of the stream."""
        msg = await self.receive(what)
        if msg is None:
            raise CheckFailed(what, f"the end of the stream with no error frame; {self._ended()}")
        if not (type(msg) is Error and msg.fatal and msg.code in codes):
            raise CheckFailed(what, describe(msg))
        await self.expect_end(f"the runner to close the stream after its {msg.code!r} error")
        # Then it must not linger: with the kit's side closed too it has read the end of
        # the stream, after which it MUST exit (section 2).
        await self.close_input()
        await self.expect_exit(f"the runner to exit after its {msg.code!r} error")
        return msg

    async def expect_end(self, what: str, within: float = EXIT_BOUND) -> None:
        """Expect the end of the stream within ``within`` s (no frames before it)."""
        with trio.move_on_after(within) as scope:
            msg = await self.receive(what)
            if msg is not None:
                raise CheckFailed(what, describe(msg))
        if scope.cancelled_caught:
            got = f"the stream still open after {within:g} s"
            if self.returncode is not None:
                got += (
                    f", though the runner {self._ended()[11:]}: a process it left behind "
                    "holds its stdout"
                )
            raise CheckFailed(what, got)

    async def expect_exit(self, what: str, within: float = EXIT_BOUND) -> int:
        code = await self.wait_exit(within)
        if code is None:
            raise CheckFailed(what, f"the runner still running {within:g} s later")
        return code

    async def drain(self, within: float = DRAIN_BOUND) -> None:
        """After a check: close the kit's side and hold whatever the runner still sends, to
        the end of its stream, to the same rules. A runner that does not close in time is
        left to the other checks (and ended)."""
        if self.process is None or self._eof or self.fatal is not None:
            return
        await self.close_input()
        with trio.move_on_after(within):
            while await self.receive("the end of the stream after the check") is not None:
                pass

    async def nothing_for(self, seconds: float, what: str) -> None:
        """Fail if anything arrives within ``seconds`` (the end of the stream included)."""
        with trio.move_on_after(seconds):
            msg = await self.receive(what)
            raise CheckFailed(what, "the end of the stream" if msg is None else describe(msg))


def hello_of(**fields: Any) -> dict[str, Any]:
    """The kit's hello, with ``fields`` over it."""
    hello: dict[str, Any] = {
        "kind": "hello",
        "version": list(KIT_VERSION),
        "impl_name": "execpy-conformance",
        "impl_version": "1",
        "max_frame": DEFAULT_MAX_FRAME,
    }
    hello.update(fields)
    return hello


def describe_events(result: OpResult) -> str:
    if not result.events:
        return "no messages for the op"
    return f"{len(result.events)} messages for the op (last: {describe(result.events[-1])})"
