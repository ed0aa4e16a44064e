"""The session after the launcher split: one death path, bounded result memory, the close
that interrupts first, op state, slow peers, notices that never block the reader.

Fake runners over memory streams, timing on trio's autojump clock (no wall clock).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import execpy_trio as ex
import execpy_trio.protocol as P
from execpy_trio._transport import TransportBroken
from fake_runner import FakeRunner, Script, cancelled_then_serve, scripted

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup

# --- bounded result memory ---------------------------------------------------------------


async def test_exec_result_keeps_at_most_the_limit_and_says_so() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        for i in range(10):
            await fake.send(P.Output(req.op, "stdout", bytes([65 + i]) * 1000))
        await fake.send(P.Output(req.op, "stderr", b"E" * 1000))
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script, result_output_limit=2500) as (runner, _):
        result = await runner.exec("print('lots')")
    assert result.stdout == "A" * 1000 + "B" * 1000 + "C" * 500  # the first bytes written
    assert result.stderr == ""
    assert result.output_dropped == 11_000 - 2500
    assert result.truncated


async def test_stream_events_deliver_everything_while_the_result_is_capped() -> None:
    chunks = [bytes([97 + i % 26]) * 4096 for i in range(64)]

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        for chunk in chunks:
            await fake.send(P.Output(req.op, "stdout", chunk))
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script, result_output_limit=10_000) as (runner, _):
        seen = []
        async with runner.exec_stream("spam()") as op:
            async for event in op:
                assert isinstance(event, ex.Output)
                seen.append(event.data)
    assert seen == chunks
    assert len(op.result.stdout) == 10_000
    assert op.result.output_dropped == 64 * 4096 - 10_000


async def test_unlimited_result_keeps_everything() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        for _ in range(40):
            await fake.send(P.Output(req.op, "stdout", b"x" * 65536))
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script, result_output_limit=None) as (runner, _):
        result = await runner.exec("x")
    assert len(result.stdout) == 40 * 65536 and not result.truncated


def test_bad_result_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="result_output_limit"):
        ex.RunnerOptions(result_output_limit=-1)


# --- one death path ----------------------------------------------------------------------


async def test_every_waiter_raises_the_same_error() -> None:
    release = trio.Event()

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.expect(P.Ping)
        await release.wait()
        await fake.close()

    errors: list[BaseException] = []
    async with scripted(script) as (runner, _):

        async def run(coro_fn: object) -> None:
            try:
                await coro_fn()  # type: ignore[operator]
            except ex.RunnerDied as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, lambda: runner.exec("import time; time.sleep(9)"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(run, runner.ping)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        await runner.wait_closed()
        assert runner.state == "dead"
        with pytest.raises(ex.RunnerDied) as later:
            await runner.exec("x")
    assert len(errors) == 2 and errors[0] is errors[1] is later.value
    died = errors[0]
    assert isinstance(died, ex.RunnerDied)
    assert died.op is not None and "op 1" in died.op
    assert died.__cause__ is not None  # the transport's own failure is kept


async def test_wait_closed_returns_when_an_idle_runner_dies() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.close()

    async with scripted(script) as (runner, _):
        with trio.fail_after(5):
            await runner.wait_closed()
        assert not runner.is_alive


async def test_wait_closed_returns_after_aclose() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.wait_closed)
            await trio.testing.wait_all_tasks_blocked()
            await runner.aclose()
    assert runner.state == "closed"


def test_transport_broken_is_a_trio_broken_resource_error() -> None:
    assert issubclass(TransportBroken, trio.BrokenResourceError)


# --- a cancel scope around the runner itself ---------------------------------------------


@contextlib.asynccontextmanager
async def fake_outside(script: Script) -> AsyncIterator[trio.abc.Stream]:
    """A fake runner whose task lives outside the scope that the test cancels."""
    client_stream, runner_stream = trio.testing.memory_stream_pair()
    fake = FakeRunner(runner_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(script, fake)
        yield client_stream


def _answers_cancel(received: list[type]) -> Script:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        while True:
            msg = await fake.receive()
            if isinstance(msg, P.ConnectionClosed):
                await fake.close()
                return
            received.append(type(msg))
            if type(msg) is P.Cancel:
                await fake.send(P.Output(req.op, "stderr", b"KeyboardInterrupt\n"))
                await fake.send(P.Done(req.op, "cancelled"))
            elif type(msg) is P.Shutdown:
                await fake.close()
                return

    return script


@pytest.mark.parametrize("mode", ["exec", "exec_stream"])
async def test_deadline_around_the_runner_interrupts_the_op_first(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    received: list[type] = []
    op: ex.Operation | None = None
    start = trio.current_time()
    async with fake_outside(_answers_cancel(received)) as stream:
        with trio.move_on_after(5) as scope:
            async with ex.connect_runner(stream, cancel_grace=2) as runner:
                if mode == "exec":
                    await runner.exec("while True: pass")
                else:
                    async with runner.exec_stream("while True: pass") as op:
                        await trio.sleep_forever()  # not reading: still cancelled
    assert scope.cancelled_caught
    assert received[0] is P.Cancel  # interrupted before anything else was said
    assert P.Shutdown not in received  # a cancelled close skips the polite shutdown
    assert trio.current_time() - start < 5 + 2 + 0.5
    if op is not None:
        assert op.finished and op.result.status == "cancelled"
        assert op.result.stderr == "KeyboardInterrupt\n"


async def test_deadline_around_a_runner_that_ignores_the_cancel(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.serve_until_shutdown()  # ignores the cancel

    op: ex.Operation | None = None
    start = trio.current_time()
    async with fake_outside(script) as stream:
        with trio.move_on_after(1):
            async with ex.connect_runner(stream, cancel_grace=2) as runner:
                async with runner.exec_stream("while True: pass") as op:
                    await trio.sleep_forever()
    # Left within the deadline plus about the grace (then killed), not the shutdown timeout.
    assert trio.current_time() - start <= 1 + 2 + 0.1
    assert op is not None and op.finished and op.state == "lost"
    assert op.result.status == "cancelled"
    assert op.result.error is not None and op.result.error.type == "RunnerDied"


async def test_closing_from_another_task_interrupts_the_op(autojump_clock: trio.abc.Clock) -> None:
    received: list[type] = []
    results: list[ex.ExecResult] = []
    async with scripted(_answers_cancel(received)) as (runner, _):

        async def long_op() -> None:
            results.append(await runner.exec("import time; time.sleep(100)"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_op)
            await trio.testing.wait_all_tasks_blocked()
            await runner.aclose()
    assert received[:2] == [P.Cancel, P.Shutdown]  # cancel first, then the polite shutdown
    assert [r.status for r in results] == ["cancelled"]


async def test_cancelled_aclose_skips_the_polite_shutdown() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, fake):
        with trio.CancelScope() as scope:
            scope.cancel()
            await runner.aclose()
        assert runner.state == "closed"
    assert [type(m) for m in fake.received] == [P.Hello]


# --- op state ----------------------------------------------------------------------------


async def test_two_consumers_of_one_operation(autojump_clock: trio.abc.Clock) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await trio.sleep(1)
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _):
        async with runner.exec_stream("x") as op:
            async with trio.open_nursery() as nursery:

                async def first() -> None:
                    async for _ in op:
                        pass  # pragma: no cover - the fake sends no events

                nursery.start_soon(first)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError, match="one consumer"):
                    await op.__anext__()
        assert op.state == "completed" and op.result.status == "ok"


async def test_rejected_op_state_and_result() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.Error("busy", "another op runs", op=req.op))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _):
        async with runner.exec_stream("x") as op:
            with pytest.raises(ex.OperationRejected) as info:
                async for _ in op:
                    pass  # pragma: no cover
        assert op.finished and op.state == "rejected"
        with pytest.raises(ex.OperationRejected) as again:
            op.result  # noqa: B018 - the property raises
        assert again.value is info.value
        assert runner.is_alive


async def test_op_lost_without_cancel_raises_from_result() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.close()

    async with scripted(script) as (runner, _):
        with pytest.raises(ex.RunnerDied) as info:
            async with runner.exec_stream("x") as op:
                async for _ in op:
                    pass  # pragma: no cover
        assert op.finished and op.state == "lost"
        with pytest.raises(ex.RunnerDied) as again:
            op.result  # noqa: B018 - the property raises
        assert again.value is info.value


async def test_leaving_at_a_pending_input_request_answers_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    received: list[P.Message] = []

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.InputRequest(req.op, "name? "))
        received.append(await fake.expect(P.Cancel))
        received.append(await fake.expect(P.InputReply))
        await fake.send(P.Done(req.op, "cancelled"))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _):
        async with runner.exec_stream("input('name? ')") as op:
            async for event in op:
                assert isinstance(event, ex.InputRequest)
                break  # leave the block with the request pending
        assert op.result.status == "cancelled"
    assert received == [P.Cancel(1), P.InputReply(1, None)]


# --- slow but live peers -----------------------------------------------------------------


async def _slow_reader(fake: FakeRunner, per_second: int) -> P.Message | P.ConnectionClosed:
    """Receive one message, reading ``per_second`` bytes a second in 16 KiB steps."""
    step = 16 * 1024
    while True:
        event = fake.conn.next_event()
        if event is not P.NEED_DATA:
            return event  # type: ignore[no-any-return]
        data = await fake.stream.receive_some(step)
        fake.conn.receive_data(data)
        await trio.sleep(len(data) / per_second)


async def test_slow_but_live_peer_is_not_declared_dead(autojump_clock: trio.abc.Clock) -> None:
    big = "x = 1  # " + "y" * (8 * 1024 * 1024)

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await _slow_reader(fake, 400 * 1024)  # ~20 s for the frame
        assert type(req) is P.Exec
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script, lockstep=True, write_timeout=3) as (runner, _):
        start = trio.current_time()
        result = await runner.exec(big)
        assert result.status == "ok"
        assert trio.current_time() - start > 10  # longer than any total-time bound would allow


async def test_cancel_during_a_long_write_is_cancelled_not_runner_died(
    autojump_clock: trio.abc.Clock,
) -> None:
    big = "x = 1  # " + "y" * (8 * 1024 * 1024)

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await _slow_reader(fake, 400 * 1024)
        assert type(req) is P.Exec
        await fake.expect(P.Cancel)
        await fake.send(P.Done(req.op, "cancelled"))
        nxt = await fake.expect(P.Exec)
        await fake.send(P.Done(nxt.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script, lockstep=True, write_timeout=3) as (runner, _):
        with trio.move_on_after(5) as scope:
            await runner.exec(big)
        assert scope.cancelled_caught  # Cancelled, once the frame was out: not RunnerDied
        assert runner.is_alive
        assert (await runner.exec("x")).status == "ok"  # and the runner is still usable


async def test_a_peer_that_stops_reading_is_declared_dead(autojump_clock: trio.abc.Clock) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await trio.sleep(1000)  # reads nothing for a long time (then lets the test end)

    async with scripted(script, lockstep=True, write_timeout=3) as (runner, _):
        start = trio.current_time()
        with pytest.raises(ex.RunnerDied, match="no progress for 3") as info:
            await runner.exec("x = 1")
        assert info.value.op is not None and "op 1" in info.value.op
        assert trio.current_time() - start < 3 + 2 * 2 + 1


# --- notices never block the reader ------------------------------------------------------


async def test_unknown_kinds_flood_does_not_stall_the_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        # Many unknown kinds while not reading our answers (a lockstep stream: an answer
        # can only be written when we read).
        for i in range(500):
            await fake.send_raw(P.frame(P.pack_body({"kind": f"x-notice-{i}"})))
        await fake.send(P.Done(req.op, "ok"))
        await trio.sleep(1)
        answers = 0
        while True:
            msg = await fake.receive()
            if type(msg) is P.Error and msg.code == "unknown-kind":
                answers += 1
            elif type(msg) is P.Ping:
                await fake.send(P.Pong(msg.token))
            else:
                break
        assert 1 <= answers <= 16 + 1  # the queue is bounded; the rest were dropped
        await fake.close()

    async with scripted(script, lockstep=True) as (runner, _):
        start = trio.current_time()
        result = await runner.exec("x")
        assert result.status == "ok"
        assert trio.current_time() - start < 1  # no per-notice wait
        assert runner.statistics().transport.notices_dropped >= 500 - 17
        await runner.ping()


# --- found in review ---------------------------------------------------------------------


async def test_aclose_inside_an_unread_stream_block_reads_the_completion(
    autojump_clock: trio.abc.Clock,
) -> None:
    received: list[type] = []
    start = trio.current_time()
    async with scripted(_answers_cancel(received), cancel_grace=2) as (runner, _):
        async with runner.exec_stream("while True: pass") as op:
            await runner.aclose()  # nobody iterates the op: the shutdown reads for it
            assert trio.current_time() - start < 2  # not a grace wait, then a kill
    assert op.state == "completed" and op.result.status == "cancelled"
    assert op.result.stderr == "KeyboardInterrupt\n"
    assert received[0] is P.Cancel


async def test_nested_op_in_the_same_task_is_a_clear_error() -> None:
    async with scripted(cancelled_then_serve) as (runner, _):
        with pytest.raises(RuntimeError, match="already running op 1"):
            async with runner.exec_stream("x"):
                await runner.exec("y")


async def test_the_shared_error_does_not_grow_with_every_raise() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.close()

    async with scripted(script) as (runner, _):
        await runner.wait_closed()
        for _ in range(200):
            with pytest.raises(ex.RunnerDied) as info:
                await runner.exec("x")
    frames = list(traceback.walk_tb(info.value.__traceback__))
    assert len(frames) < 20  # one raise's worth, not 200


async def test_the_users_own_exception_group_is_not_unwrapped() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.serve_until_shutdown()

    leaf = ValueError("x")
    async with fake_outside(script) as stream:
        with pytest.raises(BaseExceptionGroup) as info:
            async with ex.connect_runner(stream):
                raise BaseExceptionGroup("mine", [leaf])
    # The user's group arrives as a group (not as its one leaf), with the same leaf.
    assert info.value.message == "mine" and list(info.value.exceptions) == [leaf]
