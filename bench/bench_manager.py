"""The manager: throughput with 1, 2 and 4 runners, fresh-runner latency, memory over many
ops; all in one run, against a single warm runner with one caller.

Usage: python bench/bench_manager.py [--quick]
Run it pinned too (``taskset -c 0 python bench/bench_manager.py``): on one CPU a pool
cannot run ops in parallel, so the pinned run shows the pool's overhead, the unpinned one
its gain.

1. **CPU ops** (``WORK``, a few ms of CPU each): ops/s of ``manager.exec`` with 1, 2 and 4
   runners and 16 concurrent callers, as a ratio to one warm ``Runner`` and one caller.
2. **Trivial ops** (``x = 1``): the same, with the client's own CPU per op
   (``time.process_time`` of this process: the bound on 2 cores).
3. **Fresh runners**: the latency of ``manager.exec("x = 1", fresh=True)`` in a steady
   stream (one call every ``GAP`` s) and back to back, median and p99, against a cold
   ``open_runner`` + the same exec + close.
4. **Memory**: this process's RSS every 10,000 trivial ops over 100,000 through a pool
   of 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import trio

import execpy_trio._public as ex

WORK = "s = 0\nfor i in range(15_000):\n    s += i * i\n"
TRIVIAL = "x = 1"
CALLERS = 16
GAP = 0.1


def _rss_mib() -> float:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _single(code: str, n: int) -> tuple[float, float]:
    """ops/s and client CPU us/op of one warm runner, one caller."""
    async with ex.open_runner() as runner:
        for _ in range(min(n, 50)):
            await runner.exec(code)
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(n):
            await runner.exec(code)
        wall = time.perf_counter() - start
        return n / wall, (time.process_time() - cpu) / n * 1e6


async def _pooled(code: str, size: int, n: int) -> tuple[float, float]:
    """ops/s and client CPU us/op of ``manager.exec`` with ``CALLERS`` callers."""
    async with ex.open_manager(size=size, fresh_spares=0) as manager:
        for _ in range(size * 10):
            await manager.exec(code)
        per_caller = n // CALLERS

        async def caller() -> None:
            for _ in range(per_caller):
                r = await manager.exec(code)
                assert r.status == "ok", r

        cpu, start = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(caller)
        wall = time.perf_counter() - start
        total = per_caller * CALLERS
        return total / wall, (time.process_time() - cpu) / total * 1e6


async def _throughput(code: str, n: int, label: str) -> None:
    base, base_cpu = await _single(code, n // 4)
    print(f"\n### {label}\n")
    print("| setup | ops/s | x one runner, one caller | client CPU, us/op |")
    print("|---|---|---|---|")
    print(f"| one warm Runner, 1 caller | {base:,.0f} | 1.00 | {base_cpu:.0f} |")
    for size in (1, 2, 4):
        rate, cpu = await _pooled(code, size, n)
        print(
            f"| manager size={size}, {CALLERS} callers | {rate:,.0f} | {rate / base:.2f} | "
            f"{cpu:.0f} |"
        )


async def _fresh(n: int) -> None:
    cold: list[float] = []
    for _ in range(max(5, n // 4)):
        start = time.perf_counter()
        async with ex.open_runner() as runner:
            await runner.exec(TRIVIAL)
        cold.append((time.perf_counter() - start) * 1000)
    rows: list[tuple[str, list[float], Any]] = [("cold open_runner + exec + close", cold, None)]
    for label, gap in (
        (f"fresh=True, one call every {GAP * 1000:.0f} ms", GAP),
        ("fresh=True, back to back", 0.0),
    ):
        async with ex.open_manager(size=2, fresh_spares=1) as manager:
            times: list[float] = []
            for _ in range(n):
                start = time.perf_counter()
                await manager.exec(TRIVIAL, fresh=True)
                times.append((time.perf_counter() - start) * 1000)
                if gap:
                    await trio.sleep(gap)
            rows.append((label, times, manager.statistics()))
    print("\n### Fresh runners: latency of one call, ms\n")
    print("| call | median | p99 | fresh_waits |")
    print("|---|---|---|---|")
    for label, times, stats in rows:
        waits = f"{stats.fresh_waits} of {len(times)}" if stats is not None else ""
        print(f"| {label} | {statistics.median(times):.2f} | {_p(times, 0.99):.2f} | {waits} |")


async def _memory(total: int) -> None:
    step = total // 10
    samples: list[float] = []
    async with ex.open_manager(size=2, fresh_spares=0) as manager:
        for _ in range(1000):
            await manager.exec(TRIVIAL)

        async def caller(n: int) -> None:
            for _ in range(n):
                await manager.exec(TRIVIAL)

        samples.append(_rss_mib())
        for _ in range(10):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(caller, step // 4)
            samples.append(_rss_mib())
        stats = manager.statistics()
    growth = (samples[-1] - samples[1]) / samples[1] * 100
    print(f"\n### Memory: this process's RSS over {total:,} ops (pool of 2, 4 callers)\n")
    print("| after ops | " + " | ".join(f"{i * step // 1000}k" for i in range(11)) + " |")
    print("|---|" + "---|" * 11)
    print("| RSS, MiB | " + " | ".join(f"{s:.1f}" for s in samples) + " |")
    print(f"\nfrom 10k to {total // 1000}k ops: {growth:+.1f}% (leases {stats.leases:,})")


async def main(quick: bool) -> None:
    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs available to this process: {cpus}")
    n_cpu, n_trivial, n_fresh, n_mem = (
        (64, 2000, 20, 20_000) if quick else (480, 20_000, 100, 100_000)
    )
    await _throughput(WORK, n_cpu, f"CPU ops (a few ms each), {n_cpu} ops")
    await _throughput(TRIVIAL, n_trivial, f"Trivial ops (x = 1), {n_trivial} ops")
    await _fresh(n_fresh)
    await _memory(n_mem)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer ops: a smoke run")
    args = parser.parse_args()
    trio.run(main, args.quick)
