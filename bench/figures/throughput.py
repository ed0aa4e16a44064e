"""Output throughput: 100 MiB written in 64 KiB ``os.write`` chunks, and 1,000,000
``print`` lines, received by the caller; execpy against its peers and a raw pipe.

Every implementation is started (and warmed up with one small run) before anything is
timed, and the repetitions are interleaved: repetition 1 of every row, then repetition
2, ... Each run is timed from the request to the end of the operation (the last byte and
the completion), with the worker warm, and its received bytes are counted and checked
against what the code wrote; the table gives the median of the repetitions (MB/s are
10^6 bytes per second) and the plot its range.

- execpy: ``runner.exec_stream(code)``, every event consumed (``Output.data`` counted);
- jupyter: ``kc.execute(code)`` until the reply and the idle status, the stream messages'
  text counted. ``os.write(1, ...)`` reaches the client through ipykernel's capture of fd
  1; ``sys.stdout.write`` (its own stream object) is shown too. Fewer print lines (it
  takes ~7 us a line);
- execnet: the chunks as ``channel.send(chunk)``; the lines with ``sys.stdout =
  channel.makefile("w")`` (execnet's way to send a file's writes; one message per
  write), fewer of them (~9 us a line);
- raw pipe: a plain Python child, started ahead and told to go by a byte on its stdin,
  writes to a pipe that this process reads with ``readv`` into a reused buffer. Its
  ``print`` is shown block-buffered (Python's default for a pipe: the ceiling) and
  line-buffered (a write per line, as the runner's stdout is: output reaches the caller
  as it is written); ``PYTHONUNBUFFERED`` is removed from its environment.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from figures import _common as c

NAME = "throughput"
TITLE = "Output throughput"
QUICK_SECONDS = 6
FULL_SECONDS = 50

CHUNK = 64 * 1024
KEYS_CHUNKS = ("execpy", "jupyter", "jupyter-stdout", "execnet", "raw")
KEYS_LINES = ("execpy", "jupyter", "execnet", "raw", "raw-lines")
LABELS = {
    "execpy": "execpy exec_stream",
    "jupyter": "jupyter stream, os.write",
    "jupyter-stdout": "jupyter stream, sys.stdout.write",
    "execnet": "execnet channel",
    "raw": "raw pipe",
}
SHORT = {
    "execpy": "execpy\nexec_stream",
    "jupyter": "jupyter\nos.write",
    "jupyter-stdout": "jupyter\nsys.stdout",
    "execnet": "execnet\nchannel",
    "raw": "raw pipe",
}
LINE_SHORT = {
    "execpy": "execpy\nexec_stream",
    "jupyter": "jupyter",
    "execnet": "execnet\nmakefile",
    "raw": "raw pipe\nbuffered",
    "raw-lines": "raw pipe\nline-buf.",
}
LINE_LABELS = {
    "execpy": "execpy exec_stream",
    "jupyter": "jupyter stream",
    "execnet": "execnet channel.makefile",
    "raw": "raw pipe, block-buffered",
    "raw-lines": "raw pipe, line-buffered",
}

RAW_CHILD = r"""
import os, sys
mode = sys.argv[1]
sys.stdout.reconfigure(line_buffering=mode == "line-buffered")
chunk = b"x" * 65536
for line in sys.stdin:
    n = int(line)
    if mode == "chunks":
        for _ in range(n):
            os.write(1, chunk)
    else:
        for i in range(n):
            print(i)
        sys.stdout.flush()
