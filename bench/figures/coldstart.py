"""Cold start to the first result: a new worker of each kind, from the call that starts it
to the first result of a trivial op, against a bare interpreter start.

Rows (each is one new worker, the op ``x = 1`` or its peer's equivalent):

- execpy ``open_runner()`` entered, ``exec("x = 1")`` done (a new process, spawned);
- execpy pool: ``manager.exec("x = 1", fresh=True)`` on a manager started beforehand
  (``size=1, fresh_spares=1``, the fork-server launcher it uses by default): the runner
  never ran user code; its spare was started while the other rows ran, as in a steady
  stream of calls. What a user of the pool waits for;
- jupyter: ``start_new_kernel()`` (start, connect, kernel_info reply) and one execute
  until the reply and the idle status;
- execnet: ``makegateway("popen")``, ``remote_exec("channel.send(1)")``, the 1 received;
- trio-parallel: ``open_worker_context()`` entered, ``run_sync(noop)`` returned (its
  first call starts the worker);
- ``python -c pass`` and ``python -c "import msgpack"`` (subprocess.run, waited for).

One warm-up round (page cache, the fork server's template) is discarded, then ``rounds``
rounds in which every row starts once, the order rotating. Closing a worker is not timed
(``+ close`` is given for execpy). Median and p90 over the rounds.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from figures import _common as c

NAME = "coldstart"
TITLE = "Cold start to the first result"
QUICK_SECONDS = 5
FULL_SECONDS = 15

KEYS = ("execpy", "pool", "jupyter", "execnet", "trio-parallel", "python", "msgpack")
LABELS = {
    "execpy": "execpy open_runner + exec",
    "pool": "execpy pool fresh runner (spare ready)",
    "jupyter": "jupyter kernel start + execute",
    "execnet": "execnet popen gateway + remote_exec",
    "trio-parallel": "trio-parallel first call (new worker)",
    "python": "python -c pass",
    "msgpack": "python -c 'import msgpack'",
}
SHORT = {
    "execpy": "execpy\nopen_runner",
    "pool": "execpy pool\nfresh",
    "jupyter": "jupyter",
    "execnet": "execnet",
    "trio-parallel": "trio-parallel",
    "python": "python\n-c pass",
    "msgpack": "python -c\nimport msgpack",
}


def measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import trio

    return trio.run(_measure, quick, progress)


async def _measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import execpy_trio as ex
    from figures._noop import noop

    rounds = 3 if quick else 15
    closes: list[float] = []

    async def execpy() -> float:
        start = time.perf_counter()
        async with ex.open_runner() as runner:
            result = await runner.exec("x = 1")
            first = time.perf_counter() - start
        closes.append(time.perf_counter() - start)
        if result.status != "ok":
            raise RuntimeError(f"execpy: {result!r}")
        return first

    def spawn(*args: str) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True)
            return time.perf_counter() - start

        return run

    rows: dict[str, Callable[[], Any]] = {"execpy": execpy}
    async with ex.open_manager(size=1, fresh_spares=1) as manager:

        async def pool() -> float:
            start = time.perf_counter()
            result = await manager.exec("x = 1", fresh=True)
            elapsed = time.perf_counter() - start
            if result.status != "ok":
                raise RuntimeError(f"execpy pool: {result!r}")
            return elapsed

        rows["pool"] = pool
        if c.missing("jupyter") is None:

            def jupyter() -> float:
                start = time.perf_counter()
                with c.open_jupyter_kernel() as (_km, kc):
                    c.jupyter_execute(kc, "x = 1")
                    return time.perf_counter() - start

            rows["jupyter"] = jupyter
        if c.missing("execnet") is None:

            def execnet() -> float:
                start = time.perf_counter()
                with c.open_execnet_gateway() as gw:
                    value = gw.remote_exec("channel.send(1)").receive()
                    elapsed = time.perf_counter() - start
                if value != 1:
                    raise RuntimeError(f"execnet: received {value!r}")
                return elapsed

            rows["execnet"] = execnet
        if c.missing("trio-parallel") is None:
            import trio_parallel

            async def trio_parallel_first() -> float:
                start = time.perf_counter()
                async with trio_parallel.open_worker_context() as ctx:
                    await ctx.run_sync(noop)
                    return time.perf_counter() - start

            rows["trio-parallel"] = trio_parallel_first
        rows["python"] = spawn("-c", "pass")
        rows["msgpack"] = spawn("-c", "import msgpack")

        samples: dict[str, list[float]] = {key: [] for key in rows}
        order = list(rows)
        for r in range(rounds + 1):
            progress("warm-up round" if r == 0 else f"round {r}/{rounds}")
            for key in order[r % len(order) :] + order[: r % len(order)]:
                run = rows[key]
                value = run()
                if isinstance(value, Awaitable):
                    value = await value
                if r:
                    samples[key].append(value * 1e3)
        stats = manager.statistics()
    out: dict[str, Any] = {
        "rounds": rounds,
        "rows": {},
        "execpy_close_ms": c.compact([x * 1e3 for x in closes[1:]], 3),
        "pool_fresh_waits": stats.fresh_waits,
    }
    for key in KEYS:
        if key in samples:
            out["rows"][key] = {"label": LABELS[key], "ms": c.compact(samples[key], 3)}
        else:
            out["rows"][key] = {"label": LABELS[key], "missing": c.NOT_INSTALLED}
    return out


# --- render ------------------------------------------------------------------------------


def render(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> c.Rendered:
    places = [p for p in c.PLACEMENTS if p in results]
    parts = [
        "Milliseconds from the call that starts a new worker to the first result of a "
        'trivial op; median and p90 of the rounds. "x python" is the median over '
        "`python -c pass`'s, \"x msgpack\" over `python -c 'import msgpack'`'s."
    ]
    headers = ["start"]
    for place in places:
        headers += [f"{place} median ms", "p90", "x python", "x msgpack"]
    rows = []
    for key in KEYS:
        cells: list[str] = []
        for place in places:
            res = results[place]["rows"]
            row = res.get(key, {})
            if "ms" not in row:
                cells += [row.get("missing", "-"), "", "", ""]
                continue
            s = c.summary(row["ms"])
            py = c.percentile(res["python"]["ms"], 50)
            mp = c.percentile(res["msgpack"]["ms"], 50)
            cells += [
                c.fmt(s["median"]),
                c.fmt(s["p90"]),
                c.fmt_ratio(c.ratio(s["median"], py)),
                c.fmt_ratio(c.ratio(s["median"], mp)),
            ]
        rows.append([LABELS[key], *cells])
    close_cells = []
    for place in places:
        closes = results[place]["execpy_close_ms"]
        close_cells += [c.fmt(c.percentile(closes, 50)), c.fmt(c.percentile(closes, 90)), "", ""]
    rows.append(["execpy open_runner + exec + close (runner gone)", *close_cells])
    parts.append(c.md_table(headers, rows))
    waits = ", ".join(f"{p}: {results[p]['pool_fresh_waits']}" for p in places)
    parts.append(
        f"Pool: fresh calls that had to wait for a runner to start (`fresh_waits`): {waits} "
        f"of {results[places[0]]['rounds'] + 1 if places else 0} per placement."
    )
    targets = []
    for place in places:
        res = results[place]["rows"]
        mine = c.percentile(res["execpy"]["ms"], 50)
        en = c.percentile(res["execnet"]["ms"], 50) if "ms" in res.get("execnet", {}) else None
        r = c.ratio(mine, en)
        targets.append(
            c.Target(
                f"coldstart: execpy open_runner faster than execnet's popen gateway ({place})",
                c.NOT_INSTALLED
                if en is None
                else f"{c.fmt(mine)} ms vs {c.fmt(en)} ms ({c.fmt_ratio(r)})",
                None if r is None else r < 1.0,
            )
        )
        mp = c.percentile(res["msgpack"]["ms"], 50)
        pool = c.percentile(res["pool"]["ms"], 50)
        targets.append(
            c.Target(
                f"coldstart: reported against `python -c 'import msgpack'` ({place})",
                f"open_runner {c.fmt_ratio(c.ratio(mine, mp))}, pool fresh "
                f"{c.fmt_ratio(c.ratio(pool, mp))} ({c.fmt(mine)} / {c.fmt(pool)} / "
                f"{c.fmt(mp)} ms)",
                None,
            )
        )
    images = [(_plot(results, places, img_dir), _caption())] if places else []
    return c.Rendered("\n\n".join(parts), images, targets)


def _caption() -> str:
    return (
        "Cold start to the first result (log scale), pinned (solid) and unpinned (hatched): "
        "the median of the rounds, the bar up to the p90 (down to the fastest)."
    )


def _plot(results: dict[str, dict[str, Any]], places: list[str], img_dir: pathlib.Path) -> str:
    fig, axes = c.new_figure()
    ax = axes[0][0]
    keys = [k for k in KEYS if any("ms" in results[p]["rows"].get(k, {}) for p in places)]
    series: dict[str, list[float | None]] = {}
    errors: dict[str, list[tuple[float, float] | None]] = {}
    for place in places:
        values: list[float | None] = []
        bounds: list[tuple[float, float] | None] = []
        for key in keys:
            ms = results[place]["rows"][key].get("ms")
            if not ms:
                values.append(None)
                bounds.append(None)
                continue
            values.append(c.percentile(ms, 50))
            bounds.append((min(ms), c.percentile(ms, 90)))
        series[place] = values
        errors[place] = bounds
    c.grouped_bars(ax, [LABELS[k] for k in keys], series, errors=errors, value_fmt="{:,.1f}")
    ax.set_xticklabels([SHORT[k] for k in keys], rotation=0, ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms to the first result (log)")
    ax.set_title("Cold start to the first result")
    return c.save(fig, img_dir, "coldstart.png")
