"""Unit tests of the client against a scripted fake runner over in-memory streams.

The fake plays the runner side with the real sans-IO ``Connection("runner")``, so every
frame the client sends is checked by the same state machine a real runner uses. Timing
logic (handshake timeout, cancel grace) runs on trio's autojump clock.
"""

from __future__ import annotations

import codecs
import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import execpy_trio as ex
import execpy_trio.protocol as P
from fake_runner import WELCOME, FakeRunner, cancelled_then_serve, ok_done, scripted

# --- handshake ---------------------------------------------------------------------------


async def test_handshake_gives_welcome_info() -> None:
    async def script(fake: FakeRunner) -> None:
        hello = await fake.expect(P.Hello)
        assert hello.version == P.PROTOCOL_VERSION
        assert hello.impl_name == "execpy-trio"
        await fake.send(WELCOME)
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, fake):
        assert runner.pid == 4242
        assert runner.welcome.impl_name == "fake"
        assert runner.is_alive and runner.state == "running"
        assert runner.process is None
    assert runner.state == "closed"
    assert type(fake.received[-1]) is P.Shutdown


async def test_no_welcome_times_out(autojump_clock: trio.abc.Clock) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.expect(P.Hello)
        await trio.sleep_forever()

    start = trio.current_time()
    with pytest.raises(ex.RunnerStartError, match=r"no welcome .* handshake_timeout=3"):
        async with scripted(script, handshake_timeout=3):
            pytest.fail("must not get a runner")  # pragma: no cover
    assert trio.current_time() - start == pytest.approx(3, abs=0.1)


async def test_garbage_instead_of_welcome() -> None:
    got: list[Any] = []

    async def script(fake: FakeRunner) -> None:
        await fake.expect(P.Hello)
        await fake.send_raw(b"\x00\x00\x00\x03abc")
        got.append(await fake.receive())

    with pytest.raises(ex.RunnerStartError, match="handshake failed") as info:
        async with scripted(script):
            pass  # pragma: no cover
    assert isinstance(info.value.__cause__, ex.RemoteProtocolError)
    # The client told the runner why it hangs up.
    assert type(got[0]) is P.Error and got[0].fatal


async def test_version_mismatch() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.expect(P.Hello)
        wire = WELCOME.to_wire()
        wire["version"] = [2, 0]
        await fake.send_raw(P.frame(P.pack_body(wire)))

    with pytest.raises(ex.RunnerStartError, match="version"):
        async with scripted(script):
            pass  # pragma: no cover


async def test_runner_refuses_handshake() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.expect(P.Hello)
        await fake.send(P.Error("version-mismatch", "I speak 7.0", fatal=True))

    with pytest.raises(ex.RunnerStartError, match=r"I speak 7\.0"):
        async with scripted(script):
            pass  # pragma: no cover


async def test_runner_closes_before_welcome() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.expect(P.Hello)

    with pytest.raises(ex.RunnerStartError, match="closed the connection before its welcome"):
        async with scripted(script):
            pass  # pragma: no cover


# --- exec, eval --------------------------------------------------------------------------


async def test_exec_result_and_wire_fields() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        assert (req.code, req.allow_stdin, req.stdin, req.variables) == (
            "x = 40\nx + 2",
            False,
            "bob\n",
            {"data": [1, 2]},
        )
        await fake.send(P.Output(req.op, "stdout", b"hi "))
        await fake.send(P.Output(req.op, "stderr", b"warn \xff"))
        await fake.send(P.Output(req.op, "stdout", b"there\n"))
        await fake.send(P.Done(req.op, "ok", "42"))
        req = await fake.expect(P.Exec)
        assert req.op == 2  # op ids increase
        err = {"type": "ZeroDivisionError", "message": "division by zero", "traceback": "TB"}
        await fake.send(P.Done(req.op, "error", None, err))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        r = await runner.exec("x = 40\nx + 2", stdin="bob\n", variables={"data": [1, 2]})
        assert r == ex.ExecResult("ok", "42", "hi there\n", "warn \ufffd", None)
        assert r.check() is r and r.ok
        r = await runner.exec("1/0")
        assert r.status == "error" and not r.ok
        assert r.error == ex.ErrorInfo("ZeroDivisionError", "division by zero", "TB")
        with pytest.raises(ex.CodeError, match="ZeroDivisionError") as info:
            r.check()
        assert info.value.result is r
        stats = runner.statistics()
        assert (stats.ops_started, stats.ops_completed, stats.busy) == (2, 2, False)


