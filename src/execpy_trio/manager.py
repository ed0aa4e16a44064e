"""The manager: ``open_manager`` and :class:`Manager`, a pool of runners that stays healthy.

Theory of operation
-------------------
A manager owns one nursery. In it run the runners' supervising tasks (started with
:func:`start_runner` through the manager's launcher, like any runner), a watcher per
runner, the heartbeat, and the tasks that start and close runners. Which runner serves
which caller is decided by :class:`~execpy_trio._pool.Pool` (bookkeeping only); after
every change :meth:`Manager._changed` acts on what the pool is short of.

The manager leases sessions and never reaches into them: it uses a runner's public API
(``exec``, ``ping``, ``kill``, ``aclose``, ``wait_closed``, ``is_alive``, ``killed``,
``statistics``, ``resident_memory``) and nothing else.

* **Death** is noticed by the runner's watcher (``wait_closed``) at once, not at its next
  use. An idle runner leaves the pool then; a busy one when its caller returns it (its op
  has failed with RunnerDied); a replacement starts at once in both cases.
* **Hangs**: a runner whose op ignores an interrupt is killed by the session after
  ``cancel_grace`` (the caller's cancel scope decides when); an idle runner is pinged
  after ``heartbeat_interval`` of idleness and killed if it does not answer within
  ``heartbeat_timeout``. Busy runners are never pinged.
* **Closing** fails the waiting callers, stops the starts under way, and closes every
  runner at once (each bounded by its own ``cancel_grace`` and ``shutdown_timeout``),
  shielded; then the nursery is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
import trio.lowlevel

from ._errors import ExecpyError, RunnerStartError, raise_unwrapped
from ._open import check_launcher, start_runner
from ._options import RunnerOptions, resolve_options
from ._pool import CHECKING, POOL_OPTION_NAMES, Entry, Pool, PoolFull, PoolOptions
from .launch import Launcher, LocalLauncher
from .launch._forkserver import can_fork, shared_launcher

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._operation import Operation
    from ._options import OptionKeywords
    from ._results import ExecResult
    from ._session import Runner

    class ManagerKeywords(OptionKeywords, total=False):
        """Runner options and pool options as keywords, for type checkers only."""

        size: int
        fresh_spares: int
        max_waiting: int | None
        recycle_after_ops: int | None
        recycle_above_rss: int | None
        heartbeat_interval: float
        heartbeat_timeout: float
        start_attempts: int
        start_backoff: float


if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Manager", "ManagerStatistics", "PoolFull", "PoolOptions", "open_manager"]

logger = logging.getLogger("execpy_trio.manager")

#: Beyond handshake_timeout, how long a launcher may take to deliver a runner.
START_SLACK: Final = 5.0
#: Heartbeat pings in a row an idle runner must miss to be killed.
HEARTBEAT_MISSES: Final = 2


@attrs.frozen
class ManagerStatistics:
    """A snapshot of a manager's pool.

    Now: ``size`` (runners that work at a time), ``fresh_spares``, ``idle``, ``busy``
    (leased), ``starting``, ``waiting`` (callers waiting for a runner). Since it opened:
    ``spawned`` (runners started), and of those, gone because they ``crashed`` (ended on
    their own), were ``killed`` (ignored a cancel past the grace, or missed a heartbeat),
    were ``recycled`` (too many ops, too much memory, or made room for fresh ones) or
    ``discarded`` (leased fresh, or closed by the caller); ``fresh_waits`` (fresh calls
    that waited for a runner to start), ``leases`` (runners handed out),
    ``start_failures``. ``spawned == idle + busy + crashed + killed + recycled +
    discarded`` whenever no lease is being returned. ``broken``: the manager gave up
    starting runners (see ``start_attempts``); ``closed``.
    """

    size: int
    fresh_spares: int
    idle: int
    busy: int
    starting: int
    waiting: int
    spawned: int
    crashed: int
    killed: int
    recycled: int
    discarded: int
    fresh_waits: int
    leases: int
    start_failures: int
    broken: bool
    closed: bool


class Manager:
    """A pool of runners. Get one from :func:`open_manager`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        options: RunnerOptions,
        pool: PoolOptions,
        launcher: Launcher,
    ) -> None:
        self._nursery = nursery
        #: The options every runner of the pool is started with.
        self.options = options
        #: How the pool is kept.
        self.pool_options = pool
        self._launcher = launcher
        self._pool = Pool(pool)
        self._start_scopes: set[trio.CancelScope] = set()
        self._progress: trio.Event | None = None  # for _fill, while it waits
        self._holders: dict[Entry, trio.lowlevel.Task] = {}  # leases, by holding task
        self._waiting_tasks: set[trio.lowlevel.Task] = set()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Manager size={s.size} idle={s.idle} busy={s.busy} starting={s.starting} "
            f"waiting={s.waiting}{' closed' if s.closed else ''}>"
        )

    def statistics(self) -> ManagerStatistics:
        pool = self._pool
        c = pool.counts
        return ManagerStatistics(
            size=pool.options.size,
            fresh_spares=pool.options.fresh_spares,
            idle=pool.idle,
            busy=pool.busy,
            starting=pool.starting,
            waiting=pool.waiting,
            spawned=c["spawned"],
            crashed=c["crashed"],
            killed=c["killed"],
            recycled=c["recycled"],
            discarded=c["discarded"],
            fresh_waits=c["fresh_waits"],
            leases=c["leases"],
            start_failures=c["start_failures"],
            broken=pool.broken,
            closed=pool.closed,
        )

    # -- operations -----------------------------------------------------------------------

    async def exec(
        self,
        code: str,
        *,
        fresh: bool = False,
        stdin: str | None = None,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
    ) -> ExecResult:
        """:meth:`Runner.exec` on an idle runner of the pool (``fresh=True``: on one that
        has never run user code, discarded after).

        Waits for a runner in FIFO order when none is free. Raises PoolFull if
        ``max_waiting`` callers already wait, RunnerStartError if the manager gave up
        starting runners and none can serve, trio.ClosedResourceError once the manager is
        closed; RunnerDied if the runner dies during the op (only this op fails; the pool
        replaces the runner). Cancellation: while waiting, nothing ran; once running, the
        code is interrupted as :meth:`Runner.exec` says (a runner that ignores the
        interrupt past ``cancel_grace`` is killed and replaced). No timeout of its own.
        """
        # Not through runner(): at tens of microseconds per op, a context manager shows.
        entry = await self._acquire(fresh)
        try:
            return await entry.runner.exec(
                code, stdin=stdin, variables=variables, filename=filename
            )
        finally:
            self._release(entry)

    async def eval(
        self, expr: str, *, fresh: bool = False, variables: Mapping[str, Any] | None = None
    ) -> Any:
        """:meth:`Runner.eval` on an idle runner of the pool; waiting, errors and
        cancellation as for :meth:`exec`."""
        entry = await self._acquire(fresh)
        try:
            return await entry.runner.eval(expr, variables=variables)
        finally:
            self._release(entry)

    @contextlib.asynccontextmanager
    async def exec_stream(
        self,
        code: str,
        *,
        fresh: bool = False,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
    ) -> AsyncIterator[Operation]:
        """:meth:`Runner.exec_stream` on an idle runner of the pool, leased for the block;
        waiting, errors and cancellation as for :meth:`exec`."""
        async with self.runner(fresh=fresh) as runner:
            async with runner.exec_stream(code, variables=variables, filename=filename) as op:
                yield op

    @contextlib.asynccontextmanager
    async def runner(self, *, fresh: bool = False) -> AsyncIterator[Runner]:
        """Lease a runner for the block, exclusively: the whole :class:`Runner` API.

        ``fresh=True``: one that has never run user code, discarded after the block.
        Otherwise the runner goes back to the pool after the block, unless it died, was
        killed or was closed in the block (then it is replaced). Do not keep the runner
        after the block: it serves other callers then. Waiting, errors and cancellation
        as for :meth:`exec`.
        """
        entry = await self._acquire(fresh)
        try:
            yield entry.runner
        finally:
            self._release(entry)

    # -- keeping the pool -----------------------------------------------------------------

    async def _acquire(self, fresh: bool) -> Entry:
        if fresh is not True and fresh is not False:
            raise TypeError(f"fresh must be True or False, not {fresh!r}")
        task = trio.lowlevel.current_task()
        try:
            entry = await self._pool.acquire(fresh, self._before_wait)
        except BaseException:
            self._changed()  # a runner given back (cancelled at the hand-over) may go
            raise
        finally:
            self._waiting_tasks.discard(task)
        self._holders[entry] = task
        if entry.discard:
            self._changed()  # leased fresh: its replacement starts now
        return entry

    def _before_wait(self, will_wait: bool) -> None:
        """The calling task is about to wait for a runner (or was refused one): refuse a
        wait that can never end (every lease is held by a task that itself waits for a
        runner, this one included), then make room."""
        if not will_wait:
            self._changed()
            return
        task = trio.lowlevel.current_task()
        holders = self._holders.values()
        if (
            task in holders
            and self._pool.busy >= self.pool_options.size
            and len(self._holders) >= self._pool.busy  # no lease on its way to a task
            and all(t is task or t in self._waiting_tasks for t in holders)
        ):
            size = self.pool_options.size
            raise RuntimeError(
                f"this task already holds a runner of the pool and asks for another, while "
                f"all {size} (size={size}) are leased to tasks that wait for one: the wait "
                "would never end. Run the op on the runner you hold, return it first, or "
                "raise size"
            )
        self._waiting_tasks.add(task)
        self._changed()

    def _changed(self) -> None:
        """Act on what the pool is short of, after any change."""
        pool = self._pool
        pool.dispatch()
        pool.rebalance()
        while pool.to_close:
            self._nursery.start_soon(self._close, pool.to_close.pop())
        for _ in range(pool.wanted_starts()):
            pool.starting += 1
            self._nursery.start_soon(self._start, pool.epoch)
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def _release(self, entry: Entry) -> None:
        self._holders.pop(entry, None)
        runner = entry.runner
        pool = self._pool
        recycle = False
        if not runner.is_alive:
            # Its caller got the RunnerDied; this is for whoever watches the pool.
            logger.info("replacing a runner that ended during a lease: %r", runner)
        elif not entry.discard and not pool.closed:
            opts = self.pool_options
            if opts.recycle_after_ops is not None:
                recycle = runner.statistics().ops_started >= opts.recycle_after_ops
            if not recycle and opts.recycle_above_rss is not None:
                rss = runner.resident_memory()
                recycle = rss is not None and rss > opts.recycle_above_rss
        pool.release(entry, recycle=recycle, now=trio.current_time())
        self._changed()

    async def _start(self, epoch: int) -> None:
        """Start one runner; ``epoch``: the pool's failure count when it was asked for."""
        pool = self._pool
        limit = self.options.handshake_timeout + START_SLACK
        with trio.CancelScope() as scope:
            self._start_scopes.add(scope)
            try:
                delay = pool.backoff()
                if delay:
                    await trio.sleep(delay)
                if pool.broken or pool.closed:
                    pool.starting -= 1  # gave up while this one waited
                    self._changed()
                    return
                with trio.move_on_after(limit) as bound:
                    runner = await start_runner(
                        self._nursery, self.options, launcher=self._launcher
                    )
                if bound.cancelled_caught:
                    raise RunnerStartError(
                        f"the launcher {self._launcher!r} did not deliver a runner within "
                        f"{limit:g} s (handshake_timeout + {START_SLACK:g} s)"
                    )
            except Exception as exc:
                pool.starting -= 1
                if pool.closed:
                    return  # stopped by the shutdown
                if not isinstance(exc, RunnerStartError):
                    # A launcher that raised something else (EMFILE, a bug): a failed
                    # start all the same, not the end of the manager.
                    error = RunnerStartError(
                        f"the launcher {self._launcher!r} failed: {type(exc).__name__}: {exc}"
                    )
                    error.__cause__ = exc
                    exc = error
                logger.warning("a runner failed to start: %s", exc)
                pool.start_failed(exc, epoch)
                self._changed()
                return
            except BaseException:
                pool.starting -= 1
                raise
            finally:
                self._start_scopes.discard(scope)
            pool.starting -= 1
            if pool.closed:
                self._nursery.start_soon(self._close, runner)
                return
            entry = pool.added(runner, trio.current_time(), epoch)
            self._nursery.start_soon(self._watch, entry)
            self._changed()

    async def _watch(self, entry: Entry) -> None:
        await entry.runner.wait_closed()
        bucket = self._pool.runner_ended(entry)
        if bucket is not None:
            logger.warning("an idle runner %s: %s", bucket, entry.runner.lost_error())
        self._changed()

    async def _close(self, runner: Runner) -> None:
        # Bounded by the runner's own cancel_grace and shutdown_timeout; also ends its
        # supervising task (which waits for a close, even after the runner died).
        await runner.aclose()

    async def _heartbeat(self) -> None:
        interval = self.pool_options.heartbeat_interval
        while True:
            await trio.sleep(interval / 2)
            for entry in self._pool.due_for_heartbeat(trio.current_time() - interval):
                self._nursery.start_soon(self._ping, entry)

    async def _ping(self, entry: Entry) -> None:
        timeout = self.pool_options.heartbeat_timeout
        runner = entry.runner
        # Two pings in a row must go unanswered, and nothing at all arrive from the
        # runner meanwhile: a pong may only have been late to be read (this process
        # paused: a blocking call, a long GC), which says nothing about the runner.
        for _ in range(HEARTBEAT_MISSES):
            received = runner.statistics().transport.bytes_received
            with trio.move_on_after(timeout):
                try:
                    await runner.ping()
                except (ExecpyError, trio.ClosedResourceError):
                    return  # it ended: its watcher takes it from here
                break
            for _ in range(3):
                await trio.lowlevel.checkpoint()  # let the reader take what is there
            if runner.statistics().transport.bytes_received != received:
                break
        else:
            if entry.state == CHECKING and runner.is_alive:
                await runner.kill(
                    f"it did not answer {HEARTBEAT_MISSES} heartbeat pings in a row within "
                    f"heartbeat_timeout={timeout} s each while idle (stopped or wedged), so "
                    "the manager killed it"
                )
            return
        self._pool.checked(entry, trio.current_time())
        self._changed()

    async def _fill(self) -> None:
        """Wait until the pool has all its runners, or has given up starting them."""
        pool = self._pool
        while not pool.broken and (pool.starting or pool.wanted_starts()):
            self._progress = trio.Event()
            await self._progress.wait()
        if pool.broken:
            raise pool.broken_error()

    async def _shutdown(self) -> None:
        """Close everything, bounded; shielded (called at the end of ``open_manager``)."""
        forceful = trio.current_effective_deadline() == -math.inf
        entries = self._pool.close()
        for scope in list(self._start_scopes):
            scope.cancel()
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for entry in entries:
                    nursery.start_soon(self._close_at_shutdown, entry.runner, forceful)

    async def _close_at_shutdown(self, runner: Runner, forceful: bool) -> None:
        if forceful:
            with trio.CancelScope() as scope:
                scope.cancel()  # aclose() in a cancelled scope kills without the polite part
                await runner.aclose()
        else:
            await runner.aclose()


