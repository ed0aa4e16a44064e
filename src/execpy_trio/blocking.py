"""The same API for code that is not async: scripts, plain pytest tests, notebooks.

``blocking.open_runner(...)`` and ``blocking.open_manager(...)`` are ordinary context
managers with the options of their async twins. Each runs a Trio loop in a thread of its
own, owned by the block: the async runner or manager lives in that loop, and every call
from the calling thread is handed to it and waited for.

Theory of operation: :class:`_Loop` is the thread and its loop. A call is a task started
in the loop's nursery under a cancel scope of its own; the calling thread waits on a
``concurrent.futures.Future`` (an interruptible wait). ``timeout=`` is that scope's
deadline: when it passes, the scope is cancelled, which interrupts the code in the runner
exactly as a cancelled scope does in async code, and the call raises TimeoutError. A
KeyboardInterrupt while the calling thread waits cancels the scope the same way, waits
(bounded) for the interruption to finish, and propagates. An async context manager (the
runner, the manager, an exec_stream, a lease) is held open by a task of its own until the
block that asked for it ends. Leaving the outermost block closes what it holds, stops the
loop and joins the thread: nothing is left behind.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ._open import open_runner as _open_runner
from ._operation import Operation
from ._results import ExecResult, InputRequest, Output
from ._session import Runner, RunnerStatistics
from .manager import Manager, ManagerStatistics
from .manager import open_manager as _open_manager

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._options import OptionKeywords, RunnerOptions
    from ._pool import PoolOptions
    from .launch import Launcher
    from .manager import ManagerKeywords

T = TypeVar("T")
#: How long the loop thread has to start, and to stop once its holdings are closed.
THREAD_BOUND = 10.0
#: How long a KeyboardInterrupt waits for the interrupted call to wind down (the runner's
#: cancel_grace is inside it: a runner that ignores the interrupt is killed by then).
INTERRUPT_BOUND = 30.0

__all__ = ["BlockingManager", "BlockingOperation", "BlockingRunner", "open_manager", "open_runner"]


def _refuse_inside_trio(what: str) -> None:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    raise RuntimeError(
        f"execpy_trio.blocking.{what} was called from inside a Trio loop, where it would block "
        "the loop (and could deadlock it): use the async API there (await runner.exec(...), "
        "async with execpy_trio.open_runner() as runner)"
    )


class _Loop:
    """A Trio loop in a thread of its own, and the calls into it."""

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(THREAD_BOUND):
            raise RuntimeError(f"the blocking API's Trio thread did not start in {THREAD_BOUND} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # only before ready: the loop itself failed
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _submit(self, fn: Callable[[], None]) -> None:
        if self.closed or self._token is None:
            raise trio.ClosedResourceError("this blocking runner or manager is closed")
        try:
            trio.from_thread.run_sync(fn, trio_token=self._token)
        except trio.RunFinishedError:
            raise trio.ClosedResourceError("this blocking runner or manager is closed") from None

    def call(
        self,
        afn: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,
        what: str = "the call",
        on_timeout: Callable[[], str] | None = None,
    ) -> T:
        """Run ``afn(*args)`` in the loop and wait for it; see the module's docstring."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        scope = trio.CancelScope()
        interrupted = False

        async def task() -> None:
            try:
                with scope:
                    if timeout is not None:
                        scope.deadline = trio.current_time() + timeout
                    result = await afn(*args)
            except trio.Cancelled:
                future.set_exception(trio.ClosedResourceError("closed while the call ran"))
                raise
            except BaseException as exc:
                future.set_exception(exc)
                return
            if scope.cancelled_caught:
                if interrupted:
                    future.set_exception(KeyboardInterrupt())
                else:
                    extra = on_timeout() if on_timeout is not None else ""
                    future.set_exception(
                        TimeoutError(f"{what} did not finish within {timeout:g} s{extra}")
                    )
            else:
                future.set_result(result)

        assert self._nursery is not None or self.closed
        self._submit(lambda: self._nursery.start_soon(task))  # type: ignore[union-attr]
        try:
            return future.result()
        except KeyboardInterrupt:
            # Interrupt the code in the runner as a cancelled scope would, then go on up.
            interrupted = True
            with contextlib.suppress(trio.ClosedResourceError):
                self._submit(scope.cancel)
            with contextlib.suppress(BaseException):
                future.result(timeout=INTERRUPT_BOUND)
            raise

    def hold(
        self,
        acm: Callable[[], contextlib.AbstractAsyncContextManager[T]],
        *,
        timeout: float | None = None,
        what: str = "the block",
    ) -> _Held[T]:
        """Enter ``acm()`` in the loop and keep it open until :meth:`_Held.close`;
        ``timeout`` bounds the entering (TimeoutError), not the holding."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        entered: concurrent.futures.Future[tuple[T, trio.Event]] = concurrent.futures.Future()
        exited: concurrent.futures.Future[None] = concurrent.futures.Future()
        scope = trio.CancelScope()
        interrupted = False

        async def holder() -> None:
            try:
                with scope:
                    if timeout is not None:
                        scope.deadline = trio.current_time() + timeout
                    async with acm() as value:
                        scope.deadline = math.inf  # entered: the holding has no bound
                        release = trio.Event()
                        entered.set_result((value, release))
                        await release.wait()
                if scope.cancelled_caught:  # its start was interrupted, or too slow
                    _fail_all(
                        (entered, exited),
                        KeyboardInterrupt()
                        if interrupted
                        else TimeoutError(f"{what} did not start within {timeout:g} s"),
                    )
                    return
            except trio.Cancelled:
                _fail_all((entered, exited), trio.ClosedResourceError("the loop was stopped"))
                raise
            except BaseException as exc:
                _fail_all((entered, exited), exc)
                return
            exited.set_result(None)

        self._submit(lambda: self._nursery.start_soon(holder))  # type: ignore[union-attr]
        try:
            value, release = entered.result()
        except KeyboardInterrupt:
            # Starting was interrupted: cancel this start only, and wait (bounded) for what
            # it started to end; the loop and what else it holds go on.
            interrupted = True
            with contextlib.suppress(trio.ClosedResourceError):
                self._submit(scope.cancel)
            with contextlib.suppress(BaseException):
                exited.result(timeout=INTERRUPT_BOUND)
            raise
        return _Held(self, value, release, exited)

    def stop(self) -> None:
        """Stop the loop (cancelling whatever still runs in it) and join the thread."""
        if self.closed:
            return
        if self._thread.is_alive():
            # A start that was interrupted may not have got its loop going yet.
            self._ready.wait(THREAD_BOUND)
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self.closed = True
        self._thread.join(THREAD_BOUND)


def _fail_all(futures: tuple[concurrent.futures.Future[Any], ...], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


@contextlib.contextmanager
def _holding(held: _Held[T]) -> Iterator[T]:
    """Yield what ``held`` holds; close it after, without hiding the block's own error."""
    try:
        yield held.value
    except BaseException:
        with contextlib.suppress(Exception):
            held.close()
        raise
    held.close()


