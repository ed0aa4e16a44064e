"""Running checks: a probe for what the runner announces, then every check against a
fresh runner of its own, a few at a time, each within its time bound."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence

import attrs
import trio

from .._errors import describe_exit
from ..protocol import Welcome
from ._context import Context
from ._peer import CheckFailed, FrameLog, Peer
from ._registry import MUST, Check

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

PASS = "pass"
FAIL = "fail"
SKIP = "skip"
#: The per-check time bound, unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: Checks run at once, each with its own runner.
DEFAULT_JOBS = 4


@attrs.frozen
class CheckResult:
    """How one check went."""

    check: Check
    outcome: str
    #: Why it failed or was skipped ("" when it passed).
    reason: str = ""
    #: For a failure: the spec's words the runner broke.
    rule: str = ""
    expected: str = ""
    got: str = ""
    #: The decoded frames of the check, both ways.
    frames: tuple[str, ...] = ()
    #: SHOULD-level observations that did not fail the check.
    notes: tuple[str, ...] = ()
    #: Per runner started: how it ended, and the end of its own stderr.
    runners: tuple[str, ...] = ()
    duration: float = 0.0

    def counts_against(self, strict: bool) -> bool:
        """Whether this result fails the run."""
        return self.outcome == FAIL and (self.check.level == MUST or strict)


@attrs.frozen
class Report:
    """The results of one run of the kit."""

    command: tuple[str, ...]
    #: The welcome of the probe, or None when the runner gave none.
    probe: Welcome | None
    #: Why the probe failed, when it did.
    probe_problem: str
    results: tuple[CheckResult, ...]
    strict: bool
    duration: float

    @property
    def passed(self) -> bool:
        return not any(r.counts_against(self.strict) for r in self.results)

    def count(self, outcome: str, level: str | None = None) -> int:
        return sum(
            1
            for r in self.results
            if r.outcome == outcome and (level is None or r.check.level == level)
        )


async def probe(command: Sequence[str], check_timeout: float) -> tuple[Welcome | None, str]:
    """Start the runner once with a plain hello: what does it announce?"""
    peer = Peer(command, FrameLog(), "")
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(check_timeout):
                await peer.start(nursery)
                welcome = await peer.handshake()
                await peer.send({"kind": "shutdown"})
            return welcome, ""
        except CheckFailed as exc:
            return None, f"expected {exc.expected}; got {exc.got}"
        except trio.TooSlowError:
            return None, f"no welcome within {check_timeout:g} s"
        except OSError as exc:
            return None, f"the runner command did not start: {exc}"
        finally:
            await peer.aclose()
            nursery.cancel_scope.cancel()


def skip_reason(check: Check, welcome: Welcome | None) -> str:
    """Why ``check`` does not apply to a runner that gave ``welcome`` ("" if it does)."""
    if welcome is None:
        return ""  # nothing is known: run it, and let it fail on its own terms
    if tuple(welcome.version) < check.since:
        return (
            f"the runner speaks protocol {welcome.version[0]}.{welcome.version[1]}; this "
            f"check applies from {check.since[0]}.{check.since[1]}"
        )
    missing = [c for c in check.needs if c not in welcome.capabilities]
    if missing:
        return f"the runner's welcome does not announce {' or '.join(map(repr, missing))}"
    present = [c for c in check.absent if c in welcome.capabilities]
    if present:
        return (
            f"the runner announces {' and '.join(map(repr, present))}; this check is for "
            "runners that do not"
        )
    return ""


async def run_check(
    command: Sequence[str], check: Check, welcome: Welcome | None, check_timeout: float
) -> CheckResult:
    """Run one check against fresh runners; never raises for what the runner does."""
    reason = skip_reason(check, welcome)
    if reason:
        return CheckResult(check, SKIP, reason)
    start = trio.current_time()
    bound = max(check_timeout, check.min_timeout)
    failure: CheckFailed | None = None
    async with trio.open_nursery() as nursery:
        ctx = Context(command, welcome, nursery)
        try:
            with trio.move_on_after(bound) as scope:
                await check.function(ctx)
                await ctx.drain()
            if scope.cancelled_caught:
                peer = ctx.current
                if peer is None:
                    waiting, got = "the runner to start", f"nothing within the check's {bound:g} s"
                else:
                    waiting = peer.writing or peer.waiting_for
                    got = f"nothing of that within the check's {bound:g} s"
                    got += "" if peer.writing else peer.since_last_read()
                failure = CheckFailed(waiting, got)
        except CheckFailed as exc:
            failure = exc
        except BaseExceptionGroup as group:  # a check's own nursery
            failure = _first_failure(group)
            if failure is None:
                raise
        except Exception:
            failure = CheckFailed(
                "the kit to run the check",
                "an error in the kit itself (please report it):\n" + traceback.format_exc(),
            )
        finally:
            await ctx.aclose()
            nursery.cancel_scope.cancel()
    runners = tuple(_describe_runner(i, peer) for i, peer in enumerate(ctx.peers, 1))
    duration = trio.current_time() - start
    notes = tuple(ctx.notes())
    if failure is None:
        return CheckResult(check, PASS, notes=notes, duration=duration)
    return CheckResult(
        check,
        FAIL,
        reason=f"expected {failure.expected}; got {failure.got}",
        rule=failure.rule or f"{check.section}: {check.requirement}",
        expected=failure.expected,
        got=failure.got,
        frames=tuple(ctx.log.lines()),
        notes=notes,
        runners=runners,
        duration=duration,
    )


def _first_failure(group: BaseExceptionGroup[BaseException]) -> CheckFailed | None:
    for exc in group.exceptions:
        if isinstance(exc, CheckFailed):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_failure(exc)
            if found is not None:
                return found
    return None


def _describe_runner(index: int, peer: Peer) -> str:
    text = f"runner #{index} {describe_exit(peer.returncode)}"
    tail = bytes(peer.stderr_tail).decode("utf-8", "replace").splitlines()[-12:]
    if tail:
        text += "; the end of its stderr:\n" + "\n".join(f"    {line}" for line in tail)
    return text


Progress = Callable[[int, int, CheckResult], None]


async def run_checks(
    command: Sequence[str],
    checks: Sequence[Check],
    *,
    check_timeout: float = DEFAULT_TIMEOUT,
    jobs: int = DEFAULT_JOBS,
    strict: bool = False,
    on_result: Progress | None = None,
) -> Report:
    """Run ``checks`` against the runner ``command`` starts; see :func:`run_conformance`."""
    start = trio.current_time()
    welcome, problem = await probe(command, check_timeout)
    results: dict[str, CheckResult] = {}
    limiter = trio.CapacityLimiter(jobs)

    async def one(check: Check) -> None:
        async with limiter:
            result = await run_check(command, check, welcome, check_timeout)
        results[check.id] = result
        if on_result is not None:
            on_result(len(results), len(checks), result)

    # The checks that wait on the runner's own clock go first, to overlap the rest.
    order = sorted(checks, key=lambda c: not c.slow)
    async with trio.open_nursery() as nursery:
        for check in order:
            nursery.start_soon(one, check)
    return Report(
        command=tuple(command),
        probe=welcome,
        probe_problem=problem,
        results=tuple(results[c.id] for c in checks),
        strict=strict,
        duration=trio.current_time() - start,
    )