async def test_eval_returns_data_and_raises_code_error() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Eval)
        assert (req.expr, req.variables) == ("[x, name]", {"x": 1})
        await fake.send(P.Output(req.op, "stdout", b"ignored"))
        await fake.send(P.Done(req.op, "ok", [40, "bob"]))
        req = await fake.expect(P.Eval)
        err = {"type": "NameError", "message": "name 'y' is not defined", "traceback": "T"}
        await fake.send(P.Done(req.op, "error", None, err))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        assert await runner.eval("[x, name]", variables={"x": 1}) == [40, "bob"]
        with pytest.raises(ex.CodeError, match="NameError") as info:
            await runner.eval("y")
        assert info.value.result.status == "error"


async def test_exec_stream_with_input() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        assert req.allow_stdin
        await fake.send(P.Output(req.op, "stdout", b"n? "))
        await fake.send(P.InputRequest(req.op, "n? "))
        reply = await fake.expect(P.InputReply)
        assert reply.text == "21"
        await fake.send(P.InputRequest(req.op, "pw: ", password=True))
        reply = await fake.expect(P.InputReply)
        assert reply.text is None
        await fake.send(P.Output(req.op, "stdout", b"42\n"))
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    events: list[Any] = []
    async with scripted(script) as (runner, _fake):
        async with runner.exec_stream("n = input('n? ')") as op:
            with pytest.raises(RuntimeError, match="not finished"):
                op.result  # noqa: B018
            with pytest.raises(ex.LocalProtocolError, match="no pending input request"):
                await op.send_input("too early")
            async for event in op:
                events.append(event)
                if isinstance(event, ex.InputRequest):
                    if event.password:
                        await op.send_eof()
                    else:
                        await op.send_input("21\n")
                        with pytest.raises(ex.LocalProtocolError):
                            await op.send_input("twice")
        assert op.result.stdout == "n? 42\n"
        with pytest.raises(ex.LocalProtocolError, match="already finished"):
            await op.send_input("late")
    assert events == [
        ex.Output("stdout", b"n? "),
        ex.InputRequest("n? ", False),
        ex.InputRequest("pw: ", True),
        ex.Output("stdout", b"42\n"),
    ]


async def test_output_text_decodes_split_characters() -> None:
    snowman = "☃".encode()

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.Output(req.op, "stdout", b"a" + snowman[:1]))
        await fake.send(P.Output(req.op, "stdout", snowman[1:] + b"b"))
        await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        async with runner.exec_stream("print('a☃b')") as op:
            texts = [event.text async for event in op if isinstance(event, ex.Output)]
        assert texts == ["a", "☃b"]
        assert op.result.stdout == "a☃b"


utf8ish = st.lists(
    st.one_of(
        st.text(max_size=8).map(str.encode),
        st.binary(max_size=6),  # anything: invalid bytes, stray continuations, leads
        st.sampled_from([b"\xe2", b"\x82", b"\xf0\x9f", b"\xed\xa0", b"\xc0", b"\xf4\x90"]),
    ),
    max_size=12,
)


@given(utf8ish, st.randoms(use_true_random=False))
def test_output_text_is_what_an_incremental_decoder_gives(
    pieces: list[bytes], rnd: random.Random
) -> None:
    # Decoded only when asked for, in any order, and the same as decoding as they came.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    carry = b""
    events = []
    for data in [p for p in pieces if p]:
        event, carry = ex.Output._split("stdout", data, carry)
        events.append((event, decoder.decode(data)))
    rnd.shuffle(events)
    for event, expected in events:
        assert event.text == expected
        assert event == ex.Output("stdout", event.data, expected)


def test_output_is_immutable_and_hashable() -> None:
    out = ex.Output("stderr", b"caf\xc3\xa9")
    assert out.text == "café"
    assert out == ex.Output("stderr", b"caf\xc3\xa9", "café") != ex.Output("stdout", out.data)
    assert hash(out) == hash(ex.Output("stderr", b"caf\xc3\xa9"))
    assert repr(out) == "Output(stream='stderr', data=b'caf\\xc3\\xa9', text='café')"
    with pytest.raises(AttributeError):
        out.data = b""  # type: ignore[misc]


async def test_rejected_op_keeps_runner_usable() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.Error("busy", "an op is running", op=req.op))
        await ok_done(fake, "1")
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        with pytest.raises(ex.OperationRejected, match="busy") as info:
            await runner.exec("x")
        assert isinstance(info.value, ex.ProtocolError) and info.value.code == "busy"
        assert (await runner.exec("1")).value == "1"


