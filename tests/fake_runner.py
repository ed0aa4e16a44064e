"""A scripted fake runner for client unit tests: the runner side of a connection over
in-memory streams, played with the real sans-IO ``Connection("runner")`` so every frame the
client sends is checked by the same state machine a real runner uses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
import trio.testing

import execpy_trio as ex
import execpy_trio.protocol as P
from execpy_trio._errors import raise_unwrapped

WELCOME = P.Welcome((1, 0), "fake", "0", "python", "3.11", 4242, P.DEFAULT_MAX_FRAME)


class FakeRunner:
    """The runner side of a connection, driven by a test script."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = P.Connection("runner")
        self.received: list[P.Message] = []
        self.closed = False

    async def receive(self) -> P.Message | P.ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if event is P.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.conn.receive_data(data)
                continue
            if isinstance(event, P.Message):
                self.received.append(event)
            return event  # type: ignore[no-any-return]

    async def expect(self, kind: type[P.Message]) -> Any:
        msg = await self.receive()
        assert type(msg) is kind, f"expected {kind.__name__}, got {msg!r}"
        return msg

    async def send(self, msg: P.Message) -> None:
        await self.stream.send_all(self.conn.send(msg))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def handshake(self, welcome: P.Welcome = WELCOME) -> None:
        await self.expect(P.Hello)
        await self.send(welcome)

    async def close(self) -> None:
        self.closed = True
        await self.stream.aclose()

    async def serve_until_shutdown(self) -> None:
        """Answer pings, ignore the rest, and close on shutdown, EOF or a protocol error."""
        while True:
            try:
                msg = await self.receive()
            except P.ProtocolError:
                await self.close()
                return
            if isinstance(msg, P.ConnectionClosed) or type(msg) is P.Shutdown:
                await self.close()
                return
            if type(msg) is P.Ping:
                await self.send(P.Pong(msg.token))


Script = Callable[[FakeRunner], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(
    script: Script, *, lockstep: bool = False, **options: Any
) -> AsyncIterator[tuple[ex.Runner, FakeRunner]]:
    if lockstep:
        client_stream, runner_stream = trio.testing.lockstep_stream_pair()
    else:
        client_stream, runner_stream = trio.testing.memory_stream_pair()
    fake = FakeRunner(runner_stream)
    try:
        async with trio.open_nursery() as nursery:

            async def run_script() -> None:
                try:
                    await script(fake)
                finally:
                    with trio.CancelScope(shield=True):
                        await runner_stream.aclose()

            nursery.start_soon(run_script)
            async with ex.connect_runner(client_stream, **options) as runner:
                yield runner, fake
    except BaseException as group:
        # The helper's own nursery wraps; the client under test must not (checked by
        # tests that assert exact exception types raised from inside connect_runner).
        raise_unwrapped(group)


async def cancelled_then_serve(fake: FakeRunner) -> None:
    """A script: the handshake, one exec answered only once cancelled, then serving."""
    await fake.handshake()
    req = await fake.expect(P.Exec)
    await fake.expect(P.Cancel)
    await fake.send(P.Done(req.op, "cancelled"))
    await fake.serve_until_shutdown()


async def ok_done(fake: FakeRunner, value: Any = None, status: str = "ok") -> P.Exec:
    req = await fake.receive()
    assert type(req) in (P.Exec, P.Eval), req
    await fake.send(P.Done(req.op, status, value))  # type: ignore[attr-defined]
    return req  # type: ignore[return-value]
