"""The manager with real runner processes: load, crashes, kills from outside, hangs, start
failures, limits, shutdown, and the statistics."""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

import execpy_trio as ex

pytestmark = pytest.mark.trio

#: Code that ignores the interrupt a cancel sends: only a kill ends it.
SWALLOWS_INTERRUPTS = (
    "import time\nwhile True:\n    try:\n        time.sleep(10)\n"
    "    except KeyboardInterrupt:\n        pass\n"
)
#: A generous bound for anything here to finish: a hang fails the test, not the suite.
BOUND = 60


def adds_up(s: ex.ManagerStatistics) -> bool:
    return s.spawned == s.idle + s.busy + s.crashed + s.killed + s.recycled + s.discarded


async def wait_for(condition: Any, what: str, limit: float = 20) -> None:
    with trio.move_on_after(limit):
        while not condition():  # noqa: ASYNC110 - the pool's state, seen from outside
            await trio.sleep(0.02)
        return
    pytest.fail(f"timed out waiting for {what}")


async def pool_pids(m: ex.Manager) -> set[int]:
    """The pids of the runners now idle in the pool (leased all at once, then returned)."""
    pids = set()
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def lease() -> None:
            async with m.runner() as runner:
                pids.add(runner.pid)
                await done.wait()

        for _ in range(m.pool_options.size):
            nursery.start_soon(lease)
        await wait_for(lambda: len(pids) == m.pool_options.size, "the leases")
        done.set()
    return pids


async def test_200_concurrent_execs_over_4_runners() -> None:
    with trio.fail_after(BOUND):
        async with ex.open_manager(size=4) as m:
            pids: set[int] = set()

            async def one(i: int) -> None:
                r = await m.exec(f"import os\nprint({i} * 2)\n(os.getpid(), {i})")
                assert r.status == "ok", r
                assert r.stdout == f"{i * 2}\n"
                pid, j = eval(r.value)
                assert j == i
                pids.add(pid)

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
            s = m.statistics()
            assert s.leases == 200 and s.spawned == 5 and s.crashed == 0
            assert 1 < len(pids) <= 4  # spread over the pool, never beyond its size
            assert adds_up(s)


async def test_os_exit_in_some_ops_fails_exactly_those() -> None:
    dying = set(random.Random(7).sample(range(100), 10))
    outcomes: dict[int, Any] = {}
    with trio.fail_after(BOUND):
        async with ex.open_manager(size=4) as m:

            async def one(i: int) -> None:
                code = (
                    "import os; os._exit(3)"
                    if i in dying
                    else f"import time; time.sleep(0.002); {i}"
                )
                try:
                    outcomes[i] = (await m.exec(code)).value
                except ex.RunnerDied as exc:
                    outcomes[i] = exc

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
            failed = {i for i, o in outcomes.items() if isinstance(o, ex.RunnerDied)}
            assert failed == dying
            assert all(outcomes[i] == str(i) for i in set(range(100)) - dying)
            assert all(outcomes[i].returncode == 3 for i in dying)
            await wait_for(lambda: m.statistics().idle == 5, "the pool to refill")
            s = m.statistics()
            assert s.crashed == 10 and s.spawned == 15 and s.broken is False
            assert adds_up(s)


async def test_kill_9_from_outside_under_load_loses_no_other_op() -> None:
    outcomes: dict[int, Any] = {}
    killed: set[int] = set()
    with trio.fail_after(BOUND):
        async with ex.open_manager(size=4, fresh_spares=1) as m:

            async def one(i: int) -> None:
                try:
                    r = await m.exec("import os, time; time.sleep(0.01); os.getpid()")
                    outcomes[i] = int(r.value)
                except ex.RunnerDied as exc:
                    outcomes[i] = exc

            async def killer() -> None:
                for _ in range(5):
                    await trio.sleep(0.15)
                    async with m.runner() as runner:  # the next runner free, whichever
                        victim = runner.pid
                    os.kill(victim, signal.SIGKILL)  # busy again, or idle, by now
                    killed.add(victim)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                for i in range(300):
                    nursery.start_soon(one, i)
                    if i % 20 == 0:
                        await trio.sleep(0.05)
            assert len(outcomes) == 300
            for outcome in outcomes.values():
                if isinstance(outcome, ex.RunnerDied):
                    assert outcome.pid in killed, outcome  # only ops of the killed runners
                    assert outcome.signal == signal.SIGKILL
            await wait_for(
                lambda: m.statistics().crashed == len(killed) and m.statistics().idle == 5,
                "the pool to notice the kills and return to its size",
            )
            s = m.statistics()
            assert s.killed == 0 and s.spawned == 5 + len(killed)
            assert adds_up(s)