async def test_ping_and_unknown_kind() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.send_raw(P.frame(P.pack_body({"kind": "future-thing", "x": 1})))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, fake):
        with trio.fail_after(5):
            rtt = await runner.ping()
        assert 0 <= rtt < 5
        assert runner.is_alive
    answers = [m for m in fake.received if type(m) is P.Error]
    assert [(m.code, m.fatal, m.op) for m in answers] == [("unknown-kind", False, None)]


# --- FIFO ----------------------------------------------------------------------------------


async def test_concurrent_callers_are_served_in_fifo_order() -> None:
    seen: list[str] = []

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        for _ in range(5):
            req = await fake.expect(P.Exec)
            seen.append(req.code)
            await trio.sleep(0.01)  # overlap: later callers must wait, not collide
            await fake.send(P.Done(req.op, "ok", repr(req.code)))
        await fake.serve_until_shutdown()

    results: dict[str, ex.ExecResult] = {}
    async with scripted(script) as (runner, _fake):

        async def call(code: str) -> None:
            results[code] = await runner.exec(code)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(call, f"c{i}")
                await trio.testing.wait_all_tasks_blocked()
    assert seen == [f"c{i}" for i in range(5)]
    assert {c: r.value for c, r in results.items()} == {f"c{i}": repr(f"c{i}") for i in range(5)}


async def test_a_caller_looping_does_not_overtake_a_waiting_one() -> None:
    """The uncontended fast path must not jump the queue: a waiter goes first."""
    seen: list[str] = []

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        for _ in range(4):
            req = await fake.expect(P.Exec)
            seen.append(req.code)
            await trio.sleep(0.01)
            await fake.send(P.Done(req.op, "ok"))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):

        async def looper() -> None:
            for i in range(3):
                await runner.exec(f"a{i}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(looper)
            await trio.testing.wait_all_tasks_blocked()  # a0 is running
            nursery.start_soon(runner.exec, "b0")
    assert seen == ["a0", "b0", "a1", "a2"]


async def test_exec_is_a_checkpoint_and_a_cancelled_call_sends_nothing() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await ok_done(fake, "1")
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, fake):
        with trio.CancelScope() as scope:
            scope.cancel()
            await runner.exec("never sent")
        assert scope.cancelled_caught
        with trio.testing.assert_checkpoints():
            assert (await runner.exec("1")).value == "1"
        assert runner.statistics().ops_started == 1
    assert [type(m) for m in fake.received] == [P.Hello, P.Exec, P.Shutdown]


# --- failures ------------------------------------------------------------------------------


async def test_garbage_mid_op_is_a_remote_protocol_error() -> None:
    got: list[Any] = []

    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.send_raw(b"\x00\x00\x00\x01\xc1")  # 0xc1 is never valid msgpack
        got.append(await fake.receive())
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        with pytest.raises(ex.RemoteProtocolError, match="while op 1") as info:
            await runner.exec("x = 1")
        assert "unusable" in str(info.value)
        assert runner.state == "dead"
        with pytest.raises(ex.RemoteProtocolError):
            await runner.exec("x = 2")
    assert type(got[0]) is P.Error and got[0].fatal and got[0].code == "bad-frame"


async def test_completion_for_unknown_op() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send_raw(P.frame(P.pack_body(P.Done(req.op + 7, "ok").to_wire())))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        with pytest.raises(ex.RemoteProtocolError, match="op 8"):
            await runner.exec("x = 1")


async def test_output_after_completion_breaks_the_connection() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await ok_done(fake)
        await fake.send_raw(P.frame(P.pack_body(P.Output(req.op, "stdout", b"late").to_wire())))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        assert (await runner.exec("x = 1")).ok
        with trio.fail_after(5):
            await runner._transport.reader_done.wait()
        assert not runner.is_alive
        with pytest.raises(ex.RemoteProtocolError, match=r"op 1\b.*in flight is None"):
            await runner.exec("x = 2")