"""


def chunks_code(n: int) -> str:
    return f"import os\nchunk = b'x' * {CHUNK}\nfor _ in range({n}):\n    os.write(1, chunk)\n"


def lines_code(n: int) -> str:
    return f"for i in range({n}):\n    print(i)\n"


def lines_bytes(n: int) -> int:
    """Bytes that ``print(i)`` for i in range(n) writes."""
    total, digits, start = 0, 1, 0
    while start < n:
        end = min(n, 10**digits)
        total += (end - start) * (digits + 1)
        start, digits = end, digits + 1
    return total


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {
            "chunks": 1600,  # 100 MiB as in the full run: ~0.1 s a run (not jupyter)
            "jupyter_chunks": 256,  # 16 MiB
            "lines": 100_000,
            "peer_lines": 50_000,
            "chunk_reps": 3,
            "jupyter_chunk_reps": 2,
            "line_reps": 1,
        }
    return {
        "chunks": 1600,  # 100 MiB
        "jupyter_chunks": 1600,
        "lines": 1_000_000,
        "peer_lines": 200_000,
        # The fast rows take ~0.1 s a run: more of them steady the median (an unpinned
        # raw pipe swings 1-4 GB/s with where the scheduler puts its two ends).
        "chunk_reps": 9,
        "jupyter_chunk_reps": 3,
        "line_reps": 3,
    }


def measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import trio

    return trio.run(_measure, quick, progress)


async def _measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import execpy_trio as ex

    sizes = _sizes(quick)
    out: dict[str, Any] = {"sizes": sizes, "chunks": {}, "lines": {}}
    async with contextlib.AsyncExitStack() as stack:
        runner = await stack.enter_async_context(ex.open_runner())

        async def execpy_run(code: str) -> int:
            received = 0
            async with runner.exec_stream(code) as op:
                async for event in op:
                    if isinstance(event, ex.Output):
                        received += len(event.data)
            if op.result.status != "ok":
                raise RuntimeError(f"execpy: {op.result!r}")
            return received

        # case -> key -> (run(n) -> bytes received, n timed, async?)
        Run = Callable[[int], Any]
        runs: dict[str, dict[str, tuple[Run, int, bool]]] = {"chunks": {}, "lines": {}}
        n_chunks, n_lines = sizes["chunks"], sizes["lines"]
        runs["chunks"]["execpy"] = (lambda n: execpy_run(chunks_code(n)), n_chunks, True)
        runs["lines"]["execpy"] = (lambda n: execpy_run(lines_code(n)), n_lines, True)

        if c.missing("jupyter") is None:
            progress("starting a jupyter kernel")
            _km, kc = stack.enter_context(c.open_jupyter_kernel())

            def jupyter_run(code: str) -> int:
                received = 0

                def on_stream(msg: dict[str, Any]) -> None:
                    nonlocal received
                    received += len(msg["content"]["text"].encode())

                c.jupyter_execute(kc, code, on_stream, timeout=300)
                return received

            def stdout_code(n: int) -> str:
                return (
                    f"import sys\nchunk = 'x' * {CHUNK}\nfor _ in range({n}):\n"
                    "    sys.stdout.write(chunk)\n"
                )

            nj, nl = sizes["jupyter_chunks"], sizes["peer_lines"]
            runs["chunks"]["jupyter"] = (lambda n: jupyter_run(chunks_code(n)), nj, False)
            runs["chunks"]["jupyter-stdout"] = (lambda n: jupyter_run(stdout_code(n)), nj, False)
            runs["lines"]["jupyter"] = (lambda n: jupyter_run(lines_code(n)), nl, False)
        if c.missing("execnet") is None:
            gw = stack.enter_context(c.open_execnet_gateway())

            def execnet_run(code: str) -> int:
                received = 0
                for item in gw.remote_exec(code):
                    received += len(item.encode() if isinstance(item, str) else item)
                return received

            def send_code(n: int) -> str:
                return f"chunk = b'x' * {CHUNK}\nfor _ in range({n}):\n    channel.send(chunk)\n"

            def file_code(n: int) -> str:
                return (
                    "import sys\nsys.stdout = channel.makefile('w')\n"
                    + lines_code(n)
                    + "sys.stdout = sys.__stdout__\n"
                )

            nl = sizes["peer_lines"]
            runs["chunks"]["execnet"] = (lambda n: execnet_run(send_code(n)), n_chunks, False)
            runs["lines"]["execnet"] = (lambda n: execnet_run(file_code(n)), nl, False)
        runs["chunks"]["raw"] = (stack.enter_context(_raw_child("chunks")), n_chunks, False)
        runs["lines"]["raw"] = (stack.enter_context(_raw_child("block-buffered")), n_lines, False)
        runs["lines"]["raw-lines"] = (
            stack.enter_context(_raw_child("line-buffered")),
            n_lines,
            False,
        )

        def expected(case: str, n: int) -> int:
            return n * CHUNK if case == "chunks" else lines_bytes(n)

        async def one(case: str, key: str, n: int) -> float:
            run, _n, is_async = runs[case][key]
            start = time.perf_counter()
            got = await run(n) if is_async else run(n)
            elapsed = time.perf_counter() - start
            if got != expected(case, n):
                raise RuntimeError(f"{case}/{key}: {got} bytes received, not {expected(case, n)}")
            return elapsed

        # Warm-up: a twentieth of each run (imports, buffers, the first pages).
        for case in runs:
            for key, (_run, n, _is_async) in runs[case].items():
                await one(case, key, max(1, n // 20))
        for case, reps in (("chunks", sizes["chunk_reps"]), ("lines", sizes["line_reps"])):
            seconds: dict[str, list[float]] = {key: [] for key in runs[case]}
            for rep in range(reps):
                progress(f"{case}: repetition {rep + 1}/{reps}")
                for key, (_run, n, _is_async) in runs[case].items():
                    if key.startswith("jupyter") and case == "chunks":
                        # Jupyter takes ~1 s a run: fewer, spread over the others' reps.
                        every = reps // sizes["jupyter_chunk_reps"]
                        if rep % every or rep // every >= sizes["jupyter_chunk_reps"]:
                            continue
                    seconds[key].append(await one(case, key, n))
            labels = LABELS if case == "chunks" else LINE_LABELS
            for key in labels:
                if key not in runs[case]:
                    out[case][key] = {"label": labels[key], "missing": c.NOT_INSTALLED}
                    continue
                n = runs[case][key][1]
                out[case][key] = {
                    "label": labels[key],
                    "count": n,
                    "bytes": expected(case, n),
                    "seconds": [round(x, 6) for x in seconds[key]],
                    "verified": True,
                }
    return out


@contextlib.contextmanager
def _raw_child(mode: str) -> Any:
    """A plain Python child that writes n chunks or lines for each n it reads on stdin;
    yields run(n) -> bytes read."""
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    child = subprocess.Popen(
        [sys.executable, "-c", RAW_CHILD, mode], stdin=subprocess.PIPE, stdout=w, env=env
    )
    os.close(w)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    assert child.stdin is not None
    stdin = child.stdin

    def run(n: int) -> int:
        expected = n * CHUNK if mode == "chunks" else lines_bytes(n)
        stdin.write(b"%d\n" % n)
        stdin.flush()
        got = 0
        while got < expected:
            k = os.readv(r, [view])
            if not k:
                break
            got += k
        return got

    try:
        yield run
    finally:
        stdin.close()
        child.wait(10)
        os.close(r)


# --- render ------------------------------------------------------------------------------


def _rate(row: dict[str, Any], per: str) -> tuple[float, float, float] | None:
    """(median, min, max) of the repetitions: MB/s (per="bytes") or lines/s ("count")."""
    if "seconds" not in row:
        return None
    rates = sorted(row[per] / s for s in row["seconds"])
    if per == "bytes":
        rates = [r / 1e6 for r in rates]
    return c.percentile(rates, 50), rates[0], rates[-1]


def render(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> c.Rendered:
    places = [p for p in c.PLACEMENTS if p in results]
    parts = [
        'Median of the repetitions (in brackets: the lowest and highest; "x9": 9 of them); '
        "MB/s = 10^6 "
        'bytes/s; every run\'s bytes counted and checked. "x raw" is the median over the '
        "raw pipe's; \"x execnet\" over execnet's channel."
    ]
    targets: list[c.Target] = []
    rows = []
    for key in KEYS_CHUNKS:
        cells: list[str] = []
        for place in places:
            case = results[place]["chunks"]
            row = case.get(key)
            rate = _rate(row, "bytes") if row else None
            if rate is None:
                cells += [row.get("missing", "-") if row else "-", "", "", ""]
                continue
            raw = _rate(case["raw"], "bytes")
            en = _rate(case["execnet"], "bytes") if "execnet" in case else None
            cells += [
                f"{rate[0]:,.0f} ({rate[1]:,.0f}-{rate[2]:,.0f})",
                f"{row['bytes'] / c.MIB:.0f} MiB x{len(row['seconds'])}",
                c.fmt_ratio(c.ratio(rate[0], raw[0] if raw else None)),
                c.fmt_ratio(c.ratio(rate[0], en[0] if en else None)),
            ]
        rows.append([LABELS[key], *cells])
    headers = ["64 KiB os.write chunks"]
    for place in places:
        headers += [f"{place} MB/s", "payload", "x raw", "x execnet"]
    parts.append(c.md_table(headers, rows))

    rows = []
    for key in KEYS_LINES:
        cells = []
        for place in places:
            case = results[place]["lines"]
            row = case.get(key)
            rate = _rate(row, "count") if row else None
            if rate is None:
                cells += [row.get("missing", "-") if row else "-", "", "", "", ""]
                continue
            raw = _rate(case["raw"], "count")
            raw_lines = _rate(case["raw-lines"], "count")
            mbs = row["bytes"] / c.percentile(row["seconds"], 50) / 1e6
            cells += [
                f"{rate[0] / 1e6:.3f} ({rate[1] / 1e6:.3f}-{rate[2] / 1e6:.3f})",
                f"{mbs:,.1f}",
                f"{row['count']:,} x{len(row['seconds'])}",
                c.fmt_ratio(c.ratio(rate[0], raw[0] if raw else None)),
                c.fmt_ratio(c.ratio(rate[0], raw_lines[0] if raw_lines else None)),
            ]
        rows.append([LINE_LABELS[key], *cells])
    headers = ["print(i) lines"]
    for place in places:
        headers += [f"{place} M lines/s", "MB/s", "lines", "x raw buffered", "x raw line-buf."]
    parts.append(c.md_table(headers, rows))
    parts.append(
        "Jupyter and execnet print fewer lines than 1,000,000 in the full run (see the "
        "lines column): at ~7-9 us a line they would take most of the figure's budget; "
        "a rate over 200,000 lines is already steady. Unpinned, the raw pipe swings between "
        "~1 and ~4.4 GB/s with where the scheduler puts its two ends (see the range): its "
        'unpinned "x raw" ratios are not a measure; the 0.35x target is pinned.'
    )

    for place in places:
        case = results[place]["chunks"]
        mine = _rate(case["execpy"], "bytes")
        raw = _rate(case["raw"], "bytes")
        en = _rate(case["execnet"], "bytes") if "seconds" in case.get("execnet", {}) else None
        mine_v = mine[0] if mine else None
        if place == "pinned":
            r = c.ratio(mine_v, raw[0] if raw else None)
            targets.append(
                c.Target(
                    "throughput: execpy exec_stream >= 0.35x raw pipe, 64 KiB chunks (pinned)",
                    f"{c.fmt_ratio(r)} ({c.fmt(mine_v, 0)} / {c.fmt(raw[0] if raw else None, 0)}"
                    " MB/s)",
                    None if r is None else r >= 0.35,
                )
            )
        r = c.ratio(mine_v, en[0] if en else None)
        targets.append(
            c.Target(
                f"throughput: execpy exec_stream >= execnet channel ({place})",
                c.NOT_INSTALLED
                if en is None
                else f"{c.fmt_ratio(r)} ({c.fmt(mine_v, 0)} / {c.fmt(en[0], 0)} MB/s)",
                None if r is None else r >= 1.0,
            )
        )
        lines = results[place]["lines"]["execpy"]
        rate = _rate(lines, "count")
        targets.append(
            c.Target(
                f"throughput: 1,000,000 print lines reported ({place})",
                f"{lines['count']:,} lines in {c.percentile(lines['seconds'], 50):.2f} s, "
                f"{rate[0] / 1e6:.3f} M lines/s"
                if rate
                else "-",
                None,
            )
        )
    images = [(_plot(results, places, img_dir), _caption())] if places else []
    return c.Rendered("\n\n".join(parts), images, targets)


def _caption() -> str:
    return (
        "Output throughput, pinned (solid) and unpinned (hatched): left 64 KiB os.write "
        "chunks in MB/s, right print(i) lines in millions per second (log scale); median of the "
        "repetitions, the bar from the lowest to the highest."
    )


def _plot(results: dict[str, dict[str, Any]], places: list[str], img_dir: pathlib.Path) -> str:
    fig, axes = c.new_figure(ncols=2)
    for ax, case, keys, labels, short, per, scale, unit in (
        (axes[0][0], "chunks", KEYS_CHUNKS, LABELS, SHORT, "bytes", 1.0, "MB/s"),
        (axes[0][1], "lines", KEYS_LINES, LINE_LABELS, LINE_SHORT, "count", 1e-6, "M lines/s, log"),
    ):
        series: dict[str, list[float | None]] = {}
        errors: dict[str, list[tuple[float, float] | None]] = {}
        for place in places:
            values: list[float | None] = []
            bounds: list[tuple[float, float] | None] = []
            for key in keys:
                row = results[place][case].get(key)
                rate = _rate(row, per) if row else None
                values.append(rate[0] * scale if rate else None)
                bounds.append((rate[1] * scale, rate[2] * scale) if rate else None)
            series[place] = values
            errors[place] = bounds
        c.grouped_bars(
            ax,
            [labels[k] for k in keys],
            series,
            errors=errors,
            value_fmt="{:,.0f}" if case == "chunks" else "{:.2f}",
            log=case == "lines",
        )
        ax.set_xticklabels([short[k] for k in keys], rotation=0, ha="center", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title("64 KiB os.write chunks" if case == "chunks" else "print(i) lines")
    fig.suptitle("Output throughput to the caller")
    return c.save(fig, img_dir, "throughput.png")
