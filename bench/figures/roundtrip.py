"""Warm exec round trip: per-op latency of ``x = 1`` for execpy and its peers, against the
trio floor and a raw os.pipe ping-pong, all alive at once and sampled in the same run.

Every implementation is started first and warmed up (``WARM`` ops). Then ``rounds``
rounds: in each, every implementation in turn (the order rotates from round to round)
does a few untimed ops (its caches may have gone cold while the others ran), then
``per_round`` timed ones, each op timed on its own. A busy moment of the machine so hits
all of them alike, and every percentile is computed over all the rounds' samples.

- execpy: ``await runner.exec("x = 1")`` (status checked) on a runner of ``open_runner()``;
- jupyter: ``kc.execute("x = 1")`` with the default options, until both the reply and
  the "idle" status of that request (what ``execute_interactive`` waits for);
- execnet: ``gw.remote_exec("x = 1").waitclose()`` on a popen gateway;
- trio-parallel: ``await trio_parallel.run_sync(noop)`` (the default context, its worker
  warm);
- raw pipe: this process (plain synchronous code at that moment) and a plain Python child
  exchange an exec frame and a done frame, msgpack over two os.pipes (bench_runner.py);
- trio floor: Trio on this side, a plain Python echo child on a socketpair
  (bench_client.py ``floor_pingpong``): what any Trio client of a Python process pays.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

from figures import _common as c

NAME = "roundtrip"
TITLE = "Warm exec round trip"
QUICK_SECONDS = 4
FULL_SECONDS = 20

WARM = 300
CODE = "x = 1"
KEYS = ("execpy", "jupyter", "execnet", "trio-parallel", "raw", "floor")
LABELS = {
    "execpy": "execpy Runner.exec",
    "jupyter": "jupyter execute (reply + idle)",
    "execnet": "execnet remote_exec + waitclose",
    "trio-parallel": "trio-parallel run_sync(noop)",
    "raw": "raw os.pipe msgpack ping-pong",
    "floor": "trio floor (msgpack echo child)",
}
PEERS = ("jupyter", "execnet", "trio-parallel")


def _sizes(quick: bool) -> dict[str, int]:
    rounds, per_round = (3, 300) if quick else (8, 1500)
    # Jupyter takes ~3-5 ms per op: fewer of them, still enough for a p99.
    return {"rounds": rounds, "per_round": per_round, "jupyter_per_round": per_round // 5}


def measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import trio

    return trio.run(_measure, quick, progress)


async def _measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import execpy_trio as ex
    from figures._noop import noop

    sizes = _sizes(quick)
    rounds, per_round = sizes["rounds"], sizes["per_round"]
    rewarm = 20
    out: dict[str, Any] = {"sizes": sizes, "warm": WARM, "rewarm": rewarm, "rows": {}}
    # key -> (async?, step, timed ops per round, untimed ops per round)
    steps: dict[str, tuple[bool, Callable[[], Any], int, int]] = {}
    async with contextlib.AsyncExitStack() as stack:
        runner = await stack.enter_async_context(ex.open_runner())

        async def execpy_step() -> None:
            result = await runner.exec(CODE)
            if result.status != "ok":
                raise RuntimeError(f"execpy: {result!r}")

        steps["execpy"] = (True, execpy_step, per_round, rewarm)

        if c.missing("jupyter") is None:
            progress("starting a jupyter kernel")
            _km, kc = stack.enter_context(c.open_jupyter_kernel())
            steps["jupyter"] = (
                False,
                lambda: c.jupyter_execute(kc, CODE),
                sizes["jupyter_per_round"],
                5,
            )
        if c.missing("execnet") is None:
            gw = stack.enter_context(c.open_execnet_gateway())
            steps["execnet"] = (False, lambda: gw.remote_exec(CODE).waitclose(), per_round, rewarm)
        if c.missing("trio-parallel") is None:
            import trio_parallel

            steps["trio-parallel"] = (
                True,
                lambda: trio_parallel.run_sync(noop),
                per_round,
                rewarm,
            )
        raw_total = WARM + rounds * (rewarm + per_round)
        raw_step = stack.enter_context(c.open_pipe_pingpong(raw_total))
        steps["raw"] = (False, raw_step, per_round, rewarm)
        floor_step = await stack.enter_async_context(c.open_trio_floor())
        steps["floor"] = (True, floor_step, per_round, rewarm)

        samples: dict[str, list[float]] = {key: [] for key in steps}
        for key, (is_async, step, _n, _rewarm) in steps.items():
            warm = WARM if key != "jupyter" else 30
            await _time(is_async, step, 0, warm)
        order = list(steps)
        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}")
            for key in order[r % len(order) :] + order[: r % len(order)]:
                is_async, step, n, again = steps[key]
                samples[key] += await _time(is_async, step, n, again)
        # The runner is still the one we started, and in its state.
        value = await runner.eval("x")
        if value != 1:
            raise RuntimeError(f"execpy: x is {value!r} after the round trips")
    for key in KEYS:
        if key in samples:
            out["rows"][key] = {"label": LABELS[key], "samples": c.compact(samples[key], 1)}
        else:
            out["rows"][key] = {"label": LABELS[key], "missing": c.NOT_INSTALLED}
    return out


async def _time(is_async: bool, step: Callable[[], Any], n: int, warm: int) -> list[float]:
    if is_async:
        astep: Callable[[], Awaitable[object]] = step
        return await c.time_async(astep, n, warm)
    return c.time_sync(step, n, warm)


# --- render ------------------------------------------------------------------------------


def _stats(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        key: c.summary(row["samples"]) for key, row in result["rows"].items() if "samples" in row
    }


def render(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> c.Rendered:
    parts = [
        "Per-op latency of a warm `x = 1`, microseconds; every row sampled in the same run, "
        'interleaved round by round. "x floor" is the median over the trio floor\'s median; '
        "\"execpy faster\" is the row's median over execpy's."
    ]
    targets: list[c.Target] = []
    for place in c.PLACEMENTS:
        if place not in results:
            continue
        result = results[place]
        stats = _stats(result)
        floor = stats.get("floor", {}).get("median")
        raw = stats.get("raw", {}).get("median")
        mine = stats.get("execpy", {}).get("median")
        rows = []
        for key in KEYS:
            row = result["rows"].get(key)
            if row is None:
                continue
            if key not in stats:
                rows.append([row["label"], row.get("missing", "-"), "", "", "", "", "", ""])
                continue
            s = stats[key]
            faster = c.ratio(s["median"], mine) if key != "execpy" else None
            rows.append(
                [
                    row["label"],
                    f"{s['n']:,}",
                    c.fmt(s["median"]),
                    c.fmt(s["p90"]),
                    c.fmt(s["p99"]),
                    c.fmt_ratio(c.ratio(s["median"], floor)),
                    c.fmt_ratio(c.ratio(s["median"], raw)),
                    c.fmt_ratio(faster),
                ]
            )
        parts.append(f"**{place}**")
        parts.append(
            c.md_table(
                [
                    "implementation",
                    "samples",
                    "median us",
                    "p90 us",
                    "p99 us",
                    "x trio floor",
                    "x raw pipe",
                    "execpy faster",
                ],
                rows,
            )
        )
        if place == "pinned":
            r = c.ratio(mine, floor)
            targets.append(
                c.Target(
                    "roundtrip: execpy median <= 2x the trio floor (pinned)",
                    f"{c.fmt_ratio(r)} ({c.fmt(mine)} us / {c.fmt(floor)} us)",
                    None if r is None else r <= 2.0,
                )
            )
        tp = stats.get("trio-parallel", {}).get("median")
        r = c.ratio(tp, mine)
        targets.append(
            c.Target(
                f"roundtrip: execpy >= 1.5x faster than trio-parallel run_sync ({place})",
                c.NOT_INSTALLED
                if tp is None
                else f"{c.fmt_ratio(r)} ({c.fmt(tp)} us / {c.fmt(mine)} us)",
                None if r is None else r >= 1.5,
            )
        )
    images = []
    if results:
        images.append((_plot(results, img_dir), _caption()))
    return c.Rendered("\n\n".join(parts), images, targets)


def _caption() -> str:
    return (
        "Warm `x = 1` round trip, per-op latency (log scale): boxes from p25 to p75, the "
        "line the median, whiskers p1 to p99, a dot at p99.9. Left pinned to one CPU, "
        "right unpinned; the same run."
    )


def _plot(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> str:
    places = [p for p in c.PLACEMENTS if p in results]
    fig, axes = c.new_figure(ncols=len(places))
    for ax, place in zip(axes[0], places, strict=True):
        rows = results[place]["rows"]
        keys = [k for k in KEYS if "samples" in rows.get(k, {})]
        data = [rows[k]["samples"] for k in keys]
        bp = ax.boxplot(
            data,
            whis=(1, 99),
            showfliers=False,
            patch_artist=True,
            widths=0.6,
            medianprops={"color": "black"},
        )
        for patch, key in zip(bp["boxes"], keys, strict=True):
            patch.set_facecolor(c.color(LABELS[key]))
            patch.set_alpha(0.8)
        for i, (key, values) in enumerate(zip(keys, data, strict=True), start=1):
            median = c.percentile(values, 50)
            ax.plot([i], [c.percentile(values, 99.9)], ".", color=c.color(LABELS[key]))
            ax.annotate(
                f"{median:,.0f}",
                (i, median),
                xytext=(18, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
            )
        ax.set_yscale("log")
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels([_short(k) for k in keys], rotation=20, ha="right")
        ax.set_title(f"{place}")
        ax.set_ylabel("latency per op, us (log)")
    low = min(ax.get_ylim()[0] for ax in axes[0])
    high = max(ax.get_ylim()[1] for ax in axes[0])
    for ax in axes[0]:
        ax.set_ylim(low, high)
    fig.suptitle("Warm exec round trip (x = 1)")
    return c.save(fig, img_dir, "roundtrip.png")


def _short(key: str) -> str:
    return {
        "execpy": "execpy",
        "jupyter": "jupyter",
        "execnet": "execnet",
        "trio-parallel": "trio-parallel",
        "raw": "raw pipe",
        "floor": "trio floor",
    }[key]
