"""How long the conformance kit takes against our runner (target: under 60 s on 2 cores).

Runs the whole kit, several times at each ``--jobs`` setting, and reports the wall time
and the CPU time it took (the kit itself and all the runners it started). Run it pinned
too (``taskset -c 0 python bench/bench_conformance.py``): on one CPU the checks cannot
overlap their work, only their waiting.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import trio

from execpy_trio.conformance import PASS, all_checks, run_checks

RUNNER = [sys.executable, "-m", "execpy_trio.runner", "--stdio"]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    checks = all_checks()
    cpus = len(os.sched_getaffinity(0))
    print(f"## Conformance kit: {len(checks)} checks against our runner, {cpus} CPU(s)\n")
    print(f"| jobs | wall s (median of {ROUNDS}) | min | CPU s | checks passed |")
    print("|---|---|---|---|---|")
    for jobs in (1, 2, 4, 8):
        walls, cpu, passed = [], [], 0
        for _ in range(ROUNDS):
            c0, t0 = _cpu(), time.perf_counter()
            report = trio.run(lambda: run_checks(RUNNER, checks, jobs=jobs))  # noqa: B023
            walls.append(time.perf_counter() - t0)
            cpu.append(_cpu() - c0)
            passed = sum(1 for r in report.results if r.outcome == PASS)
        print(
            f"| {jobs} | {statistics.median(walls):.1f} | {min(walls):.1f} | "
            f"{statistics.median(cpu):.1f} | {passed}/{len(checks)} |"
        )


if __name__ == "__main__":
    main()
