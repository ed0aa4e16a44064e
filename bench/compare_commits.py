"""Before/after comparison of the client, in one run: bench_client.py and bench_memory.py
against two versions of the library, pinned (``taskset -c 0``) and unpinned, interleaved.

Usage: python bench/compare_commits.py [--before REV] [--after REV|worktree] [--rounds N]
       [--quick] [--quick-memory] [--out DIR]

- "before": ``git archive REV src`` (default cd91219, the commit before the launcher
  split) unpacked into /tmp/execpy-before;
- "after": by default a snapshot of this working tree's ``src`` (copied to /tmp/execpy-after
  when the run starts, so edits made to ``src`` while it runs do not mix into it; its
  uncommitted changes are listed), or ``--after REV`` (``git archive``, e.g. ``HEAD``, to
  leave out work in progress).

Both trees are precompiled (``compileall``: PYTHONDONTWRITEBYTECODE may be set) and run by
this venv's interpreter with ``PYTHONPATH=<tree>/src``, which comes before the editable
install on ``sys.path``; the runner is spawned as ``sys.executable -m execpy_trio.runner``
and inherits it. Before measuring, a check prints which ``execpy_trio`` the client and a
spawned runner import, and stops if it is not the tree's. The benchmark scripts are this
working tree's (bench_client.py uses only the API both versions share; bench_memory.py
detects ``result_output_limit``).

Order: for each round, pinned then unpinned; within each, both trees back to back, the
order alternating between rounds. Each cell of the tables is the median over rounds (with
the range when there is more than one round). Raw outputs and the tables go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
TREES = ("before", "after")
MODES = ("pinned", "unpinned")
FLOOR_ROW = "floor: trio <-> plain Python echo, socketpair"
BARE_ROW = "bare trio loop <-> the real runner, exec"
EXEC_ROW = "execpy Runner.exec('x = 1')"
LABEL_WIDTH = 46
WORKTREE = "worktree"  # bench_client.py's row(): f"{label:<46} {value}  {note}"

CHECK = r"""
import sys, trio, execpy_trio
import execpy_trio._public as ex

async def main():
    async with ex.open_runner() as runner:
        where = await runner.eval(
            "[__import__('sys').modules['execpy_trio'].__file__,"
            " __import__('sys').modules['execpy_trio.runner'].__file__,"
            " __import__('sys').executable]"
        )
    print("client", execpy_trio.__file__)
    print("runner", where[0])
    print("runner-module", where[1])
    print("runner-python", where[2])