class _Held(Generic[T]):
    """An async context manager held open in the loop by a task of its own."""

    def __init__(
        self,
        loop: _Loop,
        value: T,
        release: trio.Event,
        exited: concurrent.futures.Future[None],
    ) -> None:
        self.loop = loop
        self.value = value
        self._release = release
        self._exited = exited

    def close(self) -> None:
        """Leave the async block (closing what it holds) and wait for that; re-raises
        what leaving raised."""
        with contextlib.suppress(trio.ClosedResourceError):
            self.loop._submit(self._release.set)
        self._exited.result()


class BlockingOperation:
    """:class:`Operation` for blocking code: iterate it for :class:`Output` and
    :class:`InputRequest` events; it ends after the completion."""

    def __init__(self, loop: _Loop, op: Operation, timeout: float | None) -> None:
        self._loop = loop
        self._op = op
        self._timeout = timeout

    def __iter__(self) -> Iterator[Output | InputRequest]:
        return self

    def __next__(self) -> Output | InputRequest:
        async def step() -> Output | InputRequest | None:
            try:
                return await self._op.__anext__()
            except StopAsyncIteration:
                return None

        event = self._loop.call(step, timeout=self._timeout, what="waiting for an event")
        if event is None:
            raise StopIteration
        return event

    def send_input(self, text: str) -> None:
        """Answer the pending input request (a trailing newline is removed)."""
        self._loop.call(self._op.send_input, text)

    def send_eof(self) -> None:
        """Answer the pending input request with end of input (``EOFError`` in the code)."""
        self._loop.call(self._op.send_eof)

    def cancel(self) -> None:
        """Ask the runner to interrupt the code; keep iterating for the rest."""
        self._loop.call(self._op.cancel)

    @property
    def state(self) -> str:
        return self._op.state

    @property
    def finished(self) -> bool:
        return self._op.finished

    @property
    def result(self) -> ExecResult:
        """As :attr:`Operation.result`."""
        return self._op.result


