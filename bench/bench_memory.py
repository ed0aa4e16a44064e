"""Client memory benchmarks: the CLIENT process's RSS while output goes through it.

Usage: python bench/bench_memory.py [--quick] [--json PATH]
(``taskset -c 0 python bench/bench_memory.py`` to run it pinned; the runner inherits it.)

Cases, each in a fresh Python process (same interpreter, same environment, so that
``PYTHONPATH=<other tree>/src`` measures another version of the library) so that every
case starts from the same heap and its VmHWM is its own:

- ``stream``: ``runner.exec_stream`` of code writing 1 GiB to fd 1 (16384 ``os.write`` of
  64 KiB; ``--quick``: 256 MiB) with a consumer that reads and discards every event. RSS
  is sampled every 64 events (from ``/proc/self/status``), and VmHWM is reset just before
  the op (``/proc/self/clear_refs``), so "peak" is the op's own. Target: growth flat
  within 64 MiB. Afterwards ``op.result`` is read once (its ``truncated`` /
  ``output_dropped``, and the peak it costs to build it).
- ``exec``: ``runner.exec`` of code printing 256 MiB (4096 ``print`` of 64 KiB;
  ``--quick``: 64 MiB): peak growth (sampled every 5 ms by a task, and VmHWM), the RSS
  still held while the result is alive, and ``result.truncated``. With the default
  ``result_output_limit`` and with ``result_output_limit=None`` (the old, unlimited
  behaviour). A library without ``RunnerOptions.result_output_limit`` (before the
  launcher split) keeps everything by default; the ``None`` variant is skipped there.

Columns: baseline RSS (after a warm-up op, at rest, after ``malloc_trim``); peak RSS
sampled during the op; the op's VmHWM; growth = max(peak, VmHWM) - baseline; "held
after": RSS growth while the result is alive (stream: after reading ``op.result``), and in
brackets the same after ``malloc_trim(0)`` (freed memory that glibc kept is not counted:
what is still live).
Every case also reports which ``execpy_trio`` the client and the runner imported.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

CHUNK = 64 * 1024
MIB = 1024 * 1024
SAMPLE_EVERY = 64  # events between RSS samples in the stream case
TARGET_GROWTH_MIB = 64
NO_LIMIT = "none"
DEFAULT_LIMIT = "default"


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def rss_kib() -> int:
    return proc_status()["VmRSS"]


def reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def has_result_output_limit() -> bool:
    import execpy_trio._public as ex

    options = getattr(ex, "RunnerOptions", None)
    if options is None:
        return False
    import attrs

    return "result_output_limit" in {a.name for a in attrs.fields(options)}


async def _where(runner: Any) -> tuple[str, str]:
    import execpy_trio

    runner_src = await runner.eval("__import__('sys').modules['execpy_trio'].__file__")
    return execpy_trio.__file__ or "?", str(runner_src)


def _baseline() -> int:
    trimmed = _trimmed()
    return trimmed if trimmed is not None else rss_kib()


def _trimmed() -> int | None:
    """RSS after glibc gives freed heap memory back (``malloc_trim``): what is still live,
    as opposed to freed but kept by the allocator. None where there is no glibc."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_kib()


