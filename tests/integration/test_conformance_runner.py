"""The conformance kit against real runners: ours passes every check, and each deliberately
broken runner (tests/mutant_runner.py, a proxy in front of ours that adds one defect) fails
exactly the checks that cover its defect, and no others.

A whole run of the kit costs about 20 s of CPU through the proxy (two processes per runner,
some 150 runners), so the narrow defects run the whole kit and the broad ones run the
sections their defect touches plus a control group of sections it must not touch.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from execpy_trio.conformance import FAIL, PASS, SKIP, all_checks, run_checks

RUNNER = [sys.executable, "-m", "execpy_trio.runner", "--stdio"]
MUTANT = [sys.executable, str(Path(__file__).resolve().parents[1] / "mutant_runner.py")]
#: The runner's own 10 s clock; no proxy defect touches what happens before a hello.
NOT_FOR_MUTANTS = {"5/hello-timeout"}
#: Checks (ID prefixes) a defect outside them must leave passing.
CONTROL = ["1/", "4.2/", "6.4/", "6.5/print", "6.8/ping-idle"]

CANCELS = {
    "6.6/withdrawn-request",
    "6.7/cancel-at-once",
    "6.7/cancel-child-wait",
    "6.7/cancel-input",
    "6.7/cancel-sleep",
    "6.7/cancel-tight-loop",
    "6.7/namespace-survives",
}
INPUT_REQUESTS = {
    "2/eof-input-wait",
    "4.2/password-flag",
    "6.6/input-eof",
    "6.6/input-request",
    "6.6/withdrawn-request",
    "6.7/cancel-input",
}

# defect: (the checks to run, None for all; the checks that must fail)
MUTANTS: dict[str, tuple[list[str] | None, set[str]]] = {
    # Narrow defects: the whole kit.
    "forget-done": (None, CANCELS | {"6.9/shutdown-busy"}),
    "ignore-cancel": (None, CANCELS | {"6.7/cancel-caught", "6.7/cancel-unknown-op"}),
    "wrong-version": (None, {"5/version-mismatch"}),
    "lose-password": (None, {"4.2/password-flag"}),
    "run-second-exec": (
        None,
        {"6.1/stale-id-while-busy", "6.2/busy", "6.9/request-after-shutdown"},
    ),
    "fewer-capabilities": (None, set()),
    "only-exec": (None, set()),
    # Broad or slow ones: their sections, and the control group.
    "extra-fields": (["3.", "6.6", "6.9"], set()),
    "output-after-done": (
        ["4.2/done-error", "6.4/syntax-error", "5.1/output-limit", "6.6/no-stdin", "6.7/"],
        # Caught when read late, after the check's last read, as much as at once.
        {
            "4.2/done-error",
            "4.2/eval-no-input",
            "5.1/output-limit",
            "6.4/exit-and-interrupt",
            "6.4/filename",
            "6.4/syntax-error",
            "6.4/traceback-user-frames",
            "6.6/no-stdin",
        },
    ),
    "garbage": (
        ["6.5/print", "6.5/fd-writes", "10/fd-safety", "6.6/input-eof", "6.4/syntax-error"],
        {"6.5/print", "6.5/fd-writes", "10/fd-safety"},
    ),
    "hang-on-eof": (
        ["2/", "7.4/", "6.9/eof-after-shutdown", "6.9/shutdown-idle", "10/exit-status"],
        {
            "2/eof-idle",
            "2/eof-busy",
            "2/eof-input-wait",
            "7.4/truncated-frame",
            "6.9/eof-after-shutdown",
            "10/exit-status",
        },
    ),
    "hang-on-garbage": (
        ["3.1/", "8/malformed-body", "3.3/frame-too-large", "4.1/unknown-fields"],
        {"3.1/zero-length", "3.1/length-mismatch", "8/malformed-body", "3.3/frame-too-large"},
    ),
    "no-pong-while-busy": (
        ["6.8/", "6.9/ping-while-closing", "8/request-backpressure"],
        {"6.8/ping-busy", "6.9/ping-while-closing", "8/request-backpressure"},
    ),
    "unknown-kind-fatal": (
        ["4.1/unknown", "7.2/wrong-role", "8/unknown-error-code"],
        {"4.1/unknown-kind", "4.1/unknown-kind-first", "7.2/wrong-role"},
    ),
    "bad-prompt-type": (
        ["6.6/", "4.2/password-flag"],
        INPUT_REQUESTS - {"2/eof-input-wait", "6.7/cancel-input"},
    ),
}


def _summary(report) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(
        f"{r.check.id}: {r.outcome} {r.reason[:300]}" for r in report.results if r.outcome != PASS
    )


async def test_our_runner_passes_every_check_strictly() -> None:
    report = await run_checks(RUNNER, all_checks(), strict=True)
    assert report.passed, _summary(report)
    # Every check but the one for runners without eval.
    outcomes = {r.check.id: r.outcome for r in report.results}
    assert {i for i, o in outcomes.items() if o != PASS} == {"6.3/eval-unsupported"}
    assert outcomes["6.3/eval-unsupported"] == SKIP
    assert report.probe is not None and "fd-capture" in report.probe.capabilities


@pytest.mark.parametrize("defect", sorted(MUTANTS))
async def test_each_broken_runner_fails_exactly_its_checks(defect: str) -> None:
    patterns, must_fail = MUTANTS[defect]
    prefixes = tuple(patterns + CONTROL) if patterns else ("",)
    checks = [c for c in all_checks() if c.id.startswith(prefixes) and c.id not in NOT_FOR_MUTANTS]
    ids = {c.id for c in checks}
    assert must_fail <= ids, must_fail - ids
    # Legitimate checks take under 3 s here; a defect's hang costs the bound, not more.
    report = await run_checks([*MUTANT, defect], checks, jobs=6, check_timeout=6.0)
    failed = {r.check.id for r in report.results if r.outcome == FAIL}
    assert failed == must_fail, _summary(report)
    skipped = {r.check.id for r in report.results if r.outcome == SKIP}
    # Every mutant but only-exec announces eval: the check for runners without it is skipped.
    skipped.discard("6.3/eval-unsupported")
    if defect == "fewer-capabilities":
        assert skipped == {"6.5/fd-writes", "6.5/child-output", "6.5/order-written"}
        assert all("'fd-capture'" in r.reason for r in report.results if r.check.id in skipped)
    elif defect == "only-exec":
        assert skipped == {c.id for c in checks if c.needs}
        assert all("does not announce" in r.reason for r in report.results if r.outcome == SKIP)
    else:
        assert skipped == set()
    for r in report.results:
        if r.outcome == FAIL:  # a failure says what was expected and what came, with frames
            assert r.expected and r.got and r.rule and r.frames, r


def test_command_line_reports_and_exit_status(tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "execpy_trio.conformance",
            "--json",
            "--junit",
            str(junit),
            "-k",
            "6.8",
            "-k",
            "6.4/value",
            "--",
            *MUTANT,
            "no-pong-while-busy",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stderr
    data = json.loads(p.stdout)
    outcomes = {c["id"]: c["outcome"] for c in data["checks"]}
    assert outcomes == {"6.4/value": PASS, "6.8/ping-busy": FAIL, "6.8/ping-idle": PASS}
    failed = next(c for c in data["checks"] if c["outcome"] == FAIL)
    assert failed["rule"].startswith("6.8: The runner answers every `ping`")
    assert any(" C " in f and "ping" in f for f in failed["frames"])
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from execpy_trio.cli import main; sys.exit(main())",
            "conformance",
            "-k",
            "6.8",
            "--",
            *RUNNER,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS: the 2 checks selected pass" in p.stdout


def test_pytest_form_one_item_per_check(tmp_path: Path) -> None:
    """An implementer's own suite: the command given directly, or by the plugin's option."""
    (tmp_path / "test_given.py").write_text(
        "from execpy_trio.conformance.pytest_plugin import conformance_tests\n"
        f"test_ours = conformance_tests({RUNNER!r}, patterns=['6.8', '6.5/fd-writes'])\n"
        f"test_broken = conformance_tests({[*MUTANT, 'fewer-capabilities']!r}, "
        "patterns=['6.5/fd-writes'])\n"
    )
    (tmp_path / "test_option.py").write_text(
        "from execpy_trio.conformance.pytest_plugin import conformance_tests\n"
        "test_from_option = conformance_tests(patterns=['6.8/ping-busy'])\n"
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "-p",
            "execpy_trio.conformance.pytest_plugin",
            "--rootdir",
            str(tmp_path),
            "--execpy-runner-command",
            shlex.join([*MUTANT, "no-pong-while-busy"]),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    out = p.stdout
    assert "PASSED test_given.py::test_ours[6.8/ping-idle]" in out, out
    assert "PASSED test_given.py::test_ours[6.8/ping-busy]" in out, out
    assert "PASSED test_given.py::test_ours[6.5/fd-writes]" in out, out
    assert "SKIPPED" in out and "does not announce 'fd-capture'" in out, out
    assert "FAILED test_option.py::test_from_option[6.8/ping-busy]" in out, out
    assert "requirement: 6.8: The runner answers every `ping`" in out, out
    assert p.returncode == 1
