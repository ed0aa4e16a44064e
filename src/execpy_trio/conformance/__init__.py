"""The conformance kit: check any runner, in any language, against spec/protocol.md.

From the command line: ``execpy conformance [options] -- COMMAND [ARGS...]`` (or
``python -m execpy_trio.conformance``). From Python: :func:`run_conformance`. From pytest:
:mod:`execpy_trio.conformance.pytest_plugin`. See docs/conformance.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._peer import CheckFailed
from ._registry import CAPABILITIES, MUST, SHOULD, Check, all_checks, select
from ._run import (
    DEFAULT_JOBS,
    DEFAULT_TIMEOUT,
    FAIL,
    PASS,
    SKIP,
    CheckResult,
    Report,
    probe,
    run_check,
    run_checks,
)


async def run_conformance(
    command: Sequence[str],
    *,
    patterns: Iterable[str] = (),
    check_timeout: float = DEFAULT_TIMEOUT,
    jobs: int = DEFAULT_JOBS,
    strict: bool = False,
) -> Report:
    """Check the runner that ``command`` starts (stdio mode) and return the report.

    Each check starts fresh runners of its own and ends them, whatever happens; at most
    ``jobs`` checks run at once, and each is bounded by ``check_timeout`` seconds (a check that
    waits on a bound the spec gives the runner takes at least that long). A check that
    runs out of time fails, naming what it was waiting for. Cancelling the call ends every
    runner it started before it returns. ``patterns`` selects checks as ``-k`` does (a
    ValueError names one that matches nothing).
    """
    return await run_checks(
        command, select(patterns), check_timeout=check_timeout, jobs=jobs, strict=strict
    )


__all__ = [
    "CAPABILITIES",
    "DEFAULT_JOBS",
    "DEFAULT_TIMEOUT",
    "FAIL",
    "MUST",
    "PASS",
    "SHOULD",
    "SKIP",
    "Check",
    "CheckFailed",
    "CheckResult",
    "Report",
    "all_checks",
    "probe",
    "run_check",
    "run_checks",
    "run_conformance",
    "select",
]