async def case_stream(mib: int) -> dict[str, Any]:
    import trio

    import execpy_trio._public as ex

    writes = mib * MIB // CHUNK
    code = f"import os\nchunk = b'x' * {CHUNK}\nfor _ in range({writes}):\n    os.write(1, chunk)\n"
    warm = f"import os\nchunk = b'x' * {CHUNK}\nfor _ in range(64):\n    os.write(1, chunk)\n"
    async with ex.open_runner() as runner:
        client_src, runner_src = await _where(runner)
        # Warm up the same path (reads, decoders, event objects), then measure from rest.
        async with runner.exec_stream(warm) as op:
            async for _ in op:
                pass
        del op
        await runner.exec("x = 1")
        baseline = _baseline()
        hwm_reset = reset_hwm()
        peak = baseline
        received = events = 0
        start = time.perf_counter()
        async with runner.exec_stream(code) as op:
            async for event in op:
                if isinstance(event, ex.Output):
                    received += len(event.data)
                events += 1
                if events % SAMPLE_EVERY == 0:
                    peak = max(peak, rss_kib())
                del event
        elapsed = time.perf_counter() - start
        status = proc_status()
        peak = max(peak, status["VmRSS"])
        hwm = status["VmHWM"]
        runner_hwm = _runner_hwm(runner)
        assert received == writes * CHUNK, (received, writes * CHUNK)
        # Then what it costs to look at the result once.
        result = op.result
        after_result = proc_status()
        result_trimmed = _trimmed()
        out = {
            "case": "stream",
            "variant": DEFAULT_LIMIT,
            "mib": mib,
            "baseline_kib": baseline,
            "peak_sampled_kib": peak,
            "hwm_kib": hwm,
            "hwm_reset": hwm_reset,
            "events": events,
            "mb_per_s": received / elapsed / 1e6,
            "runner_hwm_kib": runner_hwm,
            "truncated": getattr(result, "truncated", None),
            "output_dropped": getattr(result, "output_dropped", None),
            "result_stdout_chars": len(result.stdout),
            "result_rss_kib": after_result["VmRSS"],
            "result_hwm_kib": after_result["VmHWM"],
            "result_trimmed_kib": result_trimmed,
            "client_src": client_src,
            "runner_src": runner_src,
        }
        del result
    await trio.lowlevel.checkpoint()
    return out


async def case_exec(mib: int, variant: str) -> dict[str, Any]:
    import trio

    import execpy_trio._public as ex

    supported = has_result_output_limit()
    if variant == NO_LIMIT and not supported:
        return {"case": "exec", "variant": variant, "mib": mib, "skipped": True}
    overrides: dict[str, Any] = {"result_output_limit": None} if variant == NO_LIMIT else {}
    prints = mib * MIB // CHUNK
    code = f"chunk = 'x' * {CHUNK}\nfor _ in range({prints}):\n    print(chunk, end='')\n"
    async with ex.open_runner(**overrides) as runner:
        client_src, runner_src = await _where(runner)
        await runner.exec("chunk = 'x' * 65536\nfor _ in range(64):\n    print(chunk, end='')")
        await runner.exec("x = 1")
        baseline = _baseline()
        hwm_reset = reset_hwm()
        peak = baseline

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_kib())
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            start = time.perf_counter()
            result = await runner.exec(code)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        gc.collect()
        held = rss_kib()  # the result is still alive: what the caller holds on to
        status = proc_status()
        held_trimmed = _trimmed()
        peak = max(peak, status["VmRSS"])
        out = {
            "case": "exec",
            "variant": variant,
            "mib": mib,
            "limit_supported": supported,
            "baseline_kib": baseline,
            "peak_sampled_kib": peak,
            "hwm_kib": status["VmHWM"],
            "hwm_reset": hwm_reset,
            "held_kib": held,
            "held_trimmed_kib": held_trimmed,
            "seconds": elapsed,
            "runner_hwm_kib": _runner_hwm(runner),
            "status": result.status,
            "truncated": getattr(result, "truncated", None),
            "output_dropped": getattr(result, "output_dropped", None),
            "result_stdout_chars": len(result.stdout),
            "client_src": client_src,
            "runner_src": runner_src,
        }
        del result
    return out


def _runner_hwm(runner: Any) -> int | None:
    try:
        return proc_status(runner.pid)["VmHWM"]
    except (OSError, KeyError):
        return None


def run_case(case: str, mib: int, variant: str) -> None:
    import trio

    if case == "stream":
        out = trio.run(case_stream, mib)
    else:
        out = trio.run(case_exec, mib, variant)
    print("BENCH_MEMORY " + json.dumps(out), flush=True)


