"""Scaling: ops/s of ``manager.exec("x = 1")`` with 1, 2 and 4 runners and 1 to 64
concurrent callers, and the per-op latency percentiles as the load grows.

One manager per pool size (``open_manager(size=N, fresh_spares=0)``) and a reference
``Runner`` are opened at once and warmed up. Then, in each of ``rounds`` rounds, for each
caller count, each setup in turn (the order rotates): that many tasks call ``await
manager.exec("x = 1")`` in a loop (status checked), first for a short warm-up window
(untimed: the callers' queue reaches its steady state), then for the measured window.
Every op is timed on its own, from the call to its return: the wait for a free runner
included, which is what a caller sees. A window's ops/s = its ops / the wall time from its
start until the last caller has returned; the table gives the median over the rounds, the
percentiles are over every op of every round. The client's own CPU time
(``time.process_time`` of this process) per op is recorded too: on 2 cores a pool of
trivial ops is bound by it. The reference, one warm ``Runner`` (no manager) with one
caller, is measured beside every caller count, and a CPU op (``bench_manager.WORK``, a few
ms of CPU) with 16 callers shows where a pool pays off.

The per-op latencies are kept as percentiles (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9,
100; exact order statistics of every op) rather than as the raw list: at ~5,000 ops/s over
21 windows the list would be a few MB of JSON per placement.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from figures import _common as c

NAME = "scaling"
TITLE = "Scaling through the manager"
QUICK_SECONDS = 6
FULL_SECONDS = 45

CODE = "x = 1"
#: Callers of the CPU op rows (bench_manager.py's WORK, a few ms of CPU: where a pool pays).
WORK_CALLERS = 16
SIZES = (1, 2, 4)
CALLERS = (1, 2, 4, 8, 16, 32, 64)
QUICK_CALLERS = (1, 4, 16, 64)
WARM = 100
LEVELS = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"callers": QUICK_CALLERS, "rounds": 1, "warm_s": 0.03, "window_s": 0.15}
    return {"callers": CALLERS, "rounds": 3, "warm_s": 0.08, "window_s": 0.35}


def measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import trio

    return trio.run(_measure, quick, progress)


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {f"{q:g}": round(c.percentile(s, q), 1) for q in LEVELS}


class _Cell:
    """One setup (reference or pool size) at one caller count, over all rounds: each
    round's ops/s, and every op's latency (us) and the client's CPU (s)."""

    def __init__(self, callers: int) -> None:
        self.callers = callers
        self.rates: list[float] = []
        self.latencies: list[float] = []
        self.cpu = 0.0

    def result(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "callers": self.callers,
            "ops": n,
            "ops_per_s": round(c.percentile(self.rates, 50), 1),
            "ops_per_s_rounds": [round(r, 1) for r in self.rates],
            "client_cpu_us_per_op": round(self.cpu / n * 1e6, 1) if n else None,
            "latency_us": _percentiles(self.latencies),
        }


async def _window(call: Any, callers: int, seconds: float, cell: _Cell | None = None) -> None:
    """``callers`` tasks calling ``call()`` until ``seconds`` have passed; into ``cell``
    (ops / the wall time until the last caller returned) unless it is a warm-up."""
    import trio

    clock = time.perf_counter
    latencies: list[float] = []

    async def caller(stop: float) -> None:
        record = latencies.append
        while True:
            start = clock()
            if start >= stop:
                return
            result = await call()
            end = clock()
            if result.status != "ok":
                raise RuntimeError(f"scaling: {result!r}")
            record((end - start) * 1e6)

    cpu, start = time.process_time(), clock()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller, start + seconds)
    wall = clock() - start
    if cell is not None:
        cell.cpu += time.process_time() - cpu
        cell.rates.append(len(latencies) / wall)
        cell.latencies += latencies


def _rotated(items: list[Any], i: int) -> list[Any]:
    return items[i % len(items) :] + items[: i % len(items)]


