"""A launcher of fake runners for the manager's unit tests: each launch is a Trio task
playing the runner side of the real sans-IO ``Connection("runner")`` over memory streams,
so the manager and its sessions run for real, under ``autojump_clock``.

What a fake does is decided by the code it is given:

* ``sleep:S`` works S seconds, or until cancelled (then completes "cancelled");
* ``stubborn`` never completes, and ignores the cancel;
* ``die`` ends the connection (the runner died during the op);
* ``freeze`` completes, then answers nothing more (a stopped process);
* anything else completes "ok" at once with the value ``[runner number, code]``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
import trio.testing

import execpy_trio as ex
import execpy_trio.protocol as P
from execpy_trio.launch import StreamHandle
from fake_runner import FakeRunner

#: How a launch goes: "ok", "fail" (the launcher raises RunnerStartError), "oserror" (it
#: raises OSError, as a third-party launcher might), "refuse" (a RunnerStartError that
#: says retrying cannot help), "silent" (no welcome: the handshake
#: times out), "die-after-welcome" (ends right after its welcome), "die-after:S" (ends S
#: seconds after its welcome, idle), "wedge" (answers nothing after its welcome).
Plan = str


class FakeRunnerProcess(FakeRunner):
    """The runner side of one fake runner of a pool (answers ops concurrently)."""

    def __init__(self, number: int, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.number = number
        self.codes: list[str] = []  # every op's code, in order
        self.frozen = False
        self.pings = 0
        self.pong_delay = 0.0
        self._send_lock = trio.Lock()
        self._cancel: dict[int, trio.Event] = {}

    async def send(self, msg: P.Message) -> None:
        async with self._send_lock:  # ops and pongs are answered from tasks of their own
            await super().send(msg)

    async def _next(self) -> P.Message | None:
        msg = await self.receive()
        return None if isinstance(msg, P.ConnectionClosed) else msg

    async def serve(self, plan: Plan) -> None:
        if plan == "silent":
            await trio.sleep_forever()
        hello = await self._next()
        assert type(hello) is P.Hello, hello
        await self.send(
            P.Welcome((1, 1), "fake", "0", "python", "3.11", 1000 + self.number, hello.max_frame)
        )
        if plan == "die-after-welcome":
            return
        if plan == "wedge":
            self.frozen = True  # welcomed, then answers nothing
        if plan.startswith("die-after:"):
            with trio.move_on_after(float(plan.split(":", 1)[1])):
                await self._serve()
            return
        await self._serve()

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                msg = await self._next()
                if msg is None or type(msg) is P.Shutdown:
                    nursery.cancel_scope.cancel()
                    return
                if self.frozen:
                    await trio.sleep_forever()
                if type(msg) is P.Ping:
                    self.pings += 1
                    nursery.start_soon(self._pong, msg.token)
                elif type(msg) in (P.Exec, P.Eval):
                    code = msg.code if type(msg) is P.Exec else msg.expr  # type: ignore[attr-defined]
                    self.codes.append(code)
                    if code == "die":
                        nursery.cancel_scope.cancel()
                        return
                    self._cancel[msg.op] = trio.Event()  # type: ignore[attr-defined]
                    nursery.start_soon(self._work, msg.op, code)  # type: ignore[attr-defined]
                elif type(msg) is P.Cancel:
                    event = self._cancel.get(msg.op)
                    if event is not None:
                        event.set()

    async def _pong(self, token: int) -> None:
        await trio.sleep(self.pong_delay)
        await self.send(P.Pong(token))

    async def _work(self, op: int, code: str) -> None:
        cancelled = self._cancel[op]
        if code == "stubborn":
            await trio.sleep_forever()
        if code.startswith("sleep:"):
            with trio.move_on_after(float(code.split(":", 1)[1])):
                await cancelled.wait()
        status = "cancelled" if cancelled.is_set() else "ok"
        del self._cancel[op]
        await self.send(P.Done(op, status, [self.number, code] if status == "ok" else None))
        if code == "freeze":
            self.frozen = True


class LingeringHandle(StreamHandle):
    """A stream's runner whose end is known ``delay`` seconds after its stream ended."""

    def __init__(self, stream: trio.abc.Stream, description: str, delay: float) -> None:
        super().__init__(stream, description)
        self._delay = delay
        self._stream_over = trio.Event()

    def stream_ended(self) -> None:
        self._stream_over.set()
        if not self._delay:
            super().stream_ended()

    async def linger(self) -> None:
        await self._stream_over.wait()
        await trio.sleep(self._delay)
        super().stream_ended()


class FakeLauncher(ex.Launcher):
    """Starts fake runners; ``plans`` says how each launch goes, in order ("ok" once
    they are used up), or is a function of the launch number; each start takes
    ``start_time`` seconds. ``linger``: after its connection ends, a runner's "process"
    takes that long to be gone (its exit status is awaited that long). ``pong_delay``: how
    long each runner takes to answer a ping."""

    def __init__(
        self,
        plans: list[Plan] | Callable[[int], Plan] = (),  # type: ignore[assignment]
        *,
        start_time: float = 0.0,
        linger: float = 0.0,
        pong_delay: float = 0.0,
    ) -> None:
        self._pong_delay = pong_delay
        self._plans = plans
        self._start_time = start_time
        self._linger = linger
        self._numbers = itertools.count()
        self.launches = 0
        self.runners: dict[int, FakeRunnerProcess] = {}  # by the pid each reports

    def _plan(self, number: int) -> Plan:
        if callable(self._plans):
            return self._plans(number)
        return self._plans[number] if number < len(self._plans) else "ok"

    def by_runner(self, runner: ex.Runner) -> FakeRunnerProcess:
        return self.runners[runner.welcome.pid]

    @contextlib.asynccontextmanager
    async def launch(self, options: ex.RunnerOptions) -> AsyncIterator[ex.RunnerHandle]:
        number = next(self._numbers)
        self.launches += 1
        plan = self._plan(number)
        if self._start_time:
            await trio.sleep(self._start_time)  # an interpreter's start, in virtual time
        if plan == "fail":
            raise ex.RunnerStartError(f"fake runner {number} could not start", returncode=3)
        if plan == "oserror":
            raise OSError(24, "Too many open files")
        if plan == "refuse":
            raise ex.RunnerStartError(f"fake runner {number} cannot start", retryable=False)
        client_stream, runner_stream = trio.testing.memory_stream_pair()
        fake = FakeRunnerProcess(number, runner_stream)
        fake.pong_delay = self._pong_delay
        self.runners[1000 + number] = fake
        handle = LingeringHandle(client_stream, f"fake runner {number}", self._linger)
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                try:
                    await fake.serve(plan)
                finally:
                    with trio.CancelScope(shield=True):
                        await runner_stream.aclose()

            nursery.start_soon(run)
            nursery.start_soon(handle.linger)
            try:
                yield handle
            finally:
                await handle.close(wait=0)
                nursery.cancel_scope.cancel()


def value_runner(value: Any) -> int:
    """The fake runner number an op's value came from."""
    number: int = value[0]
    return number
