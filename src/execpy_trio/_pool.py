"""The manager's scheduling core: which runner serves which caller, and what the pool is
short of. Bookkeeping only: no I/O and no tasks; :mod:`execpy_trio.manager` acts on its
answers (starts runners, closes them, pings them).

Theory of operation
-------------------
The pool keeps ``size + fresh_spares`` runners (its *target*) and lets at most ``size``
of them work at a time. A runner is **fresh** until it is first handed out; after that it
is **used** and is never handed out as fresh again. An exclusive hand-out is a *lease*.

* A caller that asks for any runner gets an idle used one if there is one (least
  recently used first), else a retiring one, else a fresh one. A caller that asks for a
  fresh runner gets only a fresh one, and that runner is discarded when it is returned.
* Callers queue in one FIFO order. When a runner comes free, the earliest caller that can
  take it gets it: a caller waiting for a fresh runner to start does not hold up a later
  caller that any idle runner would serve.
* The inventory counts runners that will stay: not dead, not retiring, not to be
  discarded. The pool asks for a new runner whenever it is below target (so a runner
  leased fresh is replaced while its op still runs) and retires an idle used runner when
  callers wait for fresh ones and the inventory has no room to start them.
* A retiring runner (too many ops, too much memory) keeps serving, last in line, until its
  replacement has arrived; then it is closed between ops.
* Start failures in a row are counted: a runner that dies (or is killed by the
  heartbeat) before it was ever leased counts too, and failures of starts that ran at
  the same time count once. After a failure, runners start one at a time with backoff.
  Only a runner started since the last failure ends the streak, by serving an op and
  living, or by answering a heartbeat ``STREAK_SETTLE`` seconds after it started: an
  old runner that keeps serving proves nothing about starting. After ``start_attempts``
  the pool is *broken*: nothing more is started and callers that nothing can serve any
  more get a :class:`RunnerStartError`.
* A runner found dead while idle is never handed out: it waits ("dying") for its
  watcher, outside the inventory, so its replacement starts at once.
* Removals that need the runner closed are queued in :attr:`Pool.to_close`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from ._errors import ExecpyError, RunnerDied, RunnerStartError, describe_exit

if TYPE_CHECKING:
    from ._session import Runner

__all__ = ["Entry", "Pool", "PoolFull", "PoolOptions"]

#: The longest pause between start attempts after failures.
MAX_BACKOFF: Final = 5.0
#: A runner started since the last failure that answers a heartbeat after this long ends
#: the failure streak, as one that served an op does.
STREAK_SETTLE: Final = 10.0
#: A sanity bound on the runners of one pool (each is a process).
MAX_RUNNERS: Final = 1024
#: Waiters gone before their turn that may stay queued before the queues are swept.
COMPACT_MIN: Final = 64

EntryState = Literal["idle", "busy", "checking", "dying", "gone"]
IDLE: Final = "idle"
BUSY: Final = "busy"
CHECKING: Final = "checking"  # idle, being pinged by the heartbeat
DYING: Final = "dying"  # found dead while idle; its watcher takes it out
GONE: Final = "gone"

#: Why a runner left the pool: the counters of :class:`ManagerStatistics`.
Bucket = Literal["crashed", "killed", "recycled", "discarded"]


class PoolFull(ExecpyError):
    """A call would have waited for a runner, but ``max_waiting`` callers already wait."""


def _at_least(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer >= {minimum}, not {value!r}")

    return check


def _optional_at_least(minimum: int) -> Any:
    check = _at_least(minimum)

    def optional(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


def _seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


@attrs.frozen(kw_only=True)
class PoolOptions:
    """How a manager keeps its pool. Every field has a default; see docs/manager.md.

    - ``size``: runners that work at a time (ops running at once).
    - ``fresh_spares``: runners kept started beyond ``size``, so that a ``fresh=True``
      call rarely waits for a start.
    - ``max_waiting``: callers that may wait for a runner; one more gets :class:`PoolFull`
      at once. None: no bound.
    - ``recycle_after_ops``: retire a runner once it has run this many ops. None: never.
    - ``recycle_above_rss``: retire a runner whose resident memory, after an op, is above
      this many bytes (local runners only). None: never.
    - ``heartbeat_interval``: ping a runner that has been idle this long (seconds);
      ``heartbeat_timeout``: one that does not answer within it is killed and replaced.
    - ``start_attempts``: starts that fail in a row before the manager gives up with
      :class:`RunnerStartError`; ``start_backoff``: the pause after the first failure,
      doubled after each further one (at most 5 s).

    ``heartbeat_interval=math.inf`` turns the heartbeat off.
    """

    size: int = attrs.field(default=4, validator=_at_least(1))
    fresh_spares: int = attrs.field(default=1, validator=_at_least(0))
    max_waiting: int | None = attrs.field(default=None, validator=_optional_at_least(0))
    recycle_after_ops: int | None = attrs.field(default=None, validator=_optional_at_least(1))
    recycle_above_rss: int | None = attrs.field(default=None, validator=_optional_at_least(1))
    heartbeat_interval: float = attrs.field(default=2.0, validator=_seconds)
    heartbeat_timeout: float = attrs.field(default=2.0, validator=_seconds)
    start_attempts: int = attrs.field(default=3, validator=_at_least(1))
    start_backoff: float = attrs.field(default=0.1, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        if self.size + self.fresh_spares > MAX_RUNNERS:
            raise ValueError(
                f"size + fresh_spares is {self.size + self.fresh_spares}: a pool of more than "
                f"{MAX_RUNNERS} runners (processes) is surely a mistake"
            )

    @property
    def target(self) -> int:
        return self.size + self.fresh_spares

    def replace(self, **changes: Any) -> PoolOptions:
        """A copy with ``changes`` applied (and validated)."""
        unknown = set(changes) - POOL_OPTION_NAMES
        if unknown:
            raise TypeError(
                f"unknown pool option(s) {sorted(unknown)}; the options are "
                f"{sorted(POOL_OPTION_NAMES)}"
            )
        return attrs.evolve(self, **changes) if changes else self


#: The names of :class:`PoolOptions`, to tell them from runner options in keywords.
POOL_OPTION_NAMES: Final = frozenset(a.name for a in attrs.fields(PoolOptions))


class Entry:
    """One runner of the pool, and what the pool knows of it."""

    __slots__ = (
        "discard",
        "epoch",
        "fresh",
        "idle_since",
        "joined",
        "retiring",
        "runner",
        "state",
        "was_fresh",
    )

    def __init__(self, runner: Runner, now: float, epoch: int) -> None:
        self.runner = runner
        self.state: EntryState = IDLE
        self.fresh = True  # never handed out
        self.was_fresh = False  # fresh before its current lease
        self.retiring = False
        self.discard = False  # leased fresh, or dead: leaves when returned
        self.idle_since = now
        self.joined = now
        self.epoch = epoch  # the failure epoch its start began in

    def __repr__(self) -> str:
        flags = [f for f in ("fresh", "retiring", "discard") if getattr(self, f)]
        return f"<Entry {self.runner!r} {self.state} {' '.join(flags)}>"


class Waiter:
    __slots__ = ("entry", "error", "event", "fresh", "seq", "since", "waiting")

    def __init__(self, seq: int, fresh: bool, since: float) -> None:
        self.seq = seq
        self.fresh = fresh
        self.since = since
        self.event = trio.Event()
        self.entry: Entry | None = None
        self.error: BaseException | None = None
        self.waiting = True


def _bucket(runner: Runner) -> Bucket:
    """Why a runner that is no longer alive left, from how it ended."""
    if runner.killed:
        return "killed"
    if isinstance(runner.lost_error(), trio.ClosedResourceError):
        return "discarded"  # closed by whoever held it, not dead by itself
    return "crashed"


class Pool:
    """The state of one manager's pool (see the module docstring)."""

    def __init__(self, options: PoolOptions) -> None:
        self.options = options
        self.entries: set[Entry] = set()  # every runner not yet gone
        # Idle runners by kind, each in least-recently-used order.
        self._idle_used: dict[Entry, None] = {}
        self._idle_retiring: dict[Entry, None] = {}
        self._idle_fresh: dict[Entry, None] = {}
        self._checking = 0
        self._waiters_any: deque[Waiter] = deque()
        self._waiters_fresh: deque[Waiter] = deque()
        self._seq = itertools.count()
        self.waiting = 0
        self._fresh_waiting = 0
        self._settled_in_queue = 0  # waiters that left before their turn, still queued
        self._fresh_refused = 0  # fresh calls refused since the last rebalance
        self.busy = 0
        self.starting = 0
        #: Runners that left the pool and must be closed (the manager drains it).
        self.to_close: list[Runner] = []
        self.streak = 0  # start failures in a row
        self.epoch = 0  # counted start failures so far: a start knows the failures before it
        self._last_start_failed = False
        self._last_failure: RunnerStartError | None = None
        self.broken = False
        self.closed = False
        self.counts = {
            "spawned": 0,
            "crashed": 0,
            "killed": 0,
            "recycled": 0,
            "discarded": 0,
            "fresh_waits": 0,
            "leases": 0,
            "start_failures": 0,
        }

    # -- the inventory --------------------------------------------------------------------

    @property
    def idle(self) -> int:
        return (
            len(self._idle_used) + len(self._idle_retiring) + len(self._idle_fresh) + self._checking
        )

    def _staying(self) -> int:
        """Runners that will stay: the inventory, measured against the target."""
        return sum(
            1
            for e in self.entries
            if not (e.retiring or e.discard or e.state == DYING) and e.runner.is_alive
        )

    def _fresh_ready(self) -> int:
        """Fresh runners idle or being pinged."""
        checking = self._checking and sum(
            1 for e in self.entries if e.fresh and e.state == CHECKING
        )
        return len(self._idle_fresh) + checking

    def wanted_starts(self) -> int:
        """How many more runners to start now: after a failure, one at a time."""
        if self.closed or self.broken:
            return 0
        wanted = max(0, self.options.target - self._staying() - self.starting)
        if self.streak:
            wanted = min(wanted, max(0, 1 - self.starting))
        return wanted

    def backoff(self) -> float:
        """The pause before the next start attempt (only right after a failure)."""
        if not self._last_start_failed or self.streak == 0:
            return 0.0
        return float(min(self.options.start_backoff * 2 ** (self.streak - 1), MAX_BACKOFF))

    def added(self, runner: Runner, now: float, epoch: int) -> Entry:
        """A runner has started (its start began in failure ``epoch``): it joins the
        pool, idle and fresh."""
        entry = Entry(runner, now, epoch)
        self.entries.add(entry)
        self._idle_fresh[entry] = None
        self.counts["spawned"] += 1
        self._last_start_failed = False
        return entry

    def start_failed(self, error: RunnerStartError, epoch: int) -> None:
        """A start that began in failure ``epoch`` failed. Failures of starts that ran at
        the same time count once in the streak."""
        self.counts["start_failures"] += 1
        self._last_failure = error
        self._last_start_failed = True
        if not error.retryable:
            self.broken = True  # the same options would fail the same way: no retries
            return
        if epoch != self.epoch:
            return  # began before the last counted failure: the same bout
        self.epoch += 1
        self.streak += 1
        if self.streak >= self.options.start_attempts:
            self.broken = True

    def broken_error(self) -> RunnerStartError:
        """A new error for each caller that a broken pool cannot serve."""
        error = self._last_failure
        assert error is not None
        attempts = self.options.start_attempts
        if error.retryable:
            why = (
                f"after {attempts} failed start{'s' if attempts != 1 else ''} in a row; "
                f"the last: {error}"
            )
        else:
            why = f"at once, since trying again cannot help: {error}"
        broken = RunnerStartError(
            f"the manager gave up starting runners {why}; fix the cause and open a new manager",
            stderr_tail=(),
            returncode=error.returncode,
            retryable=error.retryable,
        )
        broken.stderr_tail = error.stderr_tail
        broken.__cause__ = error
        return broken

    def _idle_of(self, entry: Entry) -> dict[Entry, None]:
        if entry.fresh:
            return self._idle_fresh
        if entry.retiring:
            return self._idle_retiring
        return self._idle_used

    def _make_idle(self, entry: Entry, now: float) -> None:
        entry.state = IDLE
        entry.idle_since = now
        self._idle_of(entry)[entry] = None

    def _remove(self, entry: Entry, bucket: Bucket) -> None:
        if entry.state == IDLE:
            del self._idle_of(entry)[entry]
        elif entry.state == CHECKING:
            self._checking -= 1
        entry.state = GONE
        self.entries.discard(entry)
        self.counts[bucket] += 1
        self.to_close.append(entry.runner)

    def _first_alive(self, idle: dict[Entry, None]) -> Entry | None:
        """The least recently used entry of ``idle`` whose runner is alive; dead ones
        found on the way wait for their watcher, out of service."""
        while idle:
            entry = next(iter(idle))
            if entry.runner.is_alive:
                return entry
            del idle[entry]
            entry.state = DYING
        return None

    # -- leases ---------------------------------------------------------------------------

    def _head(self, queue: deque[Waiter]) -> Waiter | None:
        while queue and not queue[0].waiting:
            queue.popleft()  # cancelled while waiting: dropped here, in O(1)
            self._settled_in_queue = max(0, self._settled_in_queue - 1)
        return queue[0] if queue else None

    def _any_idle(self) -> Entry | None:
        for idle in (self._idle_used, self._idle_retiring, self._idle_fresh):
            entry = self._first_alive(idle)
            if entry is not None:
                return entry
        return None

    def _hand_out(self, entry: Entry, fresh: bool) -> None:
        del self._idle_of(entry)[entry]
        entry.state = BUSY
        entry.was_fresh = entry.fresh
        entry.fresh = False
        entry.discard = fresh
        self.busy += 1
        self.counts["leases"] += 1

    def _settle(
        self,
        waiter: Waiter,
        *,
        entry: Entry | None = None,
        error: BaseException | None = None,
        queued: bool = True,
    ) -> None:
        waiter.waiting = False
        waiter.entry = entry
        waiter.error = error
        self.waiting -= 1
        if waiter.fresh:
            self._fresh_waiting -= 1
        waiter.event.set()
        if queued and entry is None:
            # Refused or gone before its turn: it stays in its queue until it reaches the
            # head. Callers that time out behind a long wait must not grow the queues
            # without bound, so they are swept once they are the majority.
            self._settled_in_queue += 1
            if self._settled_in_queue > max(COMPACT_MIN, self.waiting):
                for queue in (self._waiters_any, self._waiters_fresh):
                    live = [w for w in queue if w.waiting]
                    queue.clear()
                    queue.extend(live)
                self._settled_in_queue = 0

    def dispatch(self) -> None:
        """Give free runners to waiting callers, earliest first."""
        size = self.options.size
        while self.busy < size:
            general = self._head(self._waiters_any)
            fresh = self._head(self._waiters_fresh)
            any_idle = self._any_idle() if general is not None else None
            fresh_idle = self._first_alive(self._idle_fresh) if fresh is not None else None
            if any_idle is not None and (fresh_idle is None or general.seq < fresh.seq):  # type: ignore[union-attr]
                waiter, entry, queue = general, any_idle, self._waiters_any
            elif fresh_idle is not None:
                waiter, entry, queue = fresh, fresh_idle, self._waiters_fresh
            else:
                break
            assert waiter is not None
            queue.popleft()
            if waiter.fresh and entry.joined > waiter.since:
                self.counts["fresh_waits"] += 1  # its runner started after it asked
            self._hand_out(entry, waiter.fresh)
            self._settle(waiter, entry=entry, queued=False)
        if self.broken:
            self._fail_hopeless()

    def _fail_hopeless(self) -> None:
        """Nothing more is started: fail the callers that nothing left can serve."""
        if self.starting:
            return  # a start under way may still succeed
        hopeless_fresh = not any(
            e.fresh and e.state in (IDLE, CHECKING) and e.runner.is_alive for e in self.entries
        )
        hopeless_any = not any(e.runner.is_alive for e in self.entries)
        for queue, hopeless in (
            (self._waiters_fresh, hopeless_fresh),
            (self._waiters_any, hopeless_any),
        ):
            if hopeless:
                while queue:
                    waiter = queue.popleft()
                    if waiter.waiting:
                        self._settle(waiter, error=self.broken_error(), queued=False)

    def check_usable(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("this manager was closed; open a new one")

    def _refusal(self, fresh: bool) -> PoolFull:
        limit = self.options.max_waiting
        callers = f"{limit} caller{' already waits' if limit == 1 else 's already wait'}"
        if fresh and self.busy < self.options.size:
            self._fresh_refused += 1  # so that the next rebalance starts a fresh runner
            return PoolFull(
                f"no fresh (never used) runner is ready and {callers} for one "
                f"(max_waiting={limit}); one is being started: retry in a moment, or raise "
                "fresh_spares or max_waiting"
            )
        return PoolFull(
            f"no runner is free and {callers} for one (max_waiting={limit}); "
            "retry later, or raise size or max_waiting"
        )

    async def acquire(self, fresh: bool, before_wait: Callable[[bool], None]) -> Entry:
        """Lease a runner (FIFO). ``before_wait(will_wait)`` is called when the caller
        has to wait (True; it may refuse to, by raising) or was refused (False), once it
        is queued. Cancellable while waiting: then nothing was leased."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self.check_usable()
        if self.busy < self.options.size:
            # Nobody who could use a free runner is queued (dispatch would have served
            # them), so taking one now keeps the FIFO order.
            entry: Entry | None = None
            if fresh:
                if not self._fresh_waiting:
                    entry = self._first_alive(self._idle_fresh)
            elif self.waiting == self._fresh_waiting:
                entry = self._any_idle()
            if entry is not None:
                self._hand_out(entry, fresh)
                return entry
        waiter = Waiter(next(self._seq), fresh, trio.current_time())
        (self._waiters_fresh if fresh else self._waiters_any).append(waiter)
        self.waiting += 1
        if fresh:
            self._fresh_waiting += 1
        self.dispatch()
        if waiter.waiting:
            limit = self.options.max_waiting
            if limit is not None and self.waiting > limit:
                self._settle(waiter, error=self._refusal(fresh))
                before_wait(False)
            else:
                try:
                    before_wait(True)
                except BaseException:
                    self._settle(waiter)
                    raise
                try:
                    await waiter.event.wait()
                except BaseException:
                    if waiter.waiting:
                        self._settle(waiter)  # it leaves its queue lazily, or at a compaction
                    elif waiter.entry is not None:
                        self._give_back(waiter.entry)
                    raise
        if waiter.error is not None:
            raise waiter.error.with_traceback(None)
        assert waiter.entry is not None
        return waiter.entry

    def _give_back(self, entry: Entry) -> None:
        """A leased runner its caller never used (cancelled as it was handed over)."""
        if self.closed:
            return
        self.busy -= 1
        self.counts["leases"] -= 1
        if not entry.runner.is_alive:
            self._remove(entry, _bucket(entry.runner))
        else:
            entry.fresh = entry.was_fresh
            entry.discard = False
            self._make_idle(entry, entry.idle_since)  # as idle as it was: heartbeat timing
        self.dispatch()

    def release(self, entry: Entry, *, recycle: bool, now: float) -> None:
        """A lease ended: the runner goes back, or leaves the pool (to be closed)."""
        if self.closed:
            return  # the shutdown closes it
        self.busy -= 1
        runner = entry.runner
        if not runner.is_alive:
            self._remove(entry, _bucket(runner))
            return
        if entry.epoch == self.epoch:
            self.streak = 0  # started since the last failure, served and lives: starts work
        if entry.discard:
            self._remove(entry, "discarded")
            return
        if recycle:
            entry.retiring = True
        if entry.retiring and self._staying() >= self.options.target:
            self._remove(entry, "recycled")
            return
        self._make_idle(entry, now)

    def runner_ended(self, entry: Entry) -> Bucket | None:
        """The watcher saw a runner end. Returns its bucket if it left the pool now (it
        was idle); a busy one leaves when its caller returns it."""
        if entry.state == GONE or self.closed:
            return None  # closed by us
        if entry.state == BUSY:
            entry.discard = True  # out of the inventory: a replacement starts now
            return None
        runner = entry.runner
        bucket = _bucket(runner)
        killed_by_heartbeat = bucket == "killed" and entry.state == CHECKING
        if entry.fresh and (bucket == "crashed" or killed_by_heartbeat):
            # It died, or wedged, before it was ever leased: as good as a failed start.
            died = runner.lost_error()
            why = died.reason if isinstance(died, RunnerDied) else str(died)
            self.start_failed(
                RunnerStartError(
                    f"a runner died after it started, before it ran any code: {why}, "
                    f"{describe_exit(runner.returncode)}",
                    stderr_tail=runner.stderr_tail(),
                    returncode=runner.returncode,
                ),
                entry.epoch,
            )
        if entry.state == DYING:
            entry.state = GONE  # already out of the idle sets
            self.entries.discard(entry)
            self.counts[bucket] += 1
            self.to_close.append(runner)
        else:
            self._remove(entry, bucket)
        return bucket

    # -- rebalancing and the heartbeat ----------------------------------------------------

    def rebalance(self) -> None:
        """Retire idle used runners to make room for fresh ones that callers wait for,
        and close runners beyond the target once their replacements are in."""
        if self.closed:
            return
        target = self.options.target
        if not self.broken:
            wanted = min(self._fresh_waiting + self._fresh_refused, self.options.size - self.busy)
            short = wanted - self.starting - self._fresh_ready()
            while short > 0 and self.wanted_starts() == 0:
                entry = self._first_alive(self._idle_used)
                if entry is None:
                    break
                del self._idle_used[entry]
                entry.retiring = True
                self._idle_retiring[entry] = None
                short -= 1
        self._fresh_refused = 0
        while self._idle_retiring and self._staying() >= target:
            self._remove(next(iter(self._idle_retiring)), "recycled")
        # Above the target (a runner given back after its replacement had started):
        # the least useful idle runner goes.
        while self._staying() > target:
            extra = self._first_alive(self._idle_used) or self._first_alive(self._idle_fresh)
            if extra is None:
                break
            self._remove(extra, "recycled")

    def due_for_heartbeat(self, idle_since: float) -> list[Entry]:
        """Idle runners idle since before ``idle_since``: they are taken out of service
        (state "checking") until :meth:`checked`."""
        due: list[Entry] = []
        for idle in (self._idle_used, self._idle_retiring, self._idle_fresh):
            for entry in list(idle):
                if entry.idle_since <= idle_since:
                    del idle[entry]
                    entry.state = CHECKING
                    self._checking += 1
                    due.append(entry)
        return due

    def checked(self, entry: Entry, now: float) -> None:
        """A heartbeat ping was answered: back in service."""
        if entry.state == CHECKING:
            self._checking -= 1
            self._make_idle(entry, now)
            if entry.epoch == self.epoch and now - entry.joined >= STREAK_SETTLE:
                # Started since the last failure and alive and well for a while: the
                # streak ends even if no op has come its way (spares may wait long).
                self.streak = 0

    # -- closing --------------------------------------------------------------------------

    def close(self) -> list[Entry]:
        """Closed: fail every waiter; return every runner still in the pool (to close),
        which leaves it."""
        self.closed = True
        self.busy = 0
        for queue in (self._waiters_any, self._waiters_fresh):
            while queue:
                waiter = queue.popleft()
                if waiter.waiting:
                    error = trio.ClosedResourceError(
                        "the manager was closed while this call waited for a runner"
                    )
                    self._settle(waiter, error=error, queued=False)
        entries = list(self.entries)
        self.entries.clear()
        for idle in (self._idle_used, self._idle_retiring, self._idle_fresh):
            idle.clear()
        self._checking = 0
        for entry in entries:
            entry.state = GONE
        return entries