async def test_a_runner_that_swallows_keyboardinterrupt_is_killed_and_replaced() -> None:
    code = SWALLOWS_INTERRUPTS
    with trio.fail_after(BOUND):
        async with ex.open_manager(size=1, fresh_spares=0, cancel_grace=0.5) as m:
            (before,) = await pool_pids(m)
            with trio.move_on_after(0.3):
                await m.exec(code)
            await wait_for(lambda: m.statistics().idle == 1, "a replacement")
            s = m.statistics()
            assert s.killed == 1 and s.spawned == 2
            (after,) = await pool_pids(m)
            assert after != before
            assert (await m.exec("1 + 1")).value == "2"


async def test_a_stopped_idle_runner_is_replaced_by_the_heartbeat() -> None:
    with trio.fail_after(BOUND):
        async with ex.open_manager(
            size=2, fresh_spares=0, heartbeat_interval=0.2, heartbeat_timeout=0.3
        ) as m:
            pids = await pool_pids(m)
            victim = min(pids)
            os.kill(victim, signal.SIGSTOP)
            await wait_for(lambda: m.statistics().killed == 1, "the heartbeat to kill it")
            await wait_for(lambda: m.statistics().idle == 2, "a replacement")
            assert victim not in await pool_pids(m)
            results = [await m.exec("1") for _ in range(4)]
            assert all(r.status == "ok" for r in results)


async def test_a_command_that_fails_at_start_gives_runner_start_error() -> None:
    command = [
        sys.executable,
        "-c",
        "import sys; print('no runner here', file=sys.stderr); sys.exit(5)",
    ]
    with trio.fail_after(BOUND):  # the bound: start_attempts tries with backoff, then stop
        with pytest.raises(ex.RunnerStartError) as info:
            async with ex.open_manager(size=2, command=command, start_attempts=3):
                pytest.fail("the block must not be entered")
    message = str(info.value)
    assert "gave up starting runners after 3 failed starts in a row" in message
    assert "no runner here" in message
    assert info.value.returncode == 5


async def test_limits_apply_to_every_runner_of_the_pool() -> None:
    limits = ex.Limits(cpu_seconds=0.5, open_files=40, output_bytes=10_000)
    with trio.fail_after(BOUND):
        async with ex.open_manager(size=3, fresh_spares=1, limits=limits) as m:
            async with trio.open_nursery() as nursery:
                results: list[ex.ExecResult] = []

                async def spin(fresh: bool) -> None:
                    results.append(await m.exec("while True: pass", fresh=fresh))

                for fresh in (False, False, False, True):
                    nursery.start_soon(spin, fresh)
            assert [r.error.type for r in results if r.error] == ["CPULimitExceeded"] * 4
            r = await m.exec("print('x' * 20_000)")
            assert r.error is not None and r.error.type == "OutputLimitExceeded"
            opens = (
                "import os\ntry:\n    fs = [open(os.devnull) for _ in range(60)]\n"
                "except OSError as e:\n    print(e.errno)"
            )
            pids = set()
            async with trio.open_nursery() as nursery:
                for _ in range(3):  # every runner, at once

                    async def check() -> None:
                        async with m.runner() as runner:
                            assert (await runner.exec(opens)).stdout == "24\n"  # EMFILE
                            pids.add(runner.pid)
                            await trio.sleep(0.2)

                    nursery.start_soon(check)
            assert len(pids) == 3