def _split(
    options: RunnerOptions | None, pool: PoolOptions | None, keywords: dict[str, Any]
) -> tuple[RunnerOptions, PoolOptions]:
    if pool is not None and not isinstance(pool, PoolOptions):
        raise TypeError(f"pool must be a PoolOptions, not {type(pool).__name__}")
    runner_names = {a.name for a in attrs.fields(RunnerOptions)}
    unknown = sorted(set(keywords) - POOL_OPTION_NAMES - runner_names)
    if unknown:
        hint = (
            "; fresh= is an argument of exec, eval, exec_stream and runner(), not of the pool"
            if "fresh" in unknown
            else ""
        )
        raise TypeError(
            f"open_manager() got unknown option(s) {unknown}{hint}; the pool options are "
            f"{sorted(POOL_OPTION_NAMES)}, the runner options {sorted(runner_names)}"
        )
    pool_changes = {k: v for k, v in keywords.items() if k in POOL_OPTION_NAMES}
    runner_changes = {k: v for k, v in keywords.items() if k not in POOL_OPTION_NAMES}
    pool_opts = (pool or PoolOptions()).replace(**pool_changes)
    return resolve_options(options, runner_changes), pool_opts


@contextlib.asynccontextmanager
async def open_manager(
    options: RunnerOptions | None = None,
    *,
    pool: PoolOptions | None = None,
    launcher: Launcher | None = None,
    **keywords: Unpack[ManagerKeywords],
) -> AsyncIterator[Manager]:
    """Start a pool of runners, yield a :class:`Manager`, and shut it all down at the end.

    ``options`` configures every runner (a :class:`RunnerOptions`: limits, preload, env,
    command, the timeouts, ...); ``pool`` the pool (a :class:`PoolOptions`: ``size``,
    ``fresh_spares``, ``max_waiting``, recycling, the heartbeat, start attempts). Keywords
    of either's field names override their fields: ``open_manager(size=4,
    limits=limits)``. ``launcher`` starts each runner: by default the process-wide fork
    server where it can fork (Linux; no sandbox, command or stdio), otherwise a local
    process; ``launcher=LocalLauncher()`` always spawns.

    The block is entered once ``size + fresh_spares`` runners have started. Raises
    RunnerStartError if starts fail ``start_attempts`` times in a row; ValueError or
    TypeError for bad options (before anything starts).

    Leaving the block closes every runner at once, each within its ``cancel_grace`` plus
    ``shutdown_timeout``; ops still running are interrupted (their callers get the
    "cancelled" result); callers still waiting get trio.ClosedResourceError, and so does
    any later use. Cancellation: while starting, what started is killed; when the block is
    left by cancellation, running ops are interrupted and the runners killed without the
    polite shutdown. Nothing is left behind.
    """
    runner_options, pool_options = _split(options, pool, dict(keywords))
    check_launcher(launcher)
    if launcher is None:
        # Fresh runners in milliseconds where a fork server can make them.
        launcher = shared_launcher() if can_fork(runner_options) else LocalLauncher()
    try:
        async with trio.open_nursery() as nursery:
            manager = Manager(nursery, runner_options, pool_options, launcher)
            try:
                manager._changed()
                await manager._fill()
                nursery.start_soon(manager._heartbeat)
                yield manager
            finally:
                await manager._shutdown()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group, levels=1)  # only our nursery's group: the user's stays whole