async def _measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import contextlib

    from bench_manager import WORK

    import execpy_trio as ex

    sizes = _sizes(quick)
    warm_s, window_s, rounds = sizes["warm_s"], sizes["window_s"], sizes["rounds"]
    out: dict[str, Any] = {"sizes": sizes, "code": CODE, "work": WORK, "pools": {}}
    async with contextlib.AsyncExitStack() as stack:
        # Everything alive at once and the windows interleaved: in each round, for each
        # caller count, the reference and every pool size in turn (the order rotates), so
        # a busy moment of the machine does not land on one setup only; ops/s is the
        # median over the rounds.
        runner = await stack.enter_async_context(ex.open_runner())
        targets: dict[str, Any] = {"single": runner}
        for size in SIZES:
            targets[str(size)] = await stack.enter_async_context(
                ex.open_manager(size=size, fresh_spares=0)
            )
        for _ in range(WARM):
            (await runner.exec(CODE)).check()
        for size in SIZES:
            # Every runner warmed: more callers than runners, so each one serves.
            await _window(_caller_of(targets[str(size)], CODE), size * 2, warm_s * 4)
        keys = list(targets)
        cells = {k: {n: _Cell(1 if k == "single" else n) for n in sizes["callers"]} for k in keys}
        work = {k: _Cell(1 if k == "single" else WORK_CALLERS) for k in keys}
        step = 0
        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}")
            for callers in sizes["callers"]:
                for key in _rotated(keys, step):
                    n = 1 if key == "single" else callers
                    call = _caller_of(targets[key], CODE)
                    await _window(call, n, warm_s)
                    await _window(call, n, window_s, cells[key][callers])
                step += 1
            # CPU ops: the same, one caller count.
            for key in _rotated(keys, step):
                n = 1 if key == "single" else WORK_CALLERS
                call = _caller_of(targets[key], WORK)
                await _window(call, n, warm_s)
                await _window(call, n, window_s, work[key])
            step += 1
        for size in SIZES:
            stats = targets[str(size)].statistics()
            # The pool stayed what it was: no runner crashed, was killed or replaced.
            if stats.crashed or stats.killed or stats.recycled or stats.spawned != size:
                raise RuntimeError(f"scaling: the pool changed during the figure: {stats}")
            out["pools"][str(size)] = {
                "rows": [cells[str(size)][n].result() for n in sizes["callers"]],
                "statistics": _stats_dict(stats),
            }
        value = await runner.eval("x")
        if value != 1:
            raise RuntimeError(f"scaling: x is {value!r} in the reference runner")
    # The reference (one caller) was measured beside every caller count: all of it.
    whole = _Cell(1)
    for cell in cells["single"].values():
        whole.rates += cell.rates
        whole.latencies += cell.latencies
        whole.cpu += cell.cpu
    out["single"] = whole.result()
    out["work_rows"] = {k: cell.result() for k, cell in work.items()}
    return out


def _caller_of(target: Any, code: str) -> Any:
    async def call() -> Any:
        return await target.exec(code)

    return call


def _stats_dict(stats: Any) -> dict[str, Any]:
    import attrs

    if attrs.has(type(stats)):
        return {k: v for k, v in attrs.asdict(stats).items() if isinstance(v, int | float)}
    return {}


# --- render ------------------------------------------------------------------------------


def _ms(us: float | None) -> str:
    return c.fmt(None if us is None else us / 1000, 2)


