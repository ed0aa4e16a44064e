"""The manager's scheduling and supervision, with fake runners under ``autojump_clock``:
FIFO, cancellation while waiting, the waiting bound, fresh runners and their spares, start
failures and backoff, the heartbeat, recycling, closing, and the statistics."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import execpy_trio as ex
from fake_launcher import FakeLauncher, value_runner

pytestmark = pytest.mark.trio


def manager(launcher: FakeLauncher, **keywords: Any) -> Any:
    keywords.setdefault("size", 2)
    keywords.setdefault("fresh_spares", 0)
    return ex.open_manager(launcher=launcher, **keywords)


def adds_up(s: ex.ManagerStatistics) -> bool:
    return s.spawned == s.idle + s.busy + s.crashed + s.killed + s.recycled + s.discarded


async def hold(m: ex.Manager, release: trio.Event) -> None:
    """Lease a runner until ``release`` is set."""
    async with m.runner():
        await release.wait()


async def settle() -> None:
    """Let the pool's background work (starts, closes, watchers) run to quiet."""
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()


# -- hand-out and waiting ---------------------------------------------------------------


async def test_the_pool_is_full_when_the_block_starts(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    async with manager(launcher, size=3, fresh_spares=2) as m:
        s = m.statistics()
        assert (s.size, s.fresh_spares, s.idle, s.starting, s.spawned) == (3, 2, 5, 0, 5)
        assert launcher.launches == 5
        assert await m.eval("x") == [value_runner(await m.eval("x")), "x"]
        assert adds_up(m.statistics())


async def test_callers_are_served_in_fifo_order(autojump_clock: trio.abc.Clock) -> None:
    served: list[int] = []
    launcher = FakeLauncher()
    async with manager(launcher, size=1) as m:
        lease_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, m, lease_done)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(6):

                async def call(i: int = i) -> None:
                    await m.exec(f"call {i}")
                    served.append(i)

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
            assert m.statistics().waiting == 6
            lease_done.set()
        (fake,) = launcher.runners.values()
        assert fake.codes == [f"call {i}" for i in range(6)]
    assert served == list(range(6))


async def test_a_caller_cancelled_while_waiting_runs_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher()
    async with manager(launcher, size=1) as m:
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            release = trio.Event()
            nursery.start_soon(hold, m, release)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1) as scope:
                await m.exec("never")
            assert scope.cancelled_caught
            assert m.statistics().waiting == 0

            async def later() -> None:
                results.append(await m.eval("later"))

            nursery.start_soon(later)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        (fake,) = launcher.runners.values()
        assert fake.codes == ["later"]  # "never" never reached the runner
        assert value_runner(results[0]) == 0
        assert adds_up(m.statistics())


async def test_the_waiting_bound_refuses_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher(), size=1, max_waiting=2) as m:
        async with trio.open_nursery() as nursery:
            release = trio.Event()
            nursery.start_soon(hold, m, release)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(m.exec, "a")
            nursery.start_soon(m.exec, "b")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            with pytest.raises(ex.PoolFull, match=r"2 callers already wait.*max_waiting=2"):
                await m.exec("c")
            assert trio.current_time() == start  # refused without waiting
            assert m.statistics().waiting == 2
            release.set()
        assert m.statistics().waiting == 0
        await m.exec("d")  # the bound is on waiting, not on use


async def test_max_waiting_zero_means_never_wait(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher(), size=1, max_waiting=0) as m:
        await m.exec("free runner: no wait needed")
        async with m.runner():
            with pytest.raises(ex.PoolFull):
                await m.exec("would wait")


async def test_size_bounds_the_ops_at_once(autojump_clock: trio.abc.Clock) -> None:
    peak = 0
    async with manager(FakeLauncher(), size=3, fresh_spares=2) as m:

        async def call() -> None:
            nonlocal peak
            async with m.runner() as runner:
                peak = max(peak, m.statistics().busy)
                await runner.exec("sleep:1")

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(call)
    assert peak == 3


# -- fresh runners -----------------------------------------------------------------------


async def test_fresh_calls_get_never_used_runners_and_discard_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher()
    async with manager(launcher, size=2, fresh_spares=1) as m:
        used = {value_runner(await m.eval("warm")) for _ in range(4)}
        seen: set[int] = set()
        for _ in range(5):
            number = value_runner(await m.eval("fresh", fresh=True))
            assert number not in used and number not in seen
            seen.add(number)
            for fake in launcher.runners.values():
                if fake.number == number:
                    assert fake.codes == ["fresh"]  # it ran nothing before
        await settle()
        s = m.statistics()
        assert s.discarded == 5
        assert s.idle == 3  # refilled to size + fresh_spares
        assert adds_up(s)


