"""The client against real runner processes: the whole public contract, end to end."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import execpy_trio as ex
from runner_client import wait_for_file_code


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_exec_eval_stdin_variables() -> None:
    with trio.fail_after(20):
        async with ex.open_runner() as runner:
            assert runner.welcome.language == "python"
            assert runner.pid == runner.handle.pid
            r = await runner.exec("x = 40\nx + 2")
            assert (r.status, r.value, r.stdout, r.stderr, r.error) == ("ok", "42", "", "", None)
            assert r.check() is r
            r = await runner.exec("import sys\nprint('out')\nprint('err', file=sys.stderr)")
            assert (r.stdout, r.stderr, r.value) == ("out\n", "err\n", None)
            r = await runner.exec("name = input()", stdin="bob\n")
            assert r.ok
            assert await runner.eval("[x, name]") == [40, "bob"]
            r = await runner.exec("print(data)", variables={"data": [1, 2]})
            assert r.stdout == "[1, 2]\n"
            # exec never waits for input: EOFError at once (waiting, it would wait forever:
            # the fail_after above is the hang detector).
            r = await runner.exec("input('? ')")
            assert r.status == "error" and r.error is not None
            assert r.error.type == "EOFError"


async def test_error_result_has_a_traceback_with_source() -> None:
    async with ex.open_runner() as runner:
        r = await runner.exec("def f():\n    return 1 / 0\n\nf()")
        assert r.status == "error" and r.error is not None
        assert r.error.type == "ZeroDivisionError"
        assert "division by zero" in r.error.message
        assert "return 1 / 0" in r.error.traceback
        with pytest.raises(ex.CodeError, match="ZeroDivisionError") as info:
            r.check()
        assert info.value.result is r
        with pytest.raises(ex.CodeError, match="NameError"):
            await runner.eval("undefined_name")


async def test_output_of_child_processes_arrives_in_order() -> None:
    async with ex.open_runner() as runner:
        r = await runner.exec(
            "import os, subprocess\n"
            "print('a', flush=True)\n"
            "os.write(1, b'b\\n')\n"
            "subprocess.run(['echo', 'c'])\n"
            "print('d')"
        )
        assert r.stdout == "a\nb\nc\nd\n"


async def test_exec_stream_input_and_password() -> None:
    code = (
        "import getpass\nn = input('n? ')\npw = getpass.getpass('pw: ')\nprint(int(n) * 2, len(pw))"
    )
    events: list[object] = []
    with trio.fail_after(20):
        async with ex.open_runner() as runner, runner.exec_stream(code) as op:
            async for event in op:
                events.append(event)
                if isinstance(event, ex.InputRequest):
                    await op.send_input("secret" if event.password else "21")
    requests = [e for e in events if isinstance(e, ex.InputRequest)]
    assert requests == [ex.InputRequest("n? ", False), ex.InputRequest("pw: ", True)]
    assert op.result.ok
    assert op.result.stdout.endswith("42 6\n")


async def test_output_streams_while_code_runs(tmp_path: Path) -> None:
    # Each line waits for a file that the test creates only once it has the line before:
    # had the output been held back until the end, the code would have given up waiting
    # (after 30 s) and said 'timed out'.
    files = [tmp_path / f"go{i}" for i in range(3)]
    code = "".join(
        f"print({i}, flush=True)\n{wait_for_file_code(f)}assert _signalled, 'timed out'\n"
        for i, f in enumerate(files)
    )
    lines: list[bytes] = []
    with trio.fail_after(60):  # a hang detector
        async with ex.open_runner() as runner, runner.exec_stream(code) as op:
            async for event in op:
                if isinstance(event, ex.Output):
                    lines.append(event.data)
                    files[len(lines) - 1].touch()
    assert op.result.ok, op.result.error
    assert lines == [b"0\n", b"1\n", b"2\n"]


@pytest.mark.parametrize(
    "code",
    [
        "while True: pass",
        "import time\ntime.sleep(60)",
        "import subprocess\nsubprocess.run(['sleep', '60'])",
    ],
    ids=["tight-loop", "sleep", "child-process"],
)
async def test_cancel_interrupts_and_runner_stays_usable(code: str) -> None:
    # Had the cancel not interrupted the code, the runner would have been killed after
    # cancel_grace: that it is alive is the check. The fail_after is a hang detector.
    with trio.fail_after(60):
        async with ex.open_runner(cancel_grace=30) as runner:
            with trio.move_on_after(0.3) as scope:
                await runner.exec(code)
            assert scope.cancelled_caught
            assert runner.is_alive, "the cancel did not interrupt the code"
            assert (await runner.exec("n = 1\nn + 1")).value == "2"
            assert runner.statistics().ops_cancelled == 1


async def test_cancel_while_waiting_for_input() -> None:
    async with ex.open_runner(cancel_grace=5) as runner:
        with trio.move_on_after(0.3):
            async with runner.exec_stream("input('never answered: ')") as op:
                async for _event in op:
                    pass
        assert op.result.status == "cancelled"
        assert (await runner.exec("s = 'still here'\ns")).value == "'still here'"


async def test_code_that_catches_the_interrupt_and_reads_again_gets_eof() -> None:
    # The interrupted input() leaves its request outstanding; the client ends it with EOF
    # so the second input() fails at once instead of hanging until cancel_grace expires.
    code = (
        "try:\n"
        "    input('first: ')\n"
        "except KeyboardInterrupt:\n"
        "    try:\n"
        "        input('second: ')\n"
        "    except EOFError:\n"
        "        print('eof after interrupt')\n"
    )
    # Had the second input() hung, the runner would have been killed after cancel_grace
    # (op result cancelled, runner dead). The fail_after is a hang detector.
    with trio.fail_after(60):
        async with ex.open_runner(cancel_grace=30) as runner:
            with trio.move_on_after(0.3):
                async with runner.exec_stream(code) as op:
                    async for _event in op:
                        pass
            assert runner.is_alive, "waited for the grace period"
            assert op.result.status == "ok"
            assert op.result.stdout == "eof after interrupt\n"


async def test_abandoned_stream_is_cancelled() -> None:
    async with ex.open_runner() as runner:
        async with runner.exec_stream("while True: print('spam')") as op:
            async for _event in op:
                break
        assert op.result.status == "cancelled"
        assert (await runner.exec("n = 2\nn")).value == "2"


async def test_code_that_ignores_the_interrupt_gets_killed() -> None:
    code = (
        "import time\n"
        "while True:\n"
        "    try:\n"
        "        time.sleep(10)\n"
        "    except KeyboardInterrupt:\n"
        "        pass\n"
    )
    # Killed once cancel_grace is over; without the kill the code would run forever, so
    # the fail_after is a hang detector, not a speed check.
    async with ex.open_runner(cancel_grace=0.5) as runner:
        with trio.fail_after(30), trio.move_on_after(0.2):
            await runner.exec(code)
        assert runner.state == "dead"
        with pytest.raises(ex.RunnerDied, match=r"cancel_grace=0\.5") as info:
            await runner.exec("1")
        assert info.value.signal == signal.SIGKILL


async def test_runner_killed_mid_op_gives_runner_died_at_once() -> None:
    # Every timeout the client has is set far beyond the hang detector: RunnerDied must
    # come from seeing the death, never from one of them expiring.
    async with ex.open_runner(
        env={"EXECPY_TRACE": "1"}, cancel_grace=600, shutdown_timeout=600, write_timeout=600
    ) as runner:
        pid = runner.pid
        with trio.fail_after(30), pytest.raises(ex.RunnerDied) as info:
            async with runner.exec_stream(
                "import time\nprint('up', flush=True)\ntime.sleep(60)"
            ) as op:
                async for _event in op:
                    os.kill(pid, signal.SIGKILL)
        err = info.value
        assert err.signal == signal.SIGKILL and err.returncode == -signal.SIGKILL
        assert err.pid == pid
        assert err.op is not None and "time.sleep(60)" not in err.op  # first line only
        assert "op 1" in err.op
        assert err.stderr_tail, "the frame log on the runner's stderr should be in the tail"
        assert "SIGKILL" in str(err)


async def test_code_that_exits_gives_runner_died() -> None:
    async with ex.open_runner() as runner:
        with pytest.raises(ex.RunnerDied) as info:
            await runner.exec("import os\nos._exit(7)")
        assert info.value.returncode == 7 and info.value.signal is None
        assert "exited with code 7" in str(info.value)


async def test_leaving_under_cancellation_shuts_down() -> None:
    with trio.CancelScope() as scope:
        async with ex.open_runner() as runner:
            await runner.exec("x = 1")
            scope.cancel()  # the block is left by cancellation, once the runner is up
            await trio.sleep_forever()
    assert runner.returncode is not None
    assert runner.state == "closed"


async def test_orderly_shutdown_exits_cleanly_and_kills_leftover_children() -> None:
    async with ex.open_runner() as runner:
        child = await runner.eval(
            "__import__('subprocess').Popen(['sleep', '60'], start_new_session=False).pid"
        )
        assert not _gone(child)
    assert runner.returncode == 0
    with trio.move_on_after(10):  # a hang detector
        while not _gone(child):  # noqa: ASYNC110 - polling another process's state
            await trio.sleep(0.02)
    assert _gone(child), "a child of the user's code outlived the runner"


async def test_start_runner_in_a_nursery() -> None:
    async with trio.open_nursery() as nursery:
        runner = await ex.start_runner(nursery)
        assert (await runner.eval("1 + 2")) == 3
        await runner.aclose()
        assert runner.state == "closed" and runner.returncode == 0
        runner2 = await ex.start_runner(nursery)
        assert runner2.is_alive
        nursery.cancel_scope.cancel()  # cancelling the nursery shuts it down too
    assert runner2.returncode is not None


async def test_stdio_mode() -> None:
    async with ex.open_runner(stdio=True) as runner:
        r = await runner.exec("import sys\nprint('via stdio')\nsys.stdout.fileno()")
        assert r.stdout == "via stdio\n"
        assert r.value == "1"  # user code still sees fd 1 as its stdout


async def test_ping_while_code_runs() -> None:
    # The code runs until it is cancelled, so the pong can only have come while it ran.
    with trio.fail_after(30):  # a hang detector
        async with ex.open_runner() as runner:
            async with runner.exec_stream("print('up', flush=True)\nwhile True: pass") as op:
                async for event in op:
                    assert isinstance(event, ex.Output) and event.data == b"up\n"
                    await runner.ping()
                    assert not op.finished
                    break  # leaving the stream cancels the op
            assert op.result.status == "cancelled"


async def test_concurrent_callers_fifo() -> None:
    async with ex.open_runner() as runner:
        results: list[str] = []

        async def call(i: int) -> None:
            r = await runner.exec(f"import time\ntime.sleep(0.02)\nn = {i}\nn")
            results.append(r.value)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(call, i)
                # Caller i is queued (or running) before caller i + 1 starts.
                await trio.testing.wait_all_tasks_blocked()
        assert results == ["0", "1", "2", "3", "4"]


async def test_no_stray_tasks() -> None:
    before = trio.lowlevel.current_statistics().tasks_living
    async with ex.open_runner() as runner:
        await runner.exec("1")
        assert trio.lowlevel.current_statistics().tasks_living > before
    assert trio.lowlevel.current_statistics().tasks_living == before


async def test_every_exec_is_a_checkpoint_even_when_its_reply_is_already_there() -> None:
    # On one CPU the runner answers within the caller's write, and the caller's own task
    # reads the done (a direct read) without waiting: exec must still yield, or a loop of
    # execs would starve every other task and no deadline would ever fire.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the runner inherits it
    try:
        async with ex.open_runner() as runner:
            for _ in range(200):
                with trio.testing.assert_checkpoints():
                    assert (await runner.exec("x = 1")).status == "ok"
            with trio.move_on_after(0.2) as scope:
                while True:
                    await runner.exec("x = 1")
            assert scope.cancelled_caught
    finally:
        os.sched_setaffinity(0, cpus)


async def test_the_runner_hands_the_gil_over_within_half_a_millisecond() -> None:
    # So that its I/O thread can read a cancel while user code spins (bench/README-cancel.md).
    from execpy_trio.runner._main import SWITCH_INTERVAL

    async with ex.open_runner() as runner:
        assert await runner.eval("__import__('sys').getswitchinterval()") == SWITCH_INTERVAL
    assert SWITCH_INTERVAL <= 0.0005


# --- start failures ----------------------------------------------------------------------


async def test_missing_command() -> None:
    with pytest.raises(ex.RunnerStartError, match="could not start"):
        async with ex.open_runner(command=["/nonexistent/python"]):
            pass  # pragma: no cover


async def test_command_that_dies_at_start() -> None:
    command = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('no runner here\\n'); sys.exit(3)",
    ]
    with pytest.raises(ex.RunnerStartError) as info:
        async with ex.open_runner(command=command, stdio=True):
            pass  # pragma: no cover
    assert info.value.returncode == 3
    assert "no runner here" in info.value.stderr_tail
    assert "no runner here" in str(info.value)


async def test_command_that_never_answers() -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    # The message names the timeout that expired; the fail_after is a hang detector.
    with trio.fail_after(30), pytest.raises(ex.RunnerStartError, match=r"handshake_timeout=0\.5"):
        async with ex.open_runner(command=command, stdio=True, handshake_timeout=0.5):
            pass  # pragma: no cover


async def test_command_that_talks_garbage() -> None:
    command = [sys.executable, "-c", "import os; os.write(1, b'hello, I am not a runner\\n')"]
    with pytest.raises(ex.RunnerStartError, match="handshake failed"):
        async with ex.open_runner(command=command, stdio=True):
            pass  # pragma: no cover
