"""The conformance kit inside your own pytest suite: each check is one test item.

In a test module::

    from execpy_trio.conformance.pytest_plugin import conformance_tests

    test_my_runner = conformance_tests(["./my-runner", "--stdio"])

Without a command, the test takes it from the ``execpy_runner_command`` fixture: override
it in your conftest.py, or load this module as a plugin (``-p
execpy_trio.conformance.pytest_plugin``) and give ``--execpy-runner-command "CMD ARGS"``.

A check that does not apply is skipped with its reason; a MUST check that fails fails its
test with the report (the requirement, what was expected and what came, the frames); a
SHOULD check that fails is an expected failure (xfail) unless ``strict=True``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
import trio

from ..protocol import Welcome
from ._registry import Check, select
from ._report import failure_lines
from ._run import DEFAULT_TIMEOUT, FAIL, SKIP, probe, run_check

_probes: dict[tuple[str, ...], Welcome | None] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("execpy").addoption(
        "--execpy-runner-command",
        metavar="CMD",
        help="the command that starts the runner under test in stdio mode (split like a shell)",
    )


@pytest.fixture(scope="session")
def execpy_runner_command(request: pytest.FixtureRequest) -> list[str]:
    """The runner under test, from ``--execpy-runner-command``; override it to set it."""
    value = request.config.getoption("--execpy-runner-command", default=None)
    if not value:
        pytest.fail(_NO_COMMAND, pytrace=False)
    return shlex.split(value)


_NO_COMMAND = (
    "the conformance tests need the runner command: pass it to conformance_tests([...]), or "
    "override the execpy_runner_command fixture, or load -p "
    "execpy_trio.conformance.pytest_plugin and give --execpy-runner-command 'CMD ARGS'"
)


def _welcome(command: Sequence[str], check_timeout: float) -> Welcome | None:
    key = tuple(command)
    if key not in _probes:
        _probes[key] = trio.run(probe, command, check_timeout)[0]
    return _probes[key]


def conformance_tests(
    command: Sequence[str] | None = None,
    *,
    strict: bool = False,
    check_timeout: float = DEFAULT_TIMEOUT,
    patterns: Iterable[str] = (),
) -> Callable[..., None]:
    """A test function parametrized over the kit's checks (``patterns`` as ``-k``)."""
    checks = select(patterns)

    @pytest.mark.parametrize("execpy_check", checks, ids=[c.id for c in checks])
    def test_conformance(execpy_check: Check, request: pytest.FixtureRequest) -> None:
        cmd: Any = command
        if cmd is None:
            try:
                cmd = request.getfixturevalue("execpy_runner_command")
            except pytest.FixtureLookupError:
                cmd = None
            if cmd is None:  # outside the except: no chained traceback in the report
                pytest.fail(_NO_COMMAND, pytrace=False)
        welcome = _welcome(cmd, check_timeout)
        result = trio.run(run_check, cmd, execpy_check, welcome, check_timeout)
        if result.outcome == SKIP:
            pytest.skip(result.reason)
        if result.outcome == FAIL:
            text = "\n".join(failure_lines(result, strict))
            if result.counts_against(strict):
                pytest.fail(text, pytrace=False)
            pytest.xfail(f"SHOULD not met (counted with strict=True): {result.reason}")

    return test_conformance