async def test_a_fresh_spare_is_ready_so_steady_fresh_calls_do_not_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=2, fresh_spares=1) as m:
        for _ in range(10):
            await m.exec("x", fresh=True)
            await settle()  # a steady stream: the spare is back before the next call
        assert m.statistics().fresh_waits == 0


async def test_a_burst_of_fresh_calls_waits_for_starts(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher(start_time=1), size=2, fresh_spares=1) as m:
        numbers: list[int] = []

        async def call() -> None:
            numbers.append(value_runner(await m.eval("x", fresh=True)))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(call)
        assert len(set(numbers)) == 8  # each its own never-used runner
        s = m.statistics()
        # Three runners were ready; the other five fresh calls waited for a start.
        assert s.fresh_waits == 5
        assert s.discarded == 8


async def test_fresh_callers_retire_used_runners_when_there_is_no_room(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=2, fresh_spares=0) as m:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(m.exec, "sleep:1")  # both runners used
        n = value_runner(await m.eval("fresh", fresh=True))
        assert n >= 2  # a new runner: a used one made room for it
        await settle()
        s = m.statistics()
        assert s.recycled == 1 and s.discarded == 1 and s.idle == 2
        assert adds_up(s)


async def test_a_general_caller_is_not_held_up_by_a_fresh_one_waiting_for_a_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(start_time=1), size=2, fresh_spares=0) as m:
        await m.exec("use runner 0")
        async with m.runner(), m.runner():
            pass  # both used now
        order: list[str] = []
        async with trio.open_nursery() as nursery:

            async def fresh() -> None:
                await m.eval("fresh", fresh=True)
                order.append("fresh")

            async def general() -> None:
                await m.eval("general")
                order.append("general")

            nursery.start_soon(fresh)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(general)
        assert order == ["general", "fresh"]


# -- start failures ----------------------------------------------------------------------


async def test_a_launcher_that_always_fails_gives_up_with_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "fail")
    start = trio.current_time()
    with pytest.raises(ex.RunnerStartError, match=r"gave up.*3 failed starts in a row") as info:
        async with manager(launcher, size=1, start_attempts=3, start_backoff=0.5):
            pytest.fail("the block must not be entered")
    assert "fake runner 2 could not start" in str(info.value)
    assert info.value.returncode == 3
    assert launcher.launches == 3  # bounded: no endless respawn
    assert trio.current_time() - start == pytest.approx(0.5 + 1.0)  # backoff 0.5, then 1.0


async def test_failures_that_clear_up_are_retried(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher(["fail", "fail", "ok"])
    async with manager(launcher, size=1, start_attempts=3) as m:
        s = m.statistics()
        assert (s.start_failures, s.spawned, s.idle, s.broken) == (2, 1, 1, False)


async def test_a_silent_runner_times_out_and_counts_as_a_failed_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "silent")
    with pytest.raises(ex.RunnerStartError, match="no welcome"):
        async with manager(launcher, size=1, start_attempts=2, handshake_timeout=3):
            pass
    assert launcher.launches == 2


async def test_runners_that_die_as_they_start_are_not_respawned_forever(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "ok" if n == 0 else "die-after-welcome")
    async with manager(launcher, size=1, fresh_spares=0, start_attempts=3) as m:
        await m.exec("x")  # runner 0 works
        async with m.runner() as runner:
            await runner.kill()  # replaced by runners that die at once
        await trio.sleep(5)  # the backoff between the attempts
        s = m.statistics()
        assert s.broken and launcher.launches == 4
        with pytest.raises(
            ex.RunnerStartError, match="died after it started, before it ran any code"
        ):
            await m.exec("y")


async def test_a_broken_pool_still_serves_with_the_runners_it_has(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "ok" if n < 2 else "fail")
    async with manager(launcher, size=2, fresh_spares=0, start_attempts=2) as m:
        consumed = value_runner(await m.eval("fresh", fresh=True))  # replacements fail
        await trio.sleep(5)  # the backoff between the attempts
        assert m.statistics().broken
        assert value_runner(await m.eval("still")) == 1 - consumed
        with pytest.raises(ex.RunnerStartError, match="gave up"):
            await m.eval("fresh", fresh=True)


