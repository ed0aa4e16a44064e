"""The pytest plugin (registered through the ``pytest11`` entry point as ``execpy``).

Fixtures:

- ``execpy_runner``: a fresh :class:`~execpy_trio.Runner` for one pytest-trio test
  (``@pytest.mark.trio``, or ``trio_mode``), closed after it;
- ``execpy_sync_runner``: a fresh :class:`~execpy_trio.blocking.BlockingRunner` for a
  plain test, closed after it.

Both are forked from the process-wide fork server (a template that outlives every test's
Trio loop, started on first use and ended at exit), so a fresh interpreter per test costs
milliseconds. The blocking ones come from a session-wide pool (in a Trio loop thread of
the session) that keeps fresh runners started ahead, so a test rarely waits for one.
Options that cannot fork (a sandbox, a command) spawn instead.

``@pytest.mark.execpy(**options)`` sets :class:`~execpy_trio.RunnerOptions` fields for
one test (``limits=Limits(...)``, ``preload=[...]``, ``env={...}``, ...), over the
command-line defaults ``--execpy-preload``, ``--execpy-cpu-seconds``,
``--execpy-memory``, ``--execpy-output-bytes`` and ``--execpy-spawn``.

A test that fails shows its runner's own stderr (its last lines) in the report, and an
error from the library reaches the report as itself, never wrapped in an ExceptionGroup.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import attrs
import pluggy
import pytest

from ._errors import ExecpyError
from ._limits import Limits
from ._options import RunnerOptions, resolve_options

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

#: The runners a test's fixtures gave it, for its report.
_RUNNERS = pytest.StashKey[list[Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("execpy", "execpy-trio runners (the execpy_runner fixtures)")
    group.addoption(
        "--execpy-preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module every test's runner imports before it starts (repeatable)",
    )
    group.addoption("--execpy-cpu-seconds", type=float, metavar="S", help="CPU seconds per op")
    group.addoption("--execpy-memory", type=int, metavar="BYTES", help="address space limit")
    group.addoption("--execpy-output-bytes", type=int, metavar="N", help="output bytes per op")
    group.addoption(
        "--execpy-spawn",
        action="store_true",
        help="spawn each test's runner instead of forking it from the fork server",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "execpy(**options): RunnerOptions for this test's execpy_runner / execpy_sync_runner "
        "(limits=Limits(...), preload=[...], env={...}, ...)",
    )


def _options(request: pytest.FixtureRequest) -> RunnerOptions:
    config = request.config
    limits = {
        name: config.getoption(f"--execpy-{name.replace('_', '-')}")
        for name in ("cpu_seconds", "memory", "output_bytes")
    }
    limits = {k: v for k, v in limits.items() if v is not None}
    base: dict[str, Any] = {}
    if limits:
        base["limits"] = Limits(**limits)
    if config.getoption("--execpy-preload"):
        base["preload"] = tuple(config.getoption("--execpy-preload"))
    for marker in reversed(list(request.node.iter_markers("execpy"))):  # nearest wins
        if marker.args:
            raise TypeError(
                "@pytest.mark.execpy takes RunnerOptions fields as keywords, e.g. "
                f"@pytest.mark.execpy(limits=Limits(cpu_seconds=1)), not {marker.args!r}"
            )
        kwargs = dict(marker.kwargs)
        limits_given = kwargs.pop("limits", None)
        if isinstance(limits_given, Limits) and isinstance(base.get("limits"), Limits):
            # Limits merge limit by limit: a marker's cpu_seconds keeps --execpy-memory.
            given = {
                f.name: getattr(limits_given, f.name)
                for f in attrs.fields(Limits)
                if getattr(limits_given, f.name) is not None
            }
            base["limits"] = attrs.evolve(base["limits"], **given)
        elif limits_given is not None or "limits" in marker.kwargs:
            base["limits"] = limits_given
        base.update(kwargs)
    return resolve_options(None, base)


def _launcher(request: pytest.FixtureRequest, options: RunnerOptions) -> Any:
    from .launch import LocalLauncher
    from .launch._forkserver import can_fork, shared_launcher

    if request.config.getoption("--execpy-spawn") or not can_fork(options):
        return LocalLauncher()
    return shared_launcher()


@pytest.fixture
async def execpy_runner(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh Runner for this (pytest-trio) test, closed after it."""
    from ._open import open_runner

    options = _options(request)
    async with open_runner(options, launcher=_launcher(request, options)) as runner:
        request.node.stash.setdefault(_RUNNERS, []).append(runner)
        yield runner


class _SyncPools:
    """The session's blocking runners: one Trio loop thread, and per set of options a small
    pool whose fresh spares start while earlier tests run, so that a test's runner is
    usually ready when it asks (a fresh one each time: it is discarded after the test)."""

    def __init__(self) -> None:
        from .blocking import _Loop

        self.loop = _Loop("execpy-blocking-pytest")
        self.loop.start()
        self._held: dict[str, Any] = {}

    def manager(self, options: RunnerOptions, launcher: Any) -> Any:
        from .manager import open_manager

        key = repr((options, type(launcher).__name__))
        if key in self._held:
            self._held[key] = self._held.pop(key)  # the most recently used goes last
        else:
            while len(self._held) >= MAX_POOLS:
                # Many option sets (a parametrized env, cwd=tmp_path): keep the recent few.
                oldest = self._held.pop(next(iter(self._held)))
                with contextlib.suppress(Exception):
                    oldest.close()
            self._held[key] = self.loop.hold(
                lambda: open_manager(options, size=1, fresh_spares=SPARES, launcher=launcher)
            )
        return self._held[key].value

    def close(self) -> None:
        try:
            for held in self._held.values():
                with contextlib.suppress(Exception):
                    held.close()
        finally:
            self.loop.stop()


#: Fresh runners each session pool keeps started ahead of the tests.
SPARES = 2
#: Pools (sets of options) kept at once; the least recently used is closed past it.
MAX_POOLS = 4


@pytest.fixture(scope="session")
def _execpy_sync_pools() -> Iterator[_SyncPools]:
    pools = _SyncPools()
    yield pools
    pools.close()


@pytest.fixture
def execpy_sync_runner(
    request: pytest.FixtureRequest, _execpy_sync_pools: _SyncPools
) -> Iterator[Any]:
    """A fresh blocking runner for this (plain) test, discarded after it."""
    from .blocking import BlockingRunner, _holding

    options = _options(request)
    manager = _execpy_sync_pools.manager(options, _launcher(request, options))
    held = _execpy_sync_pools.loop.hold(lambda: manager.runner(fresh=True))
    with _holding(held) as runner:
        request.node.stash.setdefault(_RUNNERS, []).append(runner)
        yield BlockingRunner(_execpy_sync_pools.loop, runner)


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested groups of one, or ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    runners = item.stash.get(_RUNNERS, [])
    if call.excinfo is not None and isinstance(call.excinfo.value, BaseExceptionGroup):
        inner = _single(call.excinfo.value)
        if isinstance(inner, ExecpyError) or (runners and inner is not call.excinfo.value):
            call.excinfo = pytest.ExceptionInfo.from_exception(inner)
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for runner in runners:
        tail = runner.stderr_tail()
        state = f"pid {runner.pid}, {runner.state}"
        if runner.returncode is not None:
            from ._errors import describe_exit

            state += f", {describe_exit(runner.returncode)}"
        text = "\n".join(tail) if tail else "(its stderr was empty)"
        report.sections.append((f"execpy runner ({state}): its stderr", text))