class BlockingRunner:
    """:class:`Runner` for blocking code. Every call takes ``timeout=`` (seconds, or None
    for none): when it passes, the code is interrupted in the runner, as a cancelled
    scope does in async code, and TimeoutError is raised; the runner stays usable (unless
    the code ignored the interrupt for ``cancel_grace`` and the runner was killed: the
    message says so). A KeyboardInterrupt in the calling thread during a call interrupts
    the code the same way and then propagates."""

    def __init__(self, loop: _Loop, runner: Runner) -> None:
        self._loop = loop
        self._runner = runner
        #: Threads with an exec_stream of this runner open: a call from one of them
        #: would wait for the stream that waits for it.
        self._streaming: set[int] = set()

    def _check(self, what: str) -> None:
        _refuse_inside_trio(what)
        if threading.get_ident() in self._streaming:
            raise RuntimeError(
                f"{what} was called while an exec_stream of this runner is open in this "
                "thread: the runner runs one op at a time, so it would wait for the stream, "
                "which waits for you. Finish the stream first (leave its block), or use "
                "another runner"
            )

    def __repr__(self) -> str:
        return f"<BlockingRunner pid={self._runner.pid} state={self._runner.state}>"

    def _after_timeout(self) -> str:
        if self._runner.is_alive:
            return "; the code was interrupted and the runner is still usable"
        return "; the code ignored the interrupt, so the runner was killed: start a new one"

    def exec(
        self,
        code: str,
        *,
        stdin: str | None = None,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """:meth:`Runner.exec`, waiting at most ``timeout`` seconds."""
        self._check("BlockingRunner.exec")

        async def run() -> ExecResult:
            return await self._runner.exec(
                code, stdin=stdin, variables=variables, filename=filename
            )

        return self._loop.call(run, timeout=timeout, what="exec", on_timeout=self._after_timeout)

    def eval(
        self, expr: str, *, variables: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """:meth:`Runner.eval`, waiting at most ``timeout`` seconds."""
        self._check("BlockingRunner.eval")

        async def run() -> Any:
            return await self._runner.eval(expr, variables=variables)

        return self._loop.call(run, timeout=timeout, what="eval", on_timeout=self._after_timeout)

    @contextlib.contextmanager
    def exec_stream(
        self,
        code: str,
        *,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[BlockingOperation]:
        """:meth:`Runner.exec_stream` as a plain context manager yielding a
        :class:`BlockingOperation`. ``timeout`` bounds the wait for the op to start and
        each wait for an event."""
        self._check("BlockingRunner.exec_stream")
        held = self._loop.hold(
            lambda: self._runner.exec_stream(code, variables=variables, filename=filename),
            timeout=timeout,
            what="exec_stream",
        )
        me = threading.get_ident()
        self._streaming.add(me)
        try:
            with _holding(held) as op:
                yield BlockingOperation(self._loop, op, timeout)
        finally:
            self._streaming.discard(me)

    def ping(self, *, timeout: float | None = None) -> float:
        """:meth:`Runner.ping`: the round trip in seconds."""
        self._check("BlockingRunner.ping")
        return self._loop.call(self._runner.ping, timeout=timeout, what="ping")

    def statistics(self) -> RunnerStatistics:
        return self._runner.statistics()

    @property
    def pid(self) -> int:
        return self._runner.pid

    @property
    def state(self) -> str:
        return self._runner.state

    @property
    def is_alive(self) -> bool:
        return self._runner.is_alive

    @property
    def returncode(self) -> int | None:
        return self._runner.returncode

    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the runner wrote to its own stderr."""
        return self._runner.stderr_tail()


class BlockingManager:
    """:class:`Manager` for blocking code; ``timeout=`` on every call as for
    :class:`BlockingRunner` (it includes the wait for a free runner)."""

    def __init__(self, loop: _Loop, manager: Manager) -> None:
        self._loop = loop
        self._manager = manager

    def exec(
        self,
        code: str,
        *,
        fresh: bool = False,
        stdin: str | None = None,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """:meth:`Manager.exec`, waiting at most ``timeout`` seconds in all."""
        _refuse_inside_trio("BlockingManager.exec")

        async def run() -> ExecResult:
            return await self._manager.exec(
                code, fresh=fresh, stdin=stdin, variables=variables, filename=filename
            )

        return self._loop.call(run, timeout=timeout, what="exec")

    def eval(
        self,
        expr: str,
        *,
        fresh: bool = False,
        variables: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """:meth:`Manager.eval`, waiting at most ``timeout`` seconds in all."""
        _refuse_inside_trio("BlockingManager.eval")

        async def run() -> Any:
            return await self._manager.eval(expr, fresh=fresh, variables=variables)

        return self._loop.call(run, timeout=timeout, what="eval")

    @contextlib.contextmanager
    def exec_stream(
        self,
        code: str,
        *,
        fresh: bool = False,
        variables: Mapping[str, Any] | None = None,
        filename: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[BlockingOperation]:
        """:meth:`Manager.exec_stream` as a plain context manager."""
        _refuse_inside_trio("BlockingManager.exec_stream")
        held = self._loop.hold(
            lambda: self._manager.exec_stream(
                code, fresh=fresh, variables=variables, filename=filename
            ),
            timeout=timeout,
            what="exec_stream (waiting for a runner)",
        )
        with _holding(held) as op:
            yield BlockingOperation(self._loop, op, timeout)

    @contextlib.contextmanager
    def runner(
        self, *, fresh: bool = False, timeout: float | None = None
    ) -> Iterator[BlockingRunner]:
        """:meth:`Manager.runner`: an exclusive lease for the block; ``timeout`` bounds
        the wait for a runner (TimeoutError)."""
        _refuse_inside_trio("BlockingManager.runner")
        held = self._loop.hold(
            lambda: self._manager.runner(fresh=fresh), timeout=timeout, what="the lease"
        )
        with _holding(held) as runner:
            yield BlockingRunner(self._loop, runner)

    def statistics(self) -> ManagerStatistics:
        return self._manager.statistics()


@contextlib.contextmanager
def _in_loop(
    name: str, acm: Callable[[], contextlib.AbstractAsyncContextManager[T]]
) -> Iterator[tuple[_Loop, T]]:
    loop = _Loop(name)
    try:
        loop.start()
        held = loop.hold(acm)
    except BaseException:
        loop.stop()
        raise
    try:
        with _holding(held) as value:
            yield loop, value
    finally:
        loop.stop()


@contextlib.contextmanager
def open_runner(
    options: RunnerOptions | None = None,
    *,
    launcher: Launcher | None = None,
    **overrides: Unpack[OptionKeywords],
) -> Iterator[BlockingRunner]:
    """:func:`execpy_trio.open_runner` as a plain context manager: the same options, a
    :class:`BlockingRunner`. Starting raises what starting raises (RunnerStartError, ...);
    leaving the block shuts the runner down and stops the loop thread. A
    KeyboardInterrupt while it starts ends what started. From inside a Trio loop it
    raises RuntimeError: use the async API there."""
    _refuse_inside_trio("open_runner")
    with _in_loop(
        "execpy-blocking-runner",
        lambda: _open_runner(options, launcher=launcher, **overrides),
    ) as (loop, runner):
        yield BlockingRunner(loop, runner)


@contextlib.contextmanager
def open_manager(
    options: RunnerOptions | None = None,
    *,
    pool: PoolOptions | None = None,
    launcher: Launcher | None = None,
    **keywords: Unpack[ManagerKeywords],
) -> Iterator[BlockingManager]:
    """:func:`execpy_trio.open_manager` as a plain context manager: the same options, a
    :class:`BlockingManager`; starting, leaving and Trio loops as for :func:`open_runner`."""
    _refuse_inside_trio("open_manager")
    with _in_loop(
        "execpy-blocking-manager",
        lambda: _open_manager(options, pool=pool, launcher=launcher, **keywords),
    ) as (loop, manager):
        yield BlockingManager(loop, manager)
