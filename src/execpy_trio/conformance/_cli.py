"""``execpy conformance``: check a runner against the spec from the command line.

Exit status: 0 every MUST check passed (with ``--strict``, every SHOULD check too); 1 a
counted check failed; 2 usage error, or the runner command cannot be run at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

import trio

from . import _report
from ._registry import all_checks, select
from ._run import DEFAULT_JOBS, DEFAULT_TIMEOUT, FAIL, CheckResult, run_checks

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--json", action="store_true", help="print the report (or list) as JSON")
    parser.add_argument("--junit", metavar="FILE", help="also write the report as JUnit XML")
    parser.add_argument(
        "-k",
        dest="patterns",
        metavar="PATTERN",
        action="append",
        default=[],
        help="run only checks whose ID contains PATTERN or matches it as a glob "
        "(repeatable: any may match)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"time bound per check in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--strict", action="store_true", help="SHOULD checks count too")
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"checks run at once, each with its own runner (default {DEFAULT_JOBS})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show notes of passing checks")
    parser.add_argument(
        "runner_command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARGS...]",
        help="the command that starts the runner in stdio mode, e.g. "
        "-- python -m execpy_trio.runner --stdio",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="execpy conformance",
        description="Check the runner that COMMAND starts (speaking the protocol on its stdin "
        "and stdout) against spec/protocol.md. Exit 0 when every MUST check passes "
        "(--strict: SHOULD too), 1 when one fails, 2 for a usage error.",
    )
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args)


def _print(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) ends us quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the failed flush at exit: point stdout at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _usage(message: str) -> int:
    print(f"execpy conformance: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    command = list(args.runner_command)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        checks = select(args.patterns)
    except ValueError as exc:
        return _usage(str(exc))
    if args.list:
        if args.json:
            _print(_report.list_json(checks) + "\n")
        else:
            width = max(len(c.id) for c in checks)
            lines = []
            for c in checks:
                needs = f"  (needs {', '.join(c.needs)})" if c.needs else ""
                since = f"  (since {c.since[0]}.{c.since[1]})" if c.since > (1, 0) else ""
                lines.append(f"{c.level:6}  {c.id:{width}}  {c.summary}{needs}{since}\n")
            lines.append(f"{len(checks)} check{'' if len(checks) == 1 else 's'}\n")
            _print("".join(lines))
        return EXIT_PASS
    if not command:
        return _usage(
            "give the runner command after --, e.g. "
            "'execpy conformance -- python -m execpy_trio.runner --stdio'"
        )
    if args.timeout <= 0 or args.jobs < 1:
        return _usage("--timeout must be positive and --jobs at least 1")
    program = command[0]
    if shutil.which(program) is None and not (os.sep in program and os.access(program, os.X_OK)):
        return _usage(f"cannot run {program!r}: no such executable (is it on PATH?)")
    progress = _Progress(sys.stderr) if sys.stderr.isatty() and not args.json else None
    report = trio.run(
        lambda: run_checks(
            command,
            checks,
            check_timeout=args.timeout,
            jobs=args.jobs,
            strict=args.strict,
            on_result=progress,
        )
    )
    if progress is not None:
        progress.clear()
    if args.junit:
        with open(args.junit, "wb") as f:
            f.write(_report.to_junit(report))
    _print(
        _report.to_json(report) + "\n" if args.json else _report.text(report, verbose=args.verbose)
    )
    return EXIT_PASS if report.passed else EXIT_FAIL


class _Progress:
    """One line on a terminal, rewritten as checks finish."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.failed = 0

    def __call__(self, done: int, total: int, result: CheckResult) -> None:
        if result.outcome == FAIL:
            self.failed += 1
        line = (
            f"\r[{done:3}/{total}] {self.failed} failed; last: {result.check.id} {result.outcome}"
        )
        self.stream.write(line[:100].ljust(100))  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]

    def clear(self) -> None:
        self.stream.write("\r" + " " * 100 + "\r")  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]


__all__ = ["all_checks", "main"]
