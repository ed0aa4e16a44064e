"""Start-up cost of limits, preload and the sandbox, against a plain runner, in one run.

Usage: python bench/bench_startup.py [--rounds N]
Run it pinned too (``taskset -c 0 python bench/bench_startup.py``).

Each row: the median ms from entering ``open_runner(...)`` to the first ``exec("x = 1")``
done, and to the end of the block (the runner's exit included), over N starts per row,
the rows interleaved round by round so that a busy moment of the machine hits all of them
alike. The floor is spawning ``python -c "import msgpack"`` from Trio and waiting for it.
Also: the round trip of ``exec("x = 1")`` on a warm runner of each kind (the limits'
per-op cost: the CPU limit's accounting runs on every op).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from typing import Any

import trio

import execpy_trio._public as ex

LIMITS = ex.Limits(memory=2**31, cpu_seconds=10.0, open_files=256, output_bytes=2**24)

KINDS: dict[str, dict[str, Any]] = {
    "plain runner": {},
    "limits (all four)": {"limits": LIMITS},
    "preload=('json',)": {"preload": ("json",)},
    "sandbox": {"sandbox": ex.Sandbox()},
    "sandbox + limits": {"sandbox": ex.Sandbox(), "limits": LIMITS},
}


async def _floor_ms() -> float:
    start = time.perf_counter()
    await trio.run_process([sys.executable, "-c", "import msgpack"])
    return (time.perf_counter() - start) * 1000


async def _start_ms(options: dict[str, Any]) -> tuple[float, float]:
    start = time.perf_counter()
    async with ex.open_runner(**options) as runner:
        await runner.exec("x = 1")
        first = time.perf_counter()
    return (first - start) * 1000, (time.perf_counter() - start) * 1000


async def _round_trip_us(options: dict[str, Any], n: int = 2000) -> float:
    async with ex.open_runner(**options) as runner:
        for _ in range(200):
            await runner.exec("x = 1")
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n // 5):
                await runner.exec("x = 1")
            best = min(best, (time.perf_counter() - start) / (n // 5) * 1e6)
    return best


async def main(rounds: int) -> None:
    kinds = dict(KINDS)
    if shutil.which("bwrap") is None:
        print("(bwrap not installed: sandbox rows skipped)")
        kinds = {k: v for k, v in kinds.items() if "sandbox" not in k}
    floor: list[float] = []
    first: dict[str, list[float]] = {k: [] for k in kinds}
    whole: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        floor.append(await _floor_ms())
        for name, options in kinds.items():
            a, b = await _start_ms(options)
            first[name].append(a)
            whole[name].append(b)
    f = statistics.median(floor)
    print(f"floor: spawn python -c 'import msgpack', wait: {f:.1f} ms (median of {rounds})\n")
    print("| runner | open_runner to first exec, ms | x floor | + close, ms | round trip, us |")
    print("|---|---|---|---|---|")
    plain = statistics.median(first["plain runner"])
    for name, options in kinds.items():
        m = statistics.median(first[name])
        rt = await _round_trip_us(options)
        print(
            f"| {name} | {m:.1f} (+{m - plain:.1f}) | {m / f:.2f} | "
            f"{statistics.median(whole[name]):.1f} | {rt:.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    trio.run(main, args.rounds)
