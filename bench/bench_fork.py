"""Fresh interpreters: time to the first result of a fresh runner, forked against spawned,
and against the peers that fork for functions; with a heavy preload (numpy) and without.

Usage: python bench/bench_fork.py [--calls N] [--no-numpy]
Run it pinned too (``taskset -c 0 python bench/bench_fork.py``).

Rows, each the median and p99 of N calls in a steady stream (one every ``GAP`` s, so a
spare can be ready, as in a test harness or an autograder feeding jobs):

- ``python -c "import msgpack"`` spawned from Trio and waited for: the floor a runner
  start is compared with (the goal: a fresh forked runner's first result at most 0.3x it);
- a cold ``open_runner`` + ``exec("x = 1")`` + close (spawned);
- ``manager.exec("x = 1", fresh=True)``, the manager's default launcher (the fork server),
  and the same with ``launcher=LocalLauncher()`` (spawned spares);
- multiprocessing's forkserver (``set_forkserver_preload``), from a small main module of
  its own (``_mp_fresh.py``: a child imports its parent's main module, and this one
  imports Trio): a new Process per call that puts one result on a queue;
- trio-parallel with a fresh worker per call (``retire`` after one job), fork workers.

With ``preload=("numpy",)`` the same rows again (the peers preload numpy their way): the
goal is a fresh forked runner at least 10x faster than a cold runner that imports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import execpy_trio._public as ex

GAP = 0.05


def _stats(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"{statistics.median(times):.2f} | {p99:.2f}"


async def _timed(n: int, one: Callable[[], Awaitable[Any]]) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await one()
        times.append((time.perf_counter() - start) * 1000)
        await trio.sleep(GAP)
    return times


def _noop() -> int:
    return 1


async def _rows(n: int, preload: tuple[str, ...]) -> list[tuple[str, list[float]]]:
    rows: list[tuple[str, list[float]]] = []
    imports = "import msgpack" + "".join(f"; import {m}" for m in preload)

    async def floor() -> None:
        await trio.run_process([sys.executable, "-c", imports])

    rows.append((f"python -c {imports!r}", await _timed(n, floor)))

    async def cold() -> None:
        async with ex.open_runner(preload=preload) as runner:
            await runner.exec("x = 1")

    rows.append(("cold open_runner + exec + close", await _timed(n, cold)))
    for label, launcher in (
        ("manager fresh=True, fork server (default)", None),
        ("manager fresh=True, spawned spares", ex.LocalLauncher()),
    ):
        async with ex.open_manager(
            size=2, fresh_spares=1, preload=preload, launcher=launcher
        ) as manager:
            for _ in range(3):
                await manager.exec("x = 1", fresh=True)  # the template is up

            async def fresh(manager: ex.Manager = manager) -> None:
                await manager.exec("x = 1", fresh=True)

            rows.append((label, await _timed(n, fresh)))

    helper = Path(__file__).with_name("_mp_fresh.py")
    result = await trio.run_process(
        [sys.executable, str(helper), str(n), str(GAP), *preload], capture_stdout=True
    )
    rows.append(("multiprocessing forkserver, new Process", json.loads(result.stdout)))
    try:
        import trio_parallel  # type: ignore[import-untyped]
    except ImportError:
        return rows
    async with trio_parallel.open_worker_context(
        retire=lambda: True, worker_type=trio_parallel.WorkerType.FORK
    ) as context:
        await context.run_sync(_noop)

        async def tp_fresh() -> None:
            await context.run_sync(_noop)

        rows.append(("trio-parallel fork, fresh worker per call", await _timed(n, tp_fresh)))
    return rows


async def main(n: int, numpy: bool) -> None:
    sets: list[tuple[str, ...]] = [()]
    if numpy:
        try:
            import numpy as np  # noqa: F401 - in the parent, for trio-parallel's fork workers
        except ImportError:
            print("(numpy not installed: pip install numpy; its rows are skipped)")
        else:
            sets.append(("numpy",))
    for preload in sets:
        rows = await _rows(n, preload)
        floor = statistics.median(rows[0][1])
        cold = statistics.median(rows[1][1])
        print(f"\n### preload={preload!r}: first result of a fresh interpreter, ms ({n} calls)\n")
        print("| how | median | p99 | x floor | cold runner / this |")
        print("|---|---|---|---|---|")
        for label, times in rows:
            median = statistics.median(times)
            print(f"| {label} | {_stats(times)} | {median / floor:.2f} | {cold / median:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--no-numpy", action="store_true")
    args = parser.parse_args()
    trio.run(main, args.calls, not args.no_numpy)
