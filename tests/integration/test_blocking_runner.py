"""The blocking API against real runners: the whole contract, from a plain (sync) test,
with the loop thread and the runner processes counted before and after."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import trio

import execpy_trio as ex
from execpy_trio import blocking


def _our_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("execpy-blocking")}


@pytest.fixture
def runner() -> Iterator[blocking.BlockingRunner]:
    with blocking.open_runner() as r:
        yield r
    assert _our_threads() == set()
    assert not r.is_alive


def test_exec_error_value_stdin_variables_and_eval(runner: blocking.BlockingRunner) -> None:
    r = runner.exec("print('hi')\nx = 40\nx + 2")
    assert (r.status, r.value, r.stdout) == ("ok", "42", "hi\n")
    err = runner.exec("1 / 0")
    assert err.status == "error" and err.error is not None
    assert err.error.type == "ZeroDivisionError"
    with pytest.raises(ex.CodeError):
        err.check()
    assert runner.exec("name = input()", stdin="bob\n").ok
    assert runner.exec("input()").error.type == "EOFError"  # type: ignore[union-attr]
    assert runner.exec("print(data)", variables={"data": [1, 2]}).stdout == "[1, 2]\n"
    assert runner.eval("[x, name]") == [40, "bob"]
    with pytest.raises(ex.CodeError):
        runner.eval("undefined_name")
    assert runner.ping() > 0
    assert runner.pid > 0 and runner.state == "running"


def test_exec_stream_with_input(runner: blocking.BlockingRunner) -> None:
    seen = []
    with runner.exec_stream("n = input('n? ')\nprint(int(n) * 2)") as op:
        for event in op:
            if isinstance(event, ex.InputRequest):
                assert event.prompt == "n? "
                op.send_input("21")
            else:
                seen.append(event.text)
    assert seen == ["42\n"] and op.result.ok and op.finished
    with runner.exec_stream("input()") as op:
        for event in op:
            assert isinstance(event, ex.InputRequest)
            op.send_eof()
    assert op.result.error is not None and op.result.error.type == "EOFError"


def test_leaving_an_exec_stream_early_cancels_the_op(runner: blocking.BlockingRunner) -> None:
    with runner.exec_stream("import time\nprint('go', flush=True)\ntime.sleep(60)") as op:
        for event in op:
            assert isinstance(event, ex.Output)
            break
    assert op.result.status == "cancelled"
    assert runner.exec("6 * 7").value == "42"


def test_timeout_interrupts_the_code_and_the_runner_stays_usable(
    runner: blocking.BlockingRunner,
) -> None:
    runner.exec("kept = 1")
    for code in ("while True:\n    y = 1", "import time\ntime.sleep(60)"):
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"within 0\.3 s.*still usable"):
            runner.exec(code, timeout=0.3)
        assert time.monotonic() - start < 10
    assert runner.exec("kept + 1").value == "2"
    with pytest.raises(TimeoutError):
        runner.eval("__import__('time').sleep(60)", timeout=0.3)
    with runner.exec_stream("import time\ntime.sleep(60)", timeout=0.3) as op:
        with pytest.raises(TimeoutError):
            next(iter(op))
    assert runner.eval("kept") == 1
    with pytest.raises(ValueError, match="positive"):
        runner.exec("1", timeout=0)


def test_keyboard_interrupt_interrupts_the_code_then_propagates(
    runner: blocking.BlockingRunner,
) -> None:
    # A real SIGINT, as Ctrl-C sends: it wakes the calling thread's wait.
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner.exec("import time\ntime.sleep(60)")
    assert time.monotonic() - start < 10
    timer.join()
    assert runner.exec("6 * 7").value == "42"


def test_runner_died_and_closed(runner: blocking.BlockingRunner) -> None:
    with pytest.raises(ex.RunnerDied) as info:
        runner.exec("import os\nos.kill(os.getpid(), 9)")
    assert "SIGKILL" in str(info.value)
    with blocking.open_runner() as other:
        pass
    with pytest.raises(trio.ClosedResourceError):
        other.exec("1")


def test_a_start_error_is_raised_and_leaves_nothing() -> None:
    with pytest.raises(ex.RunnerStartError), blocking.open_runner(preload=["no_such_module_x"]):
        pass
    assert _our_threads() == set()


async def test_from_inside_trio_is_an_error_not_a_deadlock() -> None:
    with pytest.raises(RuntimeError, match="inside a Trio loop"), blocking.open_runner():
        pass
    with pytest.raises(RuntimeError, match="inside a Trio loop"), blocking.open_manager():
        pass


def test_manager_exec_eval_stream_and_leases() -> None:
    with blocking.open_manager(size=2) as manager:
        assert manager.exec("1 + 1", fresh=True).value == "2"
        assert manager.eval("2 * 3") == 6
        with manager.runner() as leased:
            leased.exec("g = 5")
            assert leased.eval("g") == 5
        with manager.exec_stream("print(input())") as op:
            for event in op:
                if isinstance(event, ex.InputRequest):
                    op.send_input("echo")
        assert op.result.stdout == "echo\n"
        with pytest.raises(TimeoutError):
            manager.exec("import time\ntime.sleep(60)", timeout=0.3)
        stats = manager.statistics()
        assert stats.size == 2 and stats.leases >= 1
    assert _our_threads() == set()
    with pytest.raises(trio.ClosedResourceError):
        manager.exec("1")


def test_a_call_from_inside_its_own_stream_is_an_error_not_a_deadlock(
    runner: blocking.BlockingRunner,
) -> None:
    with runner.exec_stream("print(input())") as op:
        with pytest.raises(RuntimeError, match="exec_stream of this runner is open"):
            runner.exec("1")
        for event in op:
            if isinstance(event, ex.InputRequest):
                op.send_input("x")
    assert runner.exec("6 * 7").value == "42"  # and after the stream, calls work again


def test_ctrl_c_while_a_stream_starts_ends_that_stream_only(
    runner: blocking.BlockingRunner,
) -> None:
    """An interrupted start cancels that start, not the runner's whole loop."""
    busy = threading.Thread(target=runner.exec, args=("import time\ntime.sleep(1.5)",))
    busy.start()
    time.sleep(0.2)  # the stream below waits for that op
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt), runner.exec_stream("1"):
        pass
    timer.join()
    busy.join()
    assert runner.exec("6 * 7").value == "42"


def test_waiting_for_a_lease_has_a_bound() -> None:
    with blocking.open_manager(size=1, fresh_spares=0) as manager:
        with manager.runner() as leased:
            with pytest.raises(TimeoutError, match=r"the lease did not start within 0\.3 s"):
                with manager.runner(timeout=0.3):
                    pass
            with pytest.raises(TimeoutError, match="waiting for a runner"):
                with manager.exec_stream("1", timeout=0.3):
                    pass
            assert leased.eval("1 + 1") == 2
        assert manager.eval("2 + 2") == 4  # the pool is whole again