def render(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> c.Rendered:
    parts = [
        '`manager.exec("x = 1")` with N runners and C concurrent callers: ops/s, and '
        "each op's latency from the call to its return (the wait for a free runner "
        'included), ms. "x one runner" is ops/s over one warm `Runner` with one caller '
        "(no manager), measured in the same run; client CPU is this process's CPU time per "
        "op (on 2 cores a pool of trivial ops is bound by it)."
    ]
    targets: list[c.Target] = []
    for place in c.PLACEMENTS:
        if place not in results:
            continue
        result = results[place]
        single = result["single"]
        base = single["ops_per_s"]
        rows = [
            [
                "one Runner (no manager)",
                1,
                c.fmt(base, 0),
                "1.00x",
                _ms(single["latency_us"]["50"]),
                _ms(single["latency_us"]["90"]),
                _ms(single["latency_us"]["99"]),
                c.fmt(single["client_cpu_us_per_op"], 0),
            ]
        ]
        best: tuple[float, str] = (0.0, "")
        for size, pool in result["pools"].items():
            for row in pool["rows"]:
                lat = row["latency_us"]
                rows.append(
                    [
                        f"manager size={size}",
                        row["callers"],
                        c.fmt(row["ops_per_s"], 0),
                        c.fmt_ratio(c.ratio(row["ops_per_s"], base)),
                        _ms(lat["50"]),
                        _ms(lat["90"]),
                        _ms(lat["99"]),
                        c.fmt(row["client_cpu_us_per_op"], 0),
                    ]
                )
                if row["ops_per_s"] > best[0]:
                    best = (row["ops_per_s"], f"size={size}, {row['callers']} callers")
        parts.append(f"**{place}**")
        parts.append(
            c.md_table(
                [
                    "setup",
                    "callers",
                    "ops/s",
                    "x one runner",
                    "median ms",
                    "p90 ms",
                    "p99 ms",
                    "client CPU us/op",
                ],
                rows,
            )
        )
        work = result.get("work_rows")
        if work:
            base_work = work["single"]["ops_per_s"]
            work_rows = [
                [
                    "one Runner (no manager)",
                    1,
                    c.fmt(base_work, 0),
                    "1.00x",
                    _ms(work["single"]["latency_us"]["99"]),
                ]
            ]
            for size in (k for k in work if k != "single"):
                row = work[size]
                work_rows.append(
                    [
                        f"manager size={size}",
                        row["callers"],
                        c.fmt(row["ops_per_s"], 0),
                        c.fmt_ratio(c.ratio(row["ops_per_s"], base_work)),
                        _ms(row["latency_us"]["99"]),
                    ]
                )
            parts.append(
                f"CPU ops (`{result['work'].splitlines()[1].strip()}`: a few ms each), {place}:"
            )
            parts.append(
                c.md_table(["setup", "callers", "ops/s", "x one runner", "p99 ms"], work_rows)
            )
        targets.append(
            c.Target(
                f"scaling: best ops/s through the manager ({place})",
                f"{c.fmt(best[0], 0)} ops/s at {best[1]} "
                f"({c.fmt_ratio(c.ratio(best[0], base))} one runner)",
                None,
            )
        )
    images = []
    if results:
        images.append((_plot_rate(results, img_dir), _caption_rate()))
        images.append((_plot_p99(results, img_dir), _caption_p99()))
    return c.Rendered("\n\n".join(parts), images, targets)


SIZE_STYLE = {"1": "o-", "2": "s-", "4": "^-"}
SIZE_COLOR = {"1": "#9ab8dc", "2": "#4f86c6", "4": "#1f3f73"}


def _caption_rate() -> str:
    return (
        'ops/s of `manager.exec("x = 1")` against concurrent callers (log 2 axis), one '
        "curve per pool size; the dashed line is one warm Runner with one caller. Left "
        "pinned to one CPU (no parallelism: the pool's overhead), right unpinned (2 CPUs)."
    )


def _caption_p99() -> str:
    return (
        "p99 latency per op (the wait for a free runner included) against concurrent "
        "callers, both axes log; the dotted lines are the median. Left pinned, right "
        "unpinned."
    )


def _plot_rate(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> str:
    places = [p for p in c.PLACEMENTS if p in results]
    fig, axes = c.new_figure(ncols=len(places))
    for ax, place in zip(axes[0], places, strict=True):
        result = results[place]
        for size, pool in result["pools"].items():
            xs = [row["callers"] for row in pool["rows"]]
            ys = [row["ops_per_s"] for row in pool["rows"]]
            ax.plot(
                xs,
                ys,
                SIZE_STYLE.get(size, "o-"),
                color=SIZE_COLOR.get(size),
                label=f"{size} runner{'s' if size != '1' else ''}",
            )
        ax.axhline(result["single"]["ops_per_s"], color="#555555", ls="--", lw=1)
        ax.annotate(
            "one Runner, one caller",
            (1, result["single"]["ops_per_s"]),
            xytext=(2, 3),
            textcoords="offset points",
            fontsize=7,
            color="#555555",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(CALLERS)
        ax.set_xticklabels([str(n) for n in CALLERS])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("ops/s")
        ax.set_title(place)
        ax.legend(fontsize=8)
    high = max(ax.get_ylim()[1] for ax in axes[0])
    for ax in axes[0]:
        ax.set_ylim(0, high)
    fig.suptitle("Manager throughput, x = 1")
    return c.save(fig, img_dir, "scaling.png")


def _plot_p99(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> str:
    places = [p for p in c.PLACEMENTS if p in results]
    fig, axes = c.new_figure(ncols=len(places))
    for ax, place in zip(axes[0], places, strict=True):
        for size, pool in results[place]["pools"].items():
            xs = [row["callers"] for row in pool["rows"]]
            p99 = [row["latency_us"]["99"] / 1000 for row in pool["rows"]]
            p50 = [row["latency_us"]["50"] / 1000 for row in pool["rows"]]
            tint = SIZE_COLOR.get(size)
            ax.plot(
                xs,
                p99,
                SIZE_STYLE.get(size, "o-"),
                color=tint,
                label=f"p99, {size} runner{'s' if size != '1' else ''}",
            )
            ax.plot(xs, p50, ":", color=tint, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(CALLERS)
        ax.set_xticklabels([str(n) for n in CALLERS])
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("latency per op, ms (log)")
        ax.set_title(place)
        ax.legend(fontsize=8)
    low = min(ax.get_ylim()[0] for ax in axes[0])
    high = max(ax.get_ylim()[1] for ax in axes[0])
    for ax in axes[0]:
        ax.set_ylim(low, high)
    fig.suptitle("Manager latency as load grows, x = 1 (p99 solid, median dotted)")
    return c.save(fig, img_dir, "scaling-latency.png")