async def test_stream_breaks_mid_op_gives_runner_died() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.Output(req.op, "stdout", b"partial"))
        await fake.close()

    async with scripted(script) as (runner, _fake):
        with pytest.raises(ex.RunnerDied) as info:
            await runner.exec("import os; os._exit(3)")
        err = info.value
        assert err.op is not None and "op 1" in err.op and "os._exit" in err.op
        assert err.pid == 4242 and err.returncode is None and err.signal is None
        assert "closed the connection" in str(err) and "start a new one" in str(err)
        assert runner.state == "dead"
        # Later calls fail at once with the very same error (decided once), cause kept.
        with pytest.raises(ex.RunnerDied) as again:
            await runner.exec("x")
        assert again.value is err
        assert err.__cause__ is not None


async def test_runner_dies_while_idle() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.close()

    async with scripted(script) as (runner, _fake):
        await trio.testing.wait_all_tasks_blocked()
        assert runner.state == "dead"
        with pytest.raises(ex.RunnerDied, match="while idle"):
            await runner.exec("x")
        with pytest.raises(ex.RunnerDied):
            await runner.ping()


async def test_fatal_error_from_runner() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.send(P.Error("internal", "runner bug", fatal=True))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        with pytest.raises(ex.RemoteProtocolError, match=r"fatal protocol error .*runner bug"):
            await runner.exec("x")


# --- cancellation ----------------------------------------------------------------------------


async def test_cancel_is_answered_and_runner_stays_usable(autojump_clock: trio.abc.Clock) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.Output(req.op, "stdout", b"tick\n"))
        await fake.expect(P.Cancel)
        await fake.send(P.Output(req.op, "stderr", b"KeyboardInterrupt\n"))
        await fake.send(P.Done(req.op, "cancelled"))
        await ok_done(fake, "2")
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, fake):
        with trio.move_on_after(1) as scope:
            await runner.exec("while True: pass")
        assert scope.cancelled_caught
        assert runner.is_alive
        assert (await runner.exec("1 + 1")).value == "2"
        assert runner.statistics().ops_cancelled == 1
    assert [type(m) for m in fake.received] == [P.Hello, P.Exec, P.Cancel, P.Exec, P.Shutdown]


async def test_unanswered_cancel_kills_after_grace(autojump_clock: trio.abc.Clock) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.expect(P.Cancel)
        # Ignore it: a hung runner. The client must give up after cancel_grace.
        msg = await fake.receive()
        assert isinstance(msg, P.ConnectionClosed)

    async with scripted(script, cancel_grace=2.5) as (runner, _fake):
        start = trio.current_time()
        with trio.move_on_after(1):
            await runner.exec("while True: pass")
        assert trio.current_time() - start == pytest.approx(3.5, abs=0.1)
        assert runner.state == "dead"
        with pytest.raises(ex.RunnerDied, match=r"cancel_grace=2\.5"):
            await runner.exec("x")


async def test_stream_result_after_an_unanswered_cancel(autojump_clock: trio.abc.Clock) -> None:
    # The caller's scope swallowed the Cancelled; the result must still say what happened
    # and keep the output that came, not raise "has not finished".
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.send(P.Output(req.op, "stdout", b"partial\n"))
        await fake.expect(P.Cancel)
        msg = await fake.receive()
        assert isinstance(msg, P.ConnectionClosed)

    async with scripted(script, cancel_grace=1) as (runner, _fake):
        with trio.move_on_after(5):
            async with runner.exec_stream("while True: pass") as op:
                async for _event in op:
                    pass
        assert runner.state == "dead"
        assert op.result.status == "cancelled"
        assert op.result.stdout == "partial\n"
        assert op.result.error is not None and op.result.error.type == "RunnerDied"
        assert "cancel_grace=1" in op.result.error.message


async def test_abandoned_stream_is_cancelled() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        for i in range(3):
            await fake.send(P.Output(req.op, "stdout", b"%d\n" % i))
        await fake.expect(P.Cancel)
        await fake.send(P.Done(req.op, "cancelled"))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        async with runner.exec_stream("while True: print(1)") as op:
            async for _event in op:
                break
        assert op.result.status == "cancelled"
        assert op.result.stdout == "0\n1\n2\n"  # drained output is kept
        assert runner.is_alive


async def test_exception_in_stream_body_cancels_and_propagates_unwrapped() -> None:
    with pytest.raises(KeyError) as info:
        async with scripted(cancelled_then_serve) as (runner, _fake):
            async with runner.exec_stream("input()"):
                raise KeyError("mine")
    assert type(info.value) is KeyError  # not an ExceptionGroup