# -- supervision -------------------------------------------------------------------------


async def test_an_idle_runner_that_dies_is_replaced_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher()
    async with manager(launcher, size=2, fresh_spares=0) as m:
        async with m.runner(), m.runner():
            pass  # both served: a death now is a crash, not a failed start
        fake = launcher.runners[1000]
        await fake.stream.aclose()  # it "dies" while idle
        await settle()
        s = m.statistics()
        assert (s.crashed, s.idle, s.spawned) == (1, 2, 3)
        assert adds_up(s)


async def test_a_crash_fails_only_its_own_op(autojump_clock: trio.abc.Clock) -> None:
    outcomes: dict[str, Any] = {}
    async with manager(FakeLauncher(), size=3, fresh_spares=0) as m:

        async def call(code: str) -> None:
            try:
                outcomes[code] = (await m.exec(code)).status
            except ex.RunnerDied as exc:
                outcomes[code] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "sleep:2")
            nursery.start_soon(call, "die")
            nursery.start_soon(call, "sleep:3")
        await settle()
        s = m.statistics()
    assert outcomes["sleep:2"] == "ok" and outcomes["sleep:3"] == "ok"
    assert isinstance(outcomes["die"], ex.RunnerDied)
    assert s.crashed == 1 and s.idle == 3


async def test_a_runner_that_ignores_the_cancel_is_killed_and_replaced(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=1, fresh_spares=0, cancel_grace=1) as m:
        with trio.move_on_after(2):
            await m.exec("stubborn")
        await settle()
        s = m.statistics()
        assert (s.killed, s.idle, s.spawned) == (1, 1, 2)
        assert (await m.exec("after")).status == "ok"


