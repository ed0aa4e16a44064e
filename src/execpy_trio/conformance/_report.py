"""The report of a run: as text for people, JSON for programs, JUnit XML for CI."""

from __future__ import annotations

import json
import shlex
from typing import Any
from xml.etree import ElementTree

from ._registry import MUST, Check, all_checks
from ._run import FAIL, PASS, SKIP, CheckResult, Report


def describe_runner(report: Report) -> str:
    w = report.probe
    if w is None:
        return f"no welcome to a plain hello: {report.probe_problem}"
    caps = " ".join(w.capabilities) or "none"
    return (
        f"{w.impl_name} {w.impl_version}, protocol {w.version[0]}.{w.version[1]}, "
        f"{w.language} {w.language_version}; capabilities: {caps}"
    )


def verdict(report: Report) -> str:
    if report.passed:
        extra = "" if report.strict else " (SHOULD checks are not counted without --strict)"
        if len(report.results) < len(all_checks()):
            return f"PASS: the {len(report.results)} checks selected pass" + extra
        return "PASS: the runner conforms" + extra
    levels = "MUST or SHOULD" if report.strict else "MUST"
    return f"FAIL: a {levels} check failed"


def _line(result: CheckResult, width: int) -> str:
    check = result.check
    text = f"  {result.outcome:4}  {check.level:6}  {check.id:{width}}  "
    if result.outcome == SKIP:
        return text + f"skipped: {result.reason}"
    return text + check.summary


def text(report: Report, *, verbose: bool = False) -> str:
    width = max((len(r.check.id) for r in report.results), default=10)
    out = [
        f"execpy conformance: {shlex.join(report.command)}",
        f"runner: {describe_runner(report)}",
        "",
    ]
    out += [_line(r, width) for r in report.results]
    failures = [r for r in report.results if r.outcome == FAIL]
    if failures:
        out += ["", "FAILURES"]
        for r in failures:
            out += ["", *failure_lines(r, report.strict)]
    if verbose:
        noted = [r for r in report.results if r.notes and r.outcome != FAIL]
        for r in noted:
            out += ["", f"{r.check.id}: notes", *(f"  {n}" for n in r.notes)]
    must_failed = sum(1 for r in failures if r.check.level == MUST)
    out += [
        "",
        f"{len(report.results)} checks: {report.count(PASS)} pass, {report.count(FAIL)} fail "
        f"({must_failed} MUST), {report.count(SKIP)} skip; {report.duration:.1f} s",
        verdict(report),
    ]
    return "\n".join(out) + "\n"


def failure_lines(r: CheckResult, strict: bool) -> list[str]:
    check = r.check
    counted = "" if r.counts_against(strict) else " (not counted without --strict)"
    lines = [
        f"{check.id} ({check.level}, spec section {check.section}){counted}",
        f"  requirement: {r.rule}",
        f"  expected:    {r.expected}",
        f"  got:         {_indent(r.got, 15)}",
    ]
    if r.notes:
        lines += ["  notes:", *(f"    {n}" for n in r.notes)]
    lines += ["  frames (C: the kit, R: the runner; seconds since the check began):"]
    lines += [f"    {f}" for f in r.frames] or ["    (none)"]
    lines += [f"  {_indent(runner, 2)}" for runner in r.runners]
    return lines


def _indent(text: str, by: int) -> str:
    return text.replace("\n", "\n" + " " * by)


def _check_json(check: Check) -> dict[str, Any]:
    return {
        "id": check.id,
        "section": check.section,
        "level": check.level,
        "summary": check.summary,
        "requirement": check.requirement,
        "needs": list(check.needs),
        "since": list(check.since),
    }


def result_json(r: CheckResult, strict: bool) -> dict[str, Any]:
    return {
        **_check_json(r.check),
        "outcome": r.outcome,
        "counts": r.counts_against(strict),
        "reason": r.reason,
        "rule": r.rule,
        "expected": r.expected,
        "got": r.got,
        "frames": list(r.frames),
        "notes": list(r.notes),
        "runners": list(r.runners),
        "duration": round(r.duration, 3),
    }


def to_json(report: Report) -> str:
    w = report.probe
    runner = None
    if w is not None:
        runner = {
            "impl_name": w.impl_name,
            "impl_version": w.impl_version,
            "version": list(w.version),
            "language": w.language,
            "language_version": w.language_version,
            "max_frame": w.max_frame,
            "capabilities": list(w.capabilities),
        }
    return json.dumps(
        {
            "command": list(report.command),
            "runner": runner,
            "probe_problem": report.probe_problem,
            "strict": report.strict,
            "passed": report.passed,
            "duration": round(report.duration, 3),
            "counts": {o: report.count(o) for o in (PASS, FAIL, SKIP)},
            "checks": [result_json(r, report.strict) for r in report.results],
        },
        indent=2,
    )


def list_json(checks: list[Check]) -> str:
    return json.dumps([_check_json(c) for c in checks], indent=2)


def to_junit(report: Report) -> bytes:
    """JUnit XML: one testcase per check. A SHOULD check that failed without --strict is
    written as skipped, with the failure as its message, so that CI does not fail on it."""
    suite = ElementTree.Element(
        "testsuite",
        name="execpy-conformance",
        tests=str(len(report.results)),
        failures=str(sum(1 for r in report.results if r.counts_against(report.strict))),
        skipped=str(
            sum(
                1
                for r in report.results
                if r.outcome == SKIP or (r.outcome == FAIL and not r.counts_against(report.strict))
            )
        ),
        time=f"{report.duration:.3f}",
    )
    props = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(props, "property", name="command", value=shlex.join(report.command))
    ElementTree.SubElement(props, "property", name="runner", value=describe_runner(report))
    for r in report.results:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"execpy.conformance.{r.check.section}",
            name=f"{r.check.id} [{r.check.level}]",
            time=f"{r.duration:.3f}",
        )
        if r.outcome == SKIP:
            ElementTree.SubElement(case, "skipped", message=r.reason)
        elif r.outcome == FAIL:
            detail = "\n".join(failure_lines(r, report.strict))
            if r.counts_against(report.strict):
                node = ElementTree.SubElement(case, "failure", message=r.reason)
            else:
                node = ElementTree.SubElement(
                    case, "skipped", message=f"SHOULD not met (counted with --strict): {r.reason}"
                )
            node.text = detail
    xml: bytes = ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)
    return xml