async def test_cancel_waiting_for_input_answers_eof() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        req = await fake.expect(P.Exec)
        await fake.expect(P.Cancel)
        # The runner asks for input again while the cancel is in flight: the cancelling
        # client must answer EOF rather than leave it waiting.
        await fake.send(P.InputRequest(req.op, "again? "))
        reply = await fake.expect(P.InputReply)
        assert reply.text is None
        await fake.send(P.Done(req.op, "cancelled"))
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        with trio.move_on_after(0.2):
            async with runner.exec_stream("input()") as op:
                async for _ in op:
                    pass  # pragma: no cover
        assert op.result.status == "cancelled"
        assert runner.is_alive


async def test_cancel_gets_through_a_full_output_channel(autojump_clock: trio.abc.Clock) -> None:
    """Backpressure holds the runner's writer, yet a cancel and its completion get through."""
    sent = 0
    cancelled = trio.Event()

    async def script(fake: FakeRunner) -> None:
        nonlocal sent
        await fake.handshake()
        req = await fake.expect(P.Exec)

        async def flood() -> None:
            nonlocal sent
            while not cancelled.is_set():
                await fake.send(P.Output(req.op, "stdout", b"x" * 100))
                sent += 1
            await fake.send(P.Done(req.op, "cancelled"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await fake.expect(P.Cancel)
            cancelled.set()
        await fake.serve_until_shutdown()

    async with scripted(script, lockstep=True, op_buffer=2) as (runner, _fake):
        with trio.move_on_after(10):
            async with runner.exec_stream("while True: print('x' * 99)") as op:
                await op.__anext__()
                await trio.sleep(5)  # stop reading: the reader and then the runner block
                # Bounded: the op channel (2) plus the frame in the reader's hands, plus
                # one the fake is blocked writing.
                assert sent <= 5
                await trio.sleep_forever()
        assert op.result.status == "cancelled"
        assert runner.is_alive


async def test_body_exception_is_not_wrapped_in_a_group() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.serve_until_shutdown()

    with pytest.raises(ValueError, match="boom") as info:
        async with scripted(script):
            raise ValueError("boom")
    assert type(info.value) is ValueError


async def test_leaving_under_cancellation_still_shuts_down() -> None:
    client_stream, runner_stream = trio.testing.memory_stream_pair()
    fake = FakeRunner(runner_stream)

    async def script() -> None:
        await fake.handshake()
        await fake.serve_until_shutdown()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        with trio.CancelScope() as scope:
            async with ex.connect_runner(client_stream):
                scope.cancel()
                await trio.sleep_forever()
    assert scope.cancelled_caught
    # A cancelled close skips the polite shutdown: the stream is simply closed.
    assert [type(m) for m in fake.received] == [P.Hello]
    assert fake.closed


async def test_closed_runner_refuses_ops() -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        await runner.aclose()
        await runner.aclose()  # idempotent
        assert runner.state == "closed"
        with pytest.raises(trio.ClosedResourceError, match="closed"):
            await runner.exec("x")
        with pytest.raises(trio.ClosedResourceError):
            await runner.ping()


async def test_close_while_op_runs_in_another_task(autojump_clock: trio.abc.Clock) -> None:
    async def script(fake: FakeRunner) -> None:
        await fake.handshake()
        await fake.expect(P.Exec)
        await fake.serve_until_shutdown()

    async with scripted(script) as (runner, _fake):
        errors: list[BaseException] = []

        async def long_op() -> None:
            try:
                await runner.exec("import time; time.sleep(100)")
            except BaseException as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_op)
            await trio.testing.wait_all_tasks_blocked()
            await runner.aclose()
    # The close interrupts the op first; this fake ignores the cancel, so it is killed.
    assert len(errors) == 1 and isinstance(errors[0], ex.RunnerDied)
    assert "cancel_grace" in str(errors[0])


async def test_bad_options_fail_before_starting() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        async with ex.open_runner(max_frame=10):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="op_buffer"):
        async with ex.open_runner(op_buffer=0):
            pass  # pragma: no cover


async def test_stderr_tail_stays_bounded_without_newlines() -> None:
    from execpy_trio.launch._local import STDERR_LINE_MAX, StderrTail

    keeper = StderrTail()
    send, receive = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.read_from, receive)
        for _ in range(64):  # 4 MiB in one line: a peer that never ends its line
            await send.send_all(b"x" * 65536)
        await send.send_all(b"y\nlast")
        await send.aclose()
    tail = keeper.lines()
    assert tail[-1] == "last"
    assert tail[-2] == "x" * (STDERR_LINE_MAX - 1) + "y"