async def test_an_idle_runner_that_stops_answering_is_killed_by_the_heartbeat(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher()
    async with manager(launcher, size=2, heartbeat_interval=1, heartbeat_timeout=0.5) as m:
        await m.exec("freeze")  # the runner it ran on answers nothing more
        await trio.sleep(5)
        s = m.statistics()
        assert (s.killed, s.idle) == (1, 2)
        alive = [f for f in launcher.runners.values() if not f.frozen]
        assert all(f.pings > 0 for f in alive)  # the healthy ones were pinged and kept
        assert adds_up(s)


async def test_a_busy_runner_is_never_pinged(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher()
    async with manager(launcher, size=1, heartbeat_interval=0.5, heartbeat_timeout=0.1) as m:
        await m.exec("sleep:10")  # busy for 20 heartbeats
        (fake,) = launcher.runners.values()
        assert fake.pings == 0
        assert m.statistics().killed == 0


async def test_a_lease_closed_by_its_holder_is_replaced(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher(), size=1, fresh_spares=0) as m:
        async with m.runner() as runner:
            await runner.aclose()
        await settle()
        s = m.statistics()
        assert (s.discarded, s.idle, s.spawned) == (1, 1, 2)


# -- recycling ---------------------------------------------------------------------------


async def test_a_runner_is_retired_after_n_ops_without_a_caller_waiting(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=1, fresh_spares=0, recycle_after_ops=3) as m:
        numbers = []
        for _ in range(7):
            start = trio.current_time()
            numbers.append(value_runner(await m.eval("x")))
            assert trio.current_time() == start  # no call waited for a start
            await settle()
        assert numbers == [0, 0, 0, 1, 1, 1, 2]
        assert m.statistics().recycled == 2


# -- closing -----------------------------------------------------------------------------


async def test_closing_interrupts_ops_and_fails_waiters(autojump_clock: trio.abc.Clock) -> None:
    outcomes: dict[str, Any] = {}

    async def call(m: ex.Manager, code: str) -> None:
        try:
            outcomes[code] = (await m.exec(code)).status
        except trio.ClosedResourceError as exc:
            outcomes[code] = exc

    async with trio.open_nursery() as nursery:
        async with manager(FakeLauncher(), size=1) as m:
            nursery.start_soon(call, m, "sleep:100")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, m, "waits")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
        assert trio.current_time() - start < 5  # bounded, by virtual time
    assert outcomes["sleep:100"] == "cancelled"
    assert isinstance(outcomes["waits"], trio.ClosedResourceError)
    assert "closed while this call waited" in str(outcomes["waits"])
    with pytest.raises(trio.ClosedResourceError, match="manager was closed"):
        await m.exec("after")
    assert m.statistics().closed


async def test_leaving_by_cancellation_kills_without_waiting_for_a_stubborn_op(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.move_on_after(1):
        async with manager(FakeLauncher(), size=1, cancel_grace=5, shutdown_timeout=5) as m:
            await m.exec("stubborn")
    # The op ignores the cancel: the grace bounds the close (well within 5 + 5 s).
    assert trio.current_time() < 1 + 5 + 1


async def test_an_error_in_the_block_arrives_unwrapped(autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(KeyError):
        async with manager(FakeLauncher()):
            raise KeyError("mine")


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "error", "match"),
    [
        ({"size": 0}, ValueError, "size must be an integer >= 1"),
        ({"fresh_spares": -1}, ValueError, "fresh_spares"),
        ({"max_waiting": -1}, ValueError, "max_waiting"),
        ({"heartbeat_interval": 0}, ValueError, "heartbeat_interval must be a positive"),
        ({"recycle_after_ops": 0}, ValueError, "recycle_after_ops"),
        ({"start_attempts": 0}, ValueError, "start_attempts"),
        ({"sizes": 2}, TypeError, r"unknown option\(s\) \['sizes'\]; the pool options"),
        ({"fresh": True}, TypeError, "fresh= is an argument of exec"),
        ({"size": 2000}, ValueError, "more than 1024 runners"),
        ({"launcher": "local"}, TypeError, "launcher must be an execpy_trio.Launcher"),
        ({"launcher": ex.LocalLauncher}, TypeError, "write launcher=LocalLauncher()"),
        ({"cancel_grace": -1}, ValueError, "cancel_grace"),
        ({"pool": {"size": 2}}, TypeError, "pool must be a PoolOptions"),
    ],
)
async def test_bad_options_are_refused_before_anything_starts(
    keywords: dict[str, Any], error: type[Exception], match: str
) -> None:
    launcher = FakeLauncher()
    keywords.setdefault("launcher", launcher)
    with pytest.raises(error, match=match):
        async with ex.open_manager(**keywords):
            pass
    assert launcher.launches == 0


async def test_options_objects_and_keywords_combine(autojump_clock: trio.abc.Clock) -> None:
    pool = ex.PoolOptions(size=3, fresh_spares=0)
    opts = ex.RunnerOptions(cancel_grace=7)
    async with ex.open_manager(opts, pool=pool, launcher=FakeLauncher(), size=2) as m:
        assert m.pool_options.size == 2 and m.options.cancel_grace == 7
        assert m.statistics().idle == 2


async def test_callers_that_give_up_waiting_do_not_grow_the_queue(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=1, max_waiting=1000) as m:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.exec, "sleep:1000")  # holds the runner
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(m.exec, "the one who waits")  # the head of the queue
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2000):
                with trio.move_on_after(0.001):
                    await m.exec("gives up")
            queues = m._pool._waiters_any, m._pool._waiters_fresh
            assert sum(len(q) for q in queues) <= 2 * 64  # swept, not 2000
            assert m.statistics().waiting == 1
            nursery.cancel_scope.cancel()


async def test_refused_callers_do_not_grow_the_queue(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher(), size=1, max_waiting=1) as m:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.exec, "sleep:1000")  # holds the runner
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(m.exec, "the one who waits")
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2000):
                with pytest.raises(ex.PoolFull):
                    await m.exec("refused")
            queues = m._pool._waiters_any, m._pool._waiters_fresh
            assert sum(len(q) for q in queues) <= 2 * 64
            nursery.cancel_scope.cancel()


async def test_a_fresh_caller_makes_room_at_once_when_all_runners_are_used(
    autojump_clock: trio.abc.Clock,
) -> None:
    # No heartbeat or other event may be needed to start the fresh runner it waits for.
    async with manager(
        FakeLauncher(start_time=1), size=1, fresh_spares=0, heartbeat_interval=1000
    ) as m:
        await m.exec("used")
        start = trio.current_time()
        await m.exec("fresh", fresh=True)
        assert trio.current_time() - start == pytest.approx(1)  # one start, no more


# -- the review's findings (each failed before its fix) ---------------------------------


async def test_a_runner_found_dead_while_idle_is_never_handed_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Its end takes 2 s to be decided (the process lingers): meanwhile it is not handed out.
    launcher = FakeLauncher(linger=2)
    async with manager(launcher, size=2, fresh_spares=0) as m:
        async with m.runner(), m.runner():
            pass
        first = next(iter(m._pool._idle_used)).runner  # the next in line
        await launcher.by_runner(first).stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert not first.is_alive
        start = trio.current_time()
        value = await m.eval("innocent")  # another runner serves it, at once
        assert trio.current_time() == start
        assert 1000 + value_runner(value) != first.welcome.pid
        await trio.sleep(5)
        s = m.statistics()
        assert (s.crashed, s.idle, s.spawned) == (1, 2, 3)
        assert adds_up(s)