def spawn_case(case: str, mib: int, variant: str = DEFAULT_LIMIT) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", case, "--mib", str(mib), "--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_MEMORY "):
            return json.loads(line[len("BENCH_MEMORY ") :])
    sys.stderr.write(proc.stdout + proc.stderr)
    raise SystemExit(f"case {case}/{variant} failed (exit {proc.returncode})")


def mib_of(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | baseline RSS MiB | peak sampled MiB | VmHWM MiB | growth MiB | "
        "held after, MiB | truncated (dropped MiB) | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        label = _label(r)
        if r.get("skipped"):
            lines.append(
                f"| {label} | skipped: no `result_output_limit` in this version "
                "(it keeps everything by default) |||||||"
            )
            continue
        peak = max(r["peak_sampled_kib"], r["hwm_kib"])
        growth = peak - r["baseline_kib"]
        if r["truncated"] is None:
            trunc = "n/a (no such field)"
        else:
            trunc = f"{r['truncated']} ({(r['output_dropped'] or 0) / MIB:.1f})"
        if r["case"] == "stream":
            ok = "yes" if growth <= TARGET_GROWTH_MIB * 1024 else "**no**"
            held = _held(r["result_rss_kib"], r["result_trimmed_kib"], r["baseline_kib"])
            notes = (
                f"flat within {TARGET_GROWTH_MIB} MiB: {ok}; {r['mb_per_s']:.0f} MB/s; "
                f"reading op.result then: VmHWM +{mib_of(r['result_hwm_kib'] - r['baseline_kib'])}"
                f" MiB; runner VmHWM {mib_of(r['runner_hwm_kib'])} MiB"
            )
        else:
            held = _held(r["held_kib"], r["held_trimmed_kib"], r["baseline_kib"])
            notes = (
                f"growth {growth / 1024 / r['mib']:.2f}x the output; {r['seconds']:.2f} s; "
                f"result.stdout {r['result_stdout_chars'] / MIB:.1f} Mi chars; "
                f"runner VmHWM {mib_of(r['runner_hwm_kib'])} MiB"
            )
        lines.append(
            f"| {label} | {mib_of(r['baseline_kib'])} | {mib_of(r['peak_sampled_kib'])} | "
            f"{mib_of(r['hwm_kib'])} | {mib_of(growth)} | {held} | {trunc} | {notes} |"
        )
    return lines


def _held(rss: int, trimmed: int | None, baseline: int) -> str:
    if trimmed is None:
        return mib_of(rss - baseline)
    return f"{mib_of(rss - baseline)} (trimmed {mib_of(trimmed - baseline)})"


def _label(r: dict[str, Any]) -> str:
    size = f"{r['mib'] // 1024} GiB" if r["mib"] >= 1024 else f"{r['mib']} MiB"
    if r["case"] == "stream":
        return f"exec_stream {size}, events discarded"
    limit = "result_output_limit=None" if r["variant"] == NO_LIMIT else "default limit"
    return f"exec() printing {size}, {limit}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="256 MiB stream, 64 MiB exec")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--case", choices=["stream", "exec"], help=argparse.SUPPRESS)
    parser.add_argument("--mib", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=DEFAULT_LIMIT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.mib, args.variant)
        return
    stream_mib, exec_mib = (256, 64) if args.quick else (1024, 256)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"python {sys.version.split()[0]}, CPUs allowed: {cpus}")
    results = [
        spawn_case("stream", stream_mib),
        spawn_case("exec", exec_mib, DEFAULT_LIMIT),
        spawn_case("exec", exec_mib, NO_LIMIT),
    ]
    sources = {(r.get("client_src"), r.get("runner_src")) for r in results if "client_src" in r}
    for client_src, runner_src in sorted(sources):
        print(f"client execpy_trio: {client_src}\nrunner execpy_trio: {runner_src}")
    print(f"result_output_limit supported: {results[1]['limit_supported']}")
    print("\n## Client memory (RSS of the client process; growth = max(peak, VmHWM) - baseline)")
    print("\n".join(table(results)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpus": cpus, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
