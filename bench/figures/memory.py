"""Memory: the client's RSS while 1 GiB of output streams through a slow consumer (it must
stay flat), and the idle RSS of each peer's worker process.

**Stream** (first, while this process's heap is still the measuring process's own): a
runner writes 1 GiB (16,384 ``os.write`` of 64 KiB; ``--quick``: 256 MiB) and the
caller reads ``exec_stream`` events slower than they come (a 5 ms sleep every 8 events,
about 100 MB/s), so that backpressure, not the consumer, bounds what is held. The method
is bench_memory.py's: a warm-up stream first, the baseline at rest after ``malloc_trim``,
VmHWM reset just before the op (so the peak is the op's own), the bytes received counted.
A task samples the client's and the runner's RSS every 20 ms; growth is max(peak sampled,
VmHWM) minus the baseline.

**Idle RSS**: each worker after its first trivial op and half a second of rest, RSS and
USS (memory no other process shares: a fork-server child shares its template's pages,
which RSS counts in full): execpy ``open_runner`` (spawned), an execpy pool runner (forked
by the fork server), ipykernel, an execnet popen gateway, a trio-parallel worker, and the
references of bench_runner.py: ``python -c "import msgpack"`` idling, and bare ``python``.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
import time
from typing import Any

from figures import _common as c

NAME = "memory"
TITLE = "Memory"
QUICK_SECONDS = 9
FULL_SECONDS = 20

CHUNK = 64 * 1024
SLEEP_EVERY, SLEEP = 8, 0.005
SAMPLE_PERIOD = 0.02
TARGET_GROWTH_MIB = 32
IDLE_KEYS = ("execpy", "pool", "jupyter", "execnet", "trio-parallel", "msgpack", "python")
IDLE_LABELS = {
    "execpy": "execpy runner (open_runner)",
    "pool": "execpy pool runner (fork server)",
    "jupyter": "jupyter ipykernel",
    "execnet": "execnet popen gateway",
    "trio-parallel": "trio-parallel worker",
    "msgpack": "python -c 'import msgpack' idle",
    "python": "python idle",
}
IDLE_SHORT = {
    "execpy": "execpy\nrunner",
    "pool": "execpy pool\n(forked)",
    "jupyter": "ipykernel",
    "execnet": "execnet",
    "trio-parallel": "trio-parallel",
    "msgpack": "python\nimport msgpack",
    "python": "python",
}


def measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import trio

    mib = 256 if quick else 1024
    progress(f"streaming {mib} MiB through a slow consumer")
    stream = trio.run(_stream, mib)
    progress("idle RSS of each worker")
    idle = trio.run(_idle)
    return {"stream": stream, "idle": idle}


async def _stream(mib: int) -> dict[str, Any]:
    import trio
    from bench_memory import _baseline, proc_status, reset_hwm

    import execpy_trio as ex

    writes = mib * c.MIB // CHUNK
    code = f"import os\nchunk = b'x' * {CHUNK}\nfor _ in range({writes}):\n    os.write(1, chunk)\n"
    warm = f"import os\nchunk = b'x' * {CHUNK}\nfor _ in range(64):\n    os.write(1, chunk)\n"
    async with ex.open_runner() as runner:
        async with runner.exec_stream(warm) as op:
            async for _ in op:
                pass
        del op
        await runner.exec("x = 1")
        runner_baseline = c.rss_kib(runner.pid)
        baseline = _baseline()
        hwm_reset = reset_hwm()
        samples: list[tuple[float, int, int]] = []
        received = events = 0
        start = time.perf_counter()

        async def sample() -> None:
            while True:
                samples.append(
                    (round(time.perf_counter() - start, 4), c.rss_kib(), c.rss_kib(runner.pid))
                )
                await trio.sleep(SAMPLE_PERIOD)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            async with runner.exec_stream(code) as op:
                async for event in op:
                    if isinstance(event, ex.Output):
                        received += len(event.data)
                    events += 1
                    del event
                    if events % SLEEP_EVERY == 0:
                        await trio.sleep(SLEEP)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        status = proc_status()
        samples.append((round(elapsed, 4), status["VmRSS"], c.rss_kib(runner.pid)))
        if received != writes * CHUNK:
            raise RuntimeError(f"stream: {received} bytes received, not {writes * CHUNK}")
        if op.result.status != "ok":
            raise RuntimeError(f"stream: {op.result!r}")
    return {
        "mib": mib,
        "bytes": received,
        "events": events,
        "seconds": round(elapsed, 3),
        "baseline_kib": baseline,
        "runner_baseline_kib": runner_baseline,
        "hwm_kib": status["VmHWM"],
        "hwm_reset": hwm_reset,
        "samples": samples,  # (seconds, client RSS KiB, runner RSS KiB)
    }


async def _idle() -> dict[str, Any]:
    import os

    import trio

    import execpy_trio as ex

    out: dict[str, Any] = {}

    async def rest() -> None:
        await trio.sleep(0.5)

    def record(key: str, pid: int) -> None:
        out[key] = {
            "label": IDLE_LABELS[key],
            "rss_kib": c.rss_kib(pid),
            "uss_kib": c.uss_kib(pid),
            "cpus": sorted(os.sched_getaffinity(pid)),  # the placement reached it
        }

    async with ex.open_runner() as runner:
        await runner.exec("x = 1")
        await rest()
        record("execpy", runner.pid)
    async with ex.open_manager(size=1, fresh_spares=0) as manager:
        async with manager.runner() as runner:
            await runner.exec("x = 1")
            await rest()
            record("pool", runner.pid)
    if c.missing("jupyter") is None:
        with c.open_jupyter_kernel() as (km, kc):
            c.jupyter_execute(kc, "x = 1")
            await rest()
            record("jupyter", c.jupyter_kernel_pid(km))
    else:
        out["jupyter"] = {"label": IDLE_LABELS["jupyter"], "missing": c.NOT_INSTALLED}
    if c.missing("execnet") is None:
        with c.open_execnet_gateway() as gw:
            pid = gw.remote_exec("import os; channel.send(os.getpid())").receive()
            await rest()
            record("execnet", pid)
    else:
        out["execnet"] = {"label": IDLE_LABELS["execnet"], "missing": c.NOT_INSTALLED}
    if c.missing("trio-parallel") is None:
        import trio_parallel

        async with trio_parallel.open_worker_context() as ctx:
            pid = await ctx.run_sync(os.getpid)
            await rest()
            record("trio-parallel", pid)
    else:
        out["trio-parallel"] = {"label": IDLE_LABELS["trio-parallel"], "missing": c.NOT_INSTALLED}
    for key, code in (("msgpack", "import msgpack, sys; sys.stdin.read()"), ("python", None)):
        args = [sys.executable, "-c", code] if code else [sys.executable, "-c", _READ]
        with _idle_child(args) as pid:
            await rest()
            record(key, pid)
    return out


_READ = "import sys; sys.stdin.read()"


@contextlib.contextmanager
def _idle_child(args: list[str]) -> Any:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE)
    try:
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


# --- render ------------------------------------------------------------------------------


def _growth_kib(stream: dict[str, Any]) -> int:
    peak = max(max(s[1] for s in stream["samples"]), stream["hwm_kib"])
    return int(peak - stream["baseline_kib"])


def render(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> c.Rendered:
    places = [p for p in c.PLACEMENTS if p in results]
    parts: list[str] = []
    targets: list[c.Target] = []
    rows = []
    for place in places:
        s = results[place]["stream"]
        growth = _growth_kib(s)
        runner_peak = max(x[2] for x in s["samples"])
        rows.append(
            [
                place,
                f"{s['bytes'] / c.MIB:,.0f} MiB in {s['events']:,} events",
                f"{s['seconds']:.1f} s ({s['bytes'] / s['seconds'] / 1e6:,.0f} MB/s)",
                c.fmt(s["baseline_kib"] / 1024),
                c.fmt(max(x[1] for x in s["samples"]) / 1024),
                c.fmt(s["hwm_kib"] / 1024),
                c.fmt(growth / 1024),
                f"{c.fmt(s['runner_baseline_kib'] / 1024)} -> {c.fmt(runner_peak / 1024)}",
            ]
        )
        targets.append(
            c.Target(
                f"memory: client RSS flat while {s['mib'] // 1024 or s['mib']}"
                f"{' GiB' if s['mib'] >= 1024 else ' MiB'} streams through a slow consumer, "
                f"growth < {TARGET_GROWTH_MIB} MiB ({place})",
                f"+{growth / 1024:.1f} MiB",
                growth < TARGET_GROWTH_MIB * 1024,
            )
        )
    parts.append(
        "**Client RSS while output streams through a slow consumer** (MiB; growth = "
        "max(peak sampled, VmHWM) - baseline; the bytes received counted)"
    )
    parts.append(
        c.md_table(
            [
                "placement",
                "streamed",
                "time",
                "baseline",
                "peak sampled",
                "VmHWM",
                "growth",
                "runner RSS",
            ],
            rows,
        )
    )
    parts.append(
        "The client's RSS steps up in the first ~0.2 s and is flat after it: the step is the "
        "first 16 MiB of output that the op keeps for `op.result` (`result_output_limit`'s "
        "default) plus the receive buffers; the rest goes through and is freed."
    )
    headers = ["worker"]
    for place in places:
        headers += [f"{place} RSS MiB", "USS MiB", "x msgpack RSS"]
    rows = []
    for key in IDLE_KEYS:
        cells: list[str] = []
        for place in places:
            idle = results[place]["idle"]
            row = idle.get(key, {})
            if "rss_kib" not in row:
                cells += [row.get("missing", "-"), "", ""]
                continue
            ref = idle["msgpack"]["rss_kib"]
            uss = row.get("uss_kib")
            cells += [
                c.fmt(row["rss_kib"] / 1024),
                c.fmt(uss / 1024 if uss is not None else None),
                c.fmt_ratio(c.ratio(row["rss_kib"], ref)),
            ]
        rows.append([IDLE_LABELS[key], *cells])
    parts.append(
        "**Idle RSS of each worker process** (after one trivial op and 0.5 s of rest; USS: "
        "the pages no other process shares)"
    )
    parts.append(c.md_table(headers, rows))
    for place in places:
        idle = results[place]["idle"]
        r = c.ratio(idle["execpy"]["rss_kib"], idle["msgpack"]["rss_kib"])
        targets.append(
            c.Target(
                f"memory: runner idle RSS <= 1.5x idle `import msgpack` ({place})",
                f"{c.fmt_ratio(r)} ({idle['execpy']['rss_kib'] / 1024:.1f} MiB)",
                None if r is None else r <= 1.5,
            )
        )
    images = []
    if places:
        mib = results[places[0]]["stream"]["mib"]
        images.append((_plot_stream(results, places, img_dir), _stream_caption(mib)))
        images.append((_plot_idle(results, places, img_dir), _idle_caption()))
    return c.Rendered("\n\n".join(parts), images, targets)


def _stream_caption(mib: int) -> str:
    size = f"{mib // 1024} GiB" if mib >= 1024 else f"{mib} MiB"
    return (
        f"Client and runner RSS over time while {size} of output streams through a slow "
        "consumer (about 100 MB/s), pinned and unpinned; the dotted line is the client's "
        f"baseline + {TARGET_GROWTH_MIB} MiB. The step at the start is the first 16 MiB kept "
        "for op.result (result_output_limit)."
    )


def _idle_caption() -> str:
    return (
        "Idle RSS of each worker process, pinned (solid) and unpinned (hatched), a black "
        "line at its USS (the pages no other process shares); the references are a Python "
        "that imported msgpack and a bare Python, both idling."
    )


def _plot_stream(results: dict[str, dict[str, Any]], places: list[str], img_dir: Any) -> str:
    fig, axes = c.new_figure()
    ax = axes[0][0]
    for place in places:
        s = results[place]["stream"]
        t = [x[0] for x in s["samples"]]
        style = "-" if place == "pinned" else "--"
        alpha = 1.0 if place == "pinned" else 0.6
        ax.plot(
            t,
            [x[1] / 1024 for x in s["samples"]],
            style,
            color=c.color("execpy"),
            alpha=alpha,
            label=f"client, {place}",
        )
        ax.plot(
            t,
            [x[2] / 1024 for x in s["samples"]],
            style,
            color=c.color("pool"),
            alpha=alpha,
            label=f"runner, {place}",
        )
    base = max(results[p]["stream"]["baseline_kib"] for p in places) / 1024
    ax.axhline(base + TARGET_GROWTH_MIB, color="#c0392b", ls=":", lw=1, label="client target")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the op started")
    ax.set_ylabel("RSS, MiB")
    mib = results[places[0]]["stream"]["mib"]
    size = f"{mib // 1024} GiB" if mib >= 1024 else f"{mib} MiB"
    ax.set_title(f"RSS while {size} streams through a slow consumer")
    ax.legend(fontsize=8, loc="lower right")
    return c.save(fig, img_dir, "memory-stream.png")


def _plot_idle(results: dict[str, dict[str, Any]], places: list[str], img_dir: Any) -> str:
    fig, axes = c.new_figure()
    ax = axes[0][0]
    keys = [k for k in IDLE_KEYS if any("rss_kib" in results[p]["idle"].get(k, {}) for p in places)]
    series: dict[str, list[float | None]] = {}
    for place in places:
        idle = results[place]["idle"]
        series[place] = [
            idle[k]["rss_kib"] / 1024 if "rss_kib" in idle.get(k, {}) else None for k in keys
        ]
    labels = [IDLE_LABELS[k] for k in keys]
    c.grouped_bars(ax, labels, series, value_fmt="{:.1f}")
    width = 0.8 / len(places)
    for i, place in enumerate(places):
        idle = results[place]["idle"]
        for j, key in enumerate(keys):
            uss = idle.get(key, {}).get("uss_kib")
            if uss is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.plot(
                [x - width * 0.4, x + width * 0.4],
                [uss / 1024] * 2,
                color="black",
                lw=1.5,
                label="USS (not shared)" if i == 0 and j == 0 else None,
            )
    ax.legend(fontsize=8)
    ax.set_xticklabels([IDLE_SHORT[k] for k in keys], rotation=0, ha="center", fontsize=8)
    ax.set_ylabel("idle RSS, MiB")
    ax.set_title("Idle RSS of each worker process")
    return c.save(fig, img_dir, "memory-idle.png")