async def test_runners_that_die_soon_after_starting_break_the_pool(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "die-after:1.5")
    async with manager(
        launcher, size=1, start_attempts=3, heartbeat_interval=0.2, heartbeat_timeout=0.1
    ) as m:
        await trio.sleep(60)  # their pings are answered: that proves nothing about starting
        s = m.statistics()
        assert s.broken and launcher.launches == 3
        with pytest.raises(ex.RunnerStartError, match="before it ran any code"):
            await m.exec("x")


async def test_failures_of_starts_running_together_count_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A transient failure hits all five first starts at once; retries, one at a time with
    # backoff, then succeed.
    launcher = FakeLauncher(lambda n: "fail" if n < 5 else "ok")
    async with manager(launcher, size=4, fresh_spares=1, start_attempts=3) as m:
        s = m.statistics()
        assert (s.idle, s.start_failures, s.broken) == (5, 5, False)
        assert launcher.launches == 10


async def test_after_a_failure_runners_start_one_at_a_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(["ok", "fail"] + ["fail"] * 10, start_time=1)
    with pytest.raises(ex.RunnerStartError):
        async with manager(launcher, size=4, fresh_spares=0, start_attempts=3):
            pass
    # 4 at once (3 fail: one bout, counted once), then one at a time: 2 more end it.
    assert launcher.launches == 6


async def test_a_launcher_raising_something_else_is_a_failed_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(["ok", "ok", "oserror"])
    async with manager(launcher, size=2, fresh_spares=0) as m:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.exec, "sleep:10")  # in flight: undisturbed
            await m.exec("x", fresh=True)  # its replacement's launch raises OSError
            await trio.sleep(1)
        s = m.statistics()
        assert (s.start_failures, s.idle, s.broken) == (1, 2, False)


async def test_fresh_calls_refused_with_max_waiting_zero_succeed_on_retry(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(start_time=1), size=2, max_waiting=0) as m:
        async with m.runner(), m.runner():
            pass  # both used: no fresh runner
        with pytest.raises(ex.PoolFull, match=r"no fresh .* runner is ready.*being started"):
            await m.exec("fresh", fresh=True)
        await trio.sleep(2)
        assert (await m.exec("fresh", fresh=True)).status == "ok"


async def test_a_broken_pool_counts_a_fresh_runner_being_pinged(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "ok" if n < 2 else "fail", pong_delay=0.5)
    async with manager(
        launcher, size=1, fresh_spares=1, start_attempts=1, heartbeat_interval=1
    ) as m:
        await m.eval("fresh", fresh=True)  # its replacement fails: broken
        await trio.sleep(0.01)
        assert m.statistics().broken
        (spare,) = (f for f in launcher.runners.values() if not f.codes)
        while not spare.pings:  # noqa: ASYNC110 - until the heartbeat pings the last one
            await trio.sleep(0.01)
        assert value_runner(await m.eval("x", fresh=True)) == spare.number  # it waited


async def test_a_waiter_cancelled_at_the_hand_over_leaves_the_pool_at_its_target(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=1, fresh_spares=1) as m:
        await m.exec("use one")
        for _ in range(5):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()
                lease = m.runner()
                await lease.__aenter__()

                async def fresh_waiter(scope: trio.CancelScope) -> None:
                    with scope:
                        await m.exec("fresh", fresh=True)

                nursery.start_soon(fresh_waiter, scope)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # delivered, then the release hands it the fresh spare
                await lease.__aexit__(None, None, None)
            await settle()
            s = m.statistics()
            assert s.idle == m.pool_options.target, s
            assert adds_up(s)


async def test_a_crashed_lease_closed_by_its_holder_counts_as_crashed(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=1, fresh_spares=0) as m:
        async with m.runner() as runner:
            with pytest.raises(ex.RunnerDied):
                await runner.exec("die")
            await runner.aclose()
        await settle()
        s = m.statistics()
        assert (s.crashed, s.discarded) == (1, 0)