trio.run(main)
"""


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def _archive(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _short(rev: str) -> str:
    return sh(["git", "-C", str(ROOT), "rev-parse", "--short", rev]).stdout.strip()


def prepare_trees(before_rev: str, after_rev: str) -> dict[str, Path]:
    before = Path("/tmp/execpy-before")
    after = Path("/tmp/execpy-after")
    for path in (before, after):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    _archive(before_rev, before)
    print(f"before: {before_rev} ({_short(before_rev)}) -> {before}/src")
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]).stdout
    dirty = dirty.strip().replace("\n", "; ") or "none"
    if after_rev == WORKTREE:
        shutil.copytree(
            ROOT / "src", after / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        print(f"after:  working tree at HEAD {_short('HEAD')} -> {after}/src (snapshot)")
        print(f"        its uncommitted src changes (included): {dirty}")
    else:
        _archive(after_rev, after)
        print(f"after:  {after_rev} ({_short(after_rev)}) -> {after}/src")
        print(f"        uncommitted src changes in the working tree (not included): {dirty}")
    for path in (before, after):
        sh([PY, "-m", "compileall", "-q", str(path / "src")])
    return {"before": before / "src", "after": after / "src"}


def env_for(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    return env


def prefix(mode: str) -> list[str]:
    if mode == "pinned":
        return ["taskset", "-c", "0"]
    return ["taskset", "-c", f"0-{os.cpu_count() - 1}"]  # whatever this process was given


def check_tree(name: str, src: Path) -> None:
    out = sh([PY, "-c", CHECK], env=env_for(src), cwd="/tmp").stdout
    print(f"{name}: " + out.strip().replace("\n", "\n" + " " * (len(name) + 2)))
    for line in out.splitlines():
        key, value = line.split(" ", 1)
        if key == "runner-python":
            if os.path.realpath(value) != os.path.realpath(PY):
                raise SystemExit(f"{name}: the runner runs {value}, not {PY}")
        elif not Path(value).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"{name}: {key} imported {value}, not from {src}")


def parse_client(text: str) -> dict[str, float]:
    rows: dict[str, float] = {}
    for line in text.splitlines():
        if len(line) <= LABEL_WIDTH or line.startswith(("#", "[", "python ", "execpy_trio:")):
            continue
        label = line[:LABEL_WIDTH].rstrip()
        fields = line[LABEL_WIDTH:].split()
        if label and fields and re.fullmatch(r"-?\d+(\.\d+)?", fields[0]):
            rows[label] = float(fields[0])
    # Ratios within the run: what the client adds, against floors measured beside it.
    exec_us = rows.get(EXEC_ROW)
    for floor, name in ((FLOOR_ROW, "floor"), (BARE_ROW, "bare loop")):
        if exec_us and rows.get(floor):
            rows[f"exec('x = 1') / {name} (same run), x"] = exec_us / rows[floor]
    return rows


def run(cmd: list[str], src: Path, log: Path) -> str:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env_for(src), text=True, capture_output=True, cwd=ROOT)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    print(f"    {time.perf_counter() - start:6.1f} s  {log.name}", flush=True)
    return proc.stdout


# (label in the table, how to get it from one bench_memory result list, higher is better)
def _memory_metrics() -> list[tuple[str, Any]]:
    def get(case: str, variant: str, fn: Any) -> Any:
        def pick(results: list[dict[str, Any]]) -> Any:
            for r in results:
                if r["case"] == case and r["variant"] == variant:
                    return None if r.get("skipped") else fn(r)
            return None

        return pick

    def growth(r: dict[str, Any]) -> float:
        return (max(r["peak_sampled_kib"], r["hwm_kib"]) - r["baseline_kib"]) / 1024

    def held(key: str, trimmed: str) -> Any:
        def fn(r: dict[str, Any]) -> float:
            value = r[trimmed] if r.get(trimmed) is not None else r[key]
            return (value - r["baseline_kib"]) / 1024

        return fn

    def trunc(r: dict[str, Any]) -> Any:
        if r["truncated"] is None:
            return "n/a"
        return f"{r['truncated']} ({r['output_dropped'] / 1048576:.0f} MiB dropped)"

    return [
        ("exec_stream {s}: client RSS growth, MiB", get("stream", "default", growth)),
        ("exec_stream {s}: baseline RSS, MiB", get("stream", "default", _baseline)),
        ("exec_stream {s}: MB/s (while measuring RSS)", get("stream", "default", _mbps)),
        (
            "exec_stream {s}: then op.result, VmHWM growth, MiB",
            get("stream", "default", lambda r: (r["result_hwm_kib"] - r["baseline_kib"]) / 1024),
        ),
        (
            "exec_stream {s}: op.result held (trimmed), MiB",
            get("stream", "default", held("result_rss_kib", "result_trimmed_kib")),
        ),
        ("exec_stream {s}: op.result.truncated", get("stream", "default", trunc)),
        ("exec() {e}, default: RSS growth, MiB", get("exec", "default", growth)),
        (
            "exec() {e}, default: result held (trimmed), MiB",
            get("exec", "default", held("held_kib", "held_trimmed_kib")),
        ),
        ("exec() {e}, default: result.truncated", get("exec", "default", trunc)),
        ("exec() {e}, result_output_limit=None: RSS growth, MiB", get("exec", "none", growth)),
        (
            "exec() {e}, result_output_limit=None: held (trimmed), MiB",
            get("exec", "none", held("held_kib", "held_trimmed_kib")),
        ),
    ]


def _baseline(r: dict[str, Any]) -> float:
    return r["baseline_kib"] / 1024


def _mbps(r: dict[str, Any]) -> float:
    return r["mb_per_s"]


def cell(values: list[Any]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "skipped"
    if not all(isinstance(v, (int, float)) for v in values):
        return " / ".join(dict.fromkeys(str(v) for v in values))
    med = statistics.median(values)
    text = _fmt(med)
    if len(values) > 1:
        text += f" ({_fmt(min(values))}-{_fmt(max(values))})"
    return text


def _fmt(v: float) -> str:
    if abs(v) >= 200:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def ratio(after: list[Any], before: list[Any]) -> str:
    a = [v for v in after if isinstance(v, (int, float))]
    b = [v for v in before if isinstance(v, (int, float))]
    if not a or not b or statistics.median(b) == 0:
        return ""
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def tables(
    client: dict[tuple[str, str], list[dict[str, float]]],
    memory: dict[tuple[str, str], list[list[dict[str, Any]]]],
    sizes: tuple[str, str],
) -> str:
    cols = [(tree, mode) for mode in MODES for tree in TREES]
    head = (
        "| metric | before pinned | after pinned | before unpinned | after unpinned | "
        "after/before pinned | after/before unpinned |\n|---|---|---|---|---|---|---|"
    )
    labels: list[str] = []
    for runs in client.values():
        for rows in runs:
            labels.extend(k for k in rows if k not in labels)
    lines = ["### bench_client.py", "", head]
    for label in labels:
        vals = {c: [rows.get(label) for rows in client[c]] for c in cols}
        lines.append(
            f"| {label} | "
            + " | ".join(cell(vals[c]) for c in cols)
            + f" | {ratio(vals[cols[1]], vals[cols[0]])} | {ratio(vals[cols[3]], vals[cols[2]])} |"
        )
    lines += ["", "### bench_memory.py (client process RSS)", "", head]
    for label, pick in _memory_metrics():
        vals = {c: [pick(results) for results in memory[c]] for c in cols}
        lines.append(
            f"| {label.format(s=sizes[0], e=sizes[1])} | "
            + " | ".join(cell(vals[c]) for c in cols)
            + f" | {ratio(vals[cols[1]], vals[cols[0]])} | {ratio(vals[cols[3]], vals[cols[2]])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="cd91219")
    parser.add_argument(
        "--after", default=WORKTREE, help=f"a revision, or {WORKTREE!r} (default: a snapshot)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="--quick for both benchmarks")
    parser.add_argument("--quick-memory", action="store_true", help="--quick for memory only")
    parser.add_argument("--out", default="/tmp/execpy-compare")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trees = prepare_trees(args.before, args.after)
    for name in TREES:
        check_tree(name, trees[name])

    client_args = ["--quick"] if args.quick else []
    memory_quick = args.quick or args.quick_memory
    memory_args = ["--quick"] if memory_quick else []
    sizes = ("256 MiB", "printing 64 MiB") if memory_quick else ("1 GiB", "printing 256 MiB")
    client: dict[tuple[str, str], list[dict[str, float]]] = {}
    memory: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for rnd in range(args.rounds):
        order = TREES if rnd % 2 == 0 else TREES[::-1]
        for mode in MODES:
            for name in order:
                print(f"round {rnd + 1}, {mode}, {name}", flush=True)
                tag = f"{name}-{mode}-r{rnd + 1}"
                text = run(
                    [*prefix(mode), PY, str(BENCH / "bench_client.py"), *client_args],
                    trees[name],
                    out / f"{tag}-client.txt",
                )
                client.setdefault((name, mode), []).append(parse_client(text))
                js = out / f"{tag}-memory.json"
                run(
                    [
                        *prefix(mode),
                        PY,
                        str(BENCH / "bench_memory.py"),
                        *memory_args,
                        "--json",
                        str(js),
                    ],
                    trees[name],
                    out / f"{tag}-memory.txt",
                )
                memory.setdefault((name, mode), []).append(json.loads(js.read_text())["results"])
    text = tables(client, memory, sizes)
    (out / "tables.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\n{args.rounds} round(s) in {time.perf_counter() - started:.0f} s; raw output in {out}")


if __name__ == "__main__":
    main()