async def test_shutdown_while_busy_is_bounded_and_leaves_nothing() -> None:
    outcomes: list[Any] = []
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            async with ex.open_manager(size=2, fresh_spares=1, cancel_grace=0.5) as m:

                async def call(code: str) -> None:
                    try:
                        outcomes.append((await m.exec(code)).status)
                    except (ex.RunnerDied, trio.ClosedResourceError) as exc:
                        outcomes.append(type(exc).__name__)

                nursery.start_soon(call, "import time; time.sleep(60)")
                nursery.start_soon(call, SWALLOWS_INTERRUPTS)
                await wait_for(lambda: m.statistics().busy == 2, "the ops to start")
                nursery.start_soon(call, "waits for a runner")
                await wait_for(lambda: m.statistics().waiting == 1, "the call to wait")
                await trio.sleep(0.2)
                start = trio.current_time()
            assert trio.current_time() - start < 10
    assert sorted(outcomes) == ["ClosedResourceError", "RunnerDied", "cancelled"], outcomes


async def test_leaving_by_cancellation_while_busy_leaves_nothing() -> None:
    with trio.fail_after(BOUND):
        with trio.move_on_after(1):
            async with ex.open_manager(size=2) as m:
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(m.exec, "import time; time.sleep(60)")


async def test_recycling_by_ops_and_by_memory() -> None:
    with trio.fail_after(BOUND):
        async with ex.open_manager(size=1, fresh_spares=0, recycle_after_ops=5) as m:
            pids = [await m.eval("__import__('os').getpid()") for _ in range(5)]
            assert pids == [pids[0]] * 5
            # Due for retirement: it serves on (no caller waits) until its replacement is in.
            await wait_for(lambda: m.statistics().recycled == 1, "the retirement")
            assert await m.eval("__import__('os').getpid()") != pids[0]
        async with ex.open_manager(size=1, fresh_spares=0, recycle_above_rss=100 * 2**20) as m:
            first = await m.eval("__import__('os').getpid()")
            await m.exec("hog = b'x' * (120 * 2**20)")  # written, so resident
            await wait_for(lambda: m.statistics().recycled == 1, "the retirement")
            assert await m.eval("__import__('os').getpid()") != first
            assert await m.eval("'hog' in globals()") is False


async def test_a_pause_of_this_process_does_not_kill_healthy_idle_runners() -> None:
    import time

    with trio.fail_after(BOUND):
        async with ex.open_manager(
            size=2, fresh_spares=1, heartbeat_interval=0.2, heartbeat_timeout=0.3
        ) as m:
            for _ in range(6):
                time.sleep(0.5)  # noqa: ASYNC251 - the point: the loop blocks, pings in flight
                await trio.lowlevel.checkpoint()
            await trio.sleep(0.5)
            s = m.statistics()
            assert (s.killed, s.spawned) == (0, 3)


async def test_the_pool_autograder_example_grades_as_documented(tmp_path: Path) -> None:
    import ast
    import shutil

    example = Path(__file__).parents[2] / "examples" / "pool_autograder.py"
    with trio.fail_after(BOUND):
        p = await trio.run_process(
            [sys.executable, str(example)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,  # without a sandbox, frank writes where it runs
        )
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    reports = {
        name: ast.literal_eval(rest) for name, rest in (line.split(None, 1) for line in lines[:-1])
    }
    assert reports["alice"] == {"load": "ok", "small": "pass", "negative": "pass"}
    assert reports["bob"]["small"].startswith("AssertionError")
    assert reports["carol"]["small"].startswith("CPULimitExceeded")
    assert reports["dave"] == {"died": "RunnerDied: it closed the connection (exit status 1)"}
    assert reports["erin"]["small"] == "timeout"
    if shutil.which("bwrap"):
        assert reports["grace"]["small"].startswith("FileNotFoundError")  # nothing of frank's
    else:  # no sandbox, no workdir of its own each: grace reads what frank left
        assert reports["grace"]["small"].startswith("AssertionError")
    assert lines[-1].startswith("runners started: 13, crashed: 1")