async def test_each_caller_gets_its_own_error(autojump_clock: trio.abc.Clock) -> None:
    errors: list[BaseException] = []

    async def call(m: ex.Manager) -> None:
        try:
            await m.exec("waits")
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        async with manager(FakeLauncher(), size=1) as m:
            nursery.start_soon(hold, m, trio.Event())  # never set: cancelled below
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                nursery.start_soon(call, m)
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3


async def test_a_wait_that_could_never_end_is_refused(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher(), size=1) as m:
        async with m.runner() as runner:
            with pytest.raises(RuntimeError, match=r"already holds a runner.*never end"):
                await m.eval("nested")  # would wait for the lease this very task holds
            assert m.statistics().waiting == 0
            assert value_runner(await runner.eval("x")) >= 0  # the lease is fine
        await m.eval("after")


async def test_holding_a_lease_and_waiting_is_fine_when_another_can_return(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=2) as m:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.exec, "sleep:5")  # holds the other runner, then returns it
            await trio.testing.wait_all_tasks_blocked()
            async with m.runner():
                assert value_runner(await m.eval("waits 5 s")) >= 0


async def test_call_arguments_are_checked(autojump_clock: trio.abc.Clock) -> None:
    async with manager(FakeLauncher()) as m:
        with pytest.raises(TypeError, match="fresh must be True or False"):
            await m.exec("x", fresh="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="exec: code must be a str, not bytes"):
            await m.exec(b"x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="variables must be a mapping"):
            await m.exec("x", variables=[1])  # type: ignore[arg-type]
        assert m.statistics().busy == 0 and adds_up(m.statistics())


async def test_a_start_that_cannot_pass_is_not_retried(autojump_clock: trio.abc.Clock) -> None:
    launcher = FakeLauncher(lambda n: "refuse")
    with pytest.raises(ex.RunnerStartError, match="at once, since trying again cannot help"):
        async with manager(launcher, size=1, fresh_spares=0, start_attempts=5):
            pass
    assert launcher.launches == 1


# -- the second review's findings -------------------------------------------------------


async def test_an_old_runner_serving_on_does_not_hide_failing_starts(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "ok" if n < 2 else "fail")
    async with manager(launcher, size=2, start_attempts=3) as m:
        await m.eval("fresh", fresh=True)  # its replacements fail from here on
        for _ in range(100):
            await m.eval("served by the old runner")  # it lives, but proves nothing
            await trio.sleep(0.1)
        s = m.statistics()
        assert s.broken and launcher.launches == 5


async def test_runners_that_wedge_as_they_start_break_the_pool(
    autojump_clock: trio.abc.Clock,
) -> None:
    launcher = FakeLauncher(lambda n: "ok" if n == 0 else "wedge")
    async with manager(
        launcher, size=1, start_attempts=3, heartbeat_interval=0.5, heartbeat_timeout=0.2
    ) as m:
        await m.eval("fresh", fresh=True)  # its replacements welcome, then wedge
        await trio.sleep(60)
        s = m.statistics()
        assert s.broken and s.start_failures == 3 and launcher.launches == 4


async def test_a_spare_alive_and_well_for_a_while_ends_the_streak(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Rare failures far apart, with spares that answer their heartbeats: never broken.
    failing = {2, 4, 6}
    launcher = FakeLauncher(lambda n: "fail" if n in failing else "ok")
    async with manager(launcher, size=1, fresh_spares=1, start_attempts=2) as m:
        for _ in range(3):
            await m.eval("fresh", fresh=True)  # a replacement fails, the next one works
            await trio.sleep(30)  # ... and answers heartbeats for a while
        s = m.statistics()
        assert s.start_failures == 3 and not s.broken


async def test_no_false_deadlock_while_a_runner_is_being_handed_over(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=2) as m:
        async with trio.open_nursery() as nursery:
            async with m.runner():
                second = m.runner()
                await second.__aenter__()

                async def other() -> None:
                    await m.exec("sleep:1")  # waits, gets the second runner, returns it

                nursery.start_soon(other)
                await trio.testing.wait_all_tasks_blocked()
                await second.__aexit__(None, None, None)  # handed to other(): on its way
                await m.eval("mine")  # other() will return it: a wait, not a deadlock


async def test_a_fresh_refusal_says_all_runners_are_in_use_when_they_are(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with manager(FakeLauncher(), size=1, fresh_spares=1, max_waiting=0) as m:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.exec, "sleep:5")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ex.PoolFull, match="no runner is free"):
                await m.exec("x", fresh=True)
        assert m.statistics().starting == 0
