"""`make bench`: every figure, pinned and unpinned, into RESULTS.md, PNGs and a doc page.

Usage: python bench/suite.py [--quick] [--only NAME,...] [--render-only]

For each figure (``bench/figures/<name>.py``) and each placement, the figure's
``measure()`` runs in a process of its own: ``taskset -c <first CPU> python
bench/suite.py --measure NAME --json FILE`` for "pinned" (the whole process tree on one
CPU: the runner, the kernel, the workers inherit it) and the same without taskset for
"unpinned". The raw results go to ``bench/results/NAME-PLACEMENT.json``, each with the
machine, the versions and the date. A figure that fails or times out is reported (the
tail of its stderr) and recorded in RESULTS.md; the others go on. Then every figure's
``render()`` turns the JSON of both placements into markdown tables, targets and PNGs
(``docs/img/``), and the suite rewrites the block between the markers in
``bench/RESULTS.md`` (the history below it is kept verbatim) and ``docs/performance.md``.

``--only`` measures some figures; the others are rendered from their last JSON (with its
date). ``--render-only`` measures nothing.

This module imports only the standard library at the top: it is also the ``__main__`` of
the measuring processes, which trio-parallel's spawned workers import again, so anything
imported here would be their start-up cost too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
IMG_DIR = ROOT / "docs" / "img"
PERFORMANCE_MD = ROOT / "docs" / "performance.md"
BEGIN = "<!-- make bench: begin -->"
END = "<!-- make bench: end -->"
PROGRESS = "SUITE-PROGRESS "
PLACEMENTS = ("pinned", "unpinned")


# --- the measuring process ---------------------------------------------------------------


def measure_one(name: str, quick: bool, json_path: pathlib.Path) -> int:
    """In the measuring process: run ``figures.<name>.measure`` and write its JSON."""
    from figures import _common as c

    module = importlib.import_module(f"figures.{name}")

    def progress(message: str) -> None:
        print(f"{PROGRESS}{message}", file=sys.stderr, flush=True)

    import execpy_trio

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = module.measure(quick, progress)
    doc = {
        "figure": name,
        "placement": c.placement(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "quick": quick,
        "date": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 1),
        # The machine may be shared: its 1-minute load average before and after.
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": c.machine(),
        "versions": c.versions(),
        "execpy_trio": os.path.dirname(execpy_trio.__file__ or "?"),
        "execpy_trio_git": _git_state(os.path.dirname(execpy_trio.__file__ or ".")),
        "env": {k: v for k, v in os.environ.items() if k.startswith("PYTHON")},
        "result": result,
    }
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    tmp.replace(json_path)
    return 0


def _git_state(path: str) -> str:
    """The last commit of the package directory the measured execpy_trio comes from, and
    whether its files differ from it: what exactly was measured."""
    try:
        head = subprocess.run(
            ["git", "-C", path, "log", "-1", "--format=%h", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git tree"
    if not head:
        return "not a git tree"
    return f"as of {head}, with uncommitted changes" if dirty else f"as of {head}, clean"


# --- the driver --------------------------------------------------------------------------


def _figure_modules(only: list[str] | None) -> list[str]:
    sys.path.insert(0, str(BENCH))
    from figures import FIGURES

    names = list(FIGURES)
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise SystemExit(f"unknown figure(s) {unknown}: choose from {names}")
    return names


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"figures.{name}") is not None


def _run_measure(
    name: str, place: str, quick: bool, timeout: float, label: str
) -> tuple[bool, str, float]:
    """Run one figure in one placement; (ok, error text, seconds)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}-{place}.json"
    cmd = [sys.executable, str(BENCH / "suite.py"), "--measure", name, "--json", str(out)]
    if quick:
        cmd.append("--quick")
    if place == "pinned":
        cpu = min(os.sched_getaffinity(0))
        cmd = ["taskset", "-c", str(cpu), *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    tail: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(PROGRESS):
                message = line[len(PROGRESS) :].rstrip()
                elapsed = time.perf_counter() - start
                print(f"{label}: {message} ({elapsed:.0f} s)", file=sys.stderr)
            else:
                tail.append(line.rstrip("\n"))
                del tail[:-40]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
        error = "" if code == 0 else f"exit status {code}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        error = f"timed out after {timeout:.0f} s"
    reader.join(5)
    seconds = time.perf_counter() - start
    if error:
        # A JSON left from an earlier run stays (it is not rendered for this run).
        return False, error + ("\n" + "\n".join(tail[-15:]) if tail else ""), seconds
    return True, "", seconds


def _load(name: str) -> dict[str, dict[str, Any]]:
    docs = {}
    for place in PLACEMENTS:
        path = RESULTS_DIR / f"{name}-{place}.json"
        if path.exists():
            docs[place] = json.loads(path.read_text())
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~1 minute subset")
    parser.add_argument("--only", help="comma-separated figure names to measure")
    parser.add_argument("--render-only", action="store_true", help="measure nothing")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.path.insert(0, str(BENCH))
        return measure_one(args.measure, args.quick, pathlib.Path(args.json))

    only = [n.strip() for n in args.only.split(",")] if args.only else None
    names = _figure_modules(only)
    to_measure = [] if args.render_only else [n for n in names if only is None or n in only]
    notes: list[str] = []
    places = list(PLACEMENTS)
    if shutil.which("taskset") is None:
        places.remove("pinned")
        notes.append("`taskset` is not installed: the pinned placement was skipped.")
    elif len(os.sched_getaffinity(0)) == 1:
        notes.append("Only one CPU is available: pinned and unpinned are the same placement.")
    failures: dict[tuple[str, str], str] = {}
    measured: set[str] = set()
    jobs = [(n, p) for n in to_measure for p in places]
    run_start = time.perf_counter()
    from figures import _common  # noqa: F401 - puts bench/ on sys.path for the modules

    for i, (name, place) in enumerate(jobs, start=1):
        label = f"[{i}/{len(jobs)}] {name} {place}"
        if not _available(name):  # not written yet: said in RESULTS.md, not a failure
            print(f"{label} ... skipped: no bench/figures/{name}.py", file=sys.stderr)
            continue
        module = importlib.import_module(f"figures.{name}")
        expected = module.QUICK_SECONDS if args.quick else module.FULL_SECONDS
        timeout = max(120.0, expected * 4)
        print(f"{label} ... (expected ~{expected} s)", file=sys.stderr)
        ok, error, seconds = _run_measure(name, place, args.quick, timeout, label)
        if ok:
            measured.add(name)
            print(f"{label} ... {seconds:.0f} s", file=sys.stderr)
        else:
            failures[(name, place)] = error
            print(f"{label} ... FAILED after {seconds:.0f} s: {error}", file=sys.stderr)
    total = time.perf_counter() - run_start
    if jobs:
        print(f"measured in {total:.0f} s", file=sys.stderr)
    _render_all(names, measured, failures, notes, args.quick, total if jobs else None)
    print(
        f"wrote {RESULTS_MD.relative_to(ROOT)}, {PERFORMANCE_MD.relative_to(ROOT)}, "
        f"{IMG_DIR.relative_to(ROOT)}/*.png",
        file=sys.stderr,
    )
    return 1 if failures else 0


# --- rendering ---------------------------------------------------------------------------


def _render_all(
    names: list[str],
    measured: set[str],
    failures: dict[tuple[str, str], str],
    notes: list[str],
    quick: bool,
    total: float | None,
) -> None:
    from figures import _common as c

    sections: list[dict[str, Any]] = []
    all_targets: list[Any] = []
    meta: dict[str, Any] | None = None
    for name in names:
        section: dict[str, Any] = {"name": name, "title": name, "failures": [], "docs": {}}
        sections.append(section)
        for place in PLACEMENTS:
            if (name, place) in failures:
                section["failures"].append((place, failures[(name, place)]))
        if not _available(name):
            section["missing"] = True
            continue
        module = importlib.import_module(f"figures.{name}")
        section["title"] = module.TITLE
        failed = {p for p, _ in section["failures"]}
        docs = {p: d for p, d in _load(name).items() if p not in failed}
        section["docs"] = docs
        if not docs:
            continue
        meta = meta or next(iter(docs.values()))
        try:
            rendered = module.render({p: d["result"] for p, d in docs.items()}, IMG_DIR)
        except Exception:
            section["failures"].append(("render", traceback.format_exc(limit=6)))
            continue
        section["rendered"] = rendered
        all_targets += rendered.targets
    block = _block(sections, all_targets, meta, notes, quick, measured, total, c)
    _write_results_md(block)
    _write_performance_md(sections, meta, quick, c)


def _versions_line(meta: dict[str, Any]) -> str:
    v = meta["versions"]
    return (
        f"Python {v['python']}, trio {v['trio']}, msgpack {v['msgpack']}, execpy-trio "
        f"{v['execpy-trio']} (from `{meta['execpy_trio']}`, "
        f"{meta.get('execpy_trio_git', '?')}); peers: execnet {v['execnet']}, "
        f"trio-parallel {v['trio-parallel']}, jupyter_client {v['jupyter_client']} + "
        f"ipykernel {v['ipykernel']} (pyzmq {v['pyzmq']})"
    )


def _machine_line(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return f"{m['cpu']}, {m['cores']} cores, {m['kernel']} ({m['machine']})"


def _when(docs: dict[str, dict[str, Any]]) -> str:
    parts = []
    for place, doc in docs.items():
        kind = "quick" if doc["quick"] else "full"
        load = doc.get("load")
        on = f", load average {load[0]:.1f} -> {load[1]:.1f}" if load else ""
        parts.append(f"{place}: {doc['date']}, {kind}, {doc['seconds']:.0f} s{on}")
    return "; ".join(parts)


def _block(
    sections: list[dict[str, Any]],
    targets: list[Any],
    meta: dict[str, Any] | None,
    notes: list[str],
    quick: bool,
    measured: set[str],
    total: float | None,
    c: Any,
) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kind = "quick (`make bench-quick`)" if quick else "full (`make bench`)"
    lines = [BEGIN, "", f"## `make bench`: {kind}, {now}", ""]
    if meta is not None:
        lines += [
            f"- Machine: {_machine_line(meta)}.",
            f"- {_versions_line(meta)}.",
        ]
    lines += [
        "- Pinned: the figure's whole process tree on one CPU (`taskset -c 0`); unpinned: "
        "the CPUs the suite was given. Ratios are taken within one run of one figure.",
        f"- Measured this time: {', '.join(sorted(measured)) or 'nothing (rendered only)'}"
        + (f", in {total:.0f} s." if total is not None else "."),
        "- Plots, captions and the method: [docs/performance.md](../docs/performance.md), "
        "[bench/README.md](README.md).",
    ]
    lines += [f"- {note}" for note in notes]
    met = sum(1 for t in targets if t.met is True)
    missed = [t for t in targets if t.met is False]
    lines += [
        "",
        f"Targets: {met} met, {len(missed)} missed, "
        f"{sum(1 for t in targets if t.met is None)} reported without a bound.",
    ]
    if missed:
        lines += ["Missed: " + "; ".join(f"{t.name}: {t.value}" for t in missed) + "."]
    for section in sections:
        lines += ["", f"### {section['name']}: {section['title']}", ""]
        if section.get("missing"):
            lines += [f"Not measured: `bench/figures/{section['name']}.py` does not exist."]
            continue
        for place, error in section["failures"]:
            text = error.strip().replace("\n", "\n    ")
            lines += [f"**FAILED ({place})**:", "", "    " + text, ""]
        if section["docs"]:
            lines += [f"Measured {_when(section['docs'])}.", ""]
        rendered = section.get("rendered")
        if rendered is None:
            if not section["docs"] and not section["failures"]:
                lines += [f"No results yet: `python bench/suite.py --only {section['name']}`."]
            continue
        lines += [rendered.markdown, ""]
        if rendered.targets:
            lines += [c.targets_table(rendered.targets)]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _write_results_md(block: str) -> None:
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block.rstrip("\n") + tail
    else:
        # Above the existing text, under the file's title.
        first, _, rest = text.partition("\n")
        if first.startswith("# "):
            text = f"{first}\n\n{block}\n{rest.lstrip(chr(10))}"
        else:
            text = f"{block}\n{text}"
    RESULTS_MD.write_text(text)


def _write_performance_md(
    sections: list[dict[str, Any]], meta: dict[str, Any] | None, quick: bool, c: Any
) -> None:
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `make bench` (bench/suite.py); edit bench/figures/*.py instead. -->",
        "",
        "execpy-trio against the tools people use for the same job -- Jupyter "
        "(jupyter_client + ipykernel), execnet and trio-parallel -- and against the raw "
        "references: an os.pipe msgpack ping-pong between two Python processes, a raw pipe, "
        "and the trio floor (Trio talking msgpack to a plain Python child, what any Trio "
        "client of a Python process pays). Every figure is measured twice in the same run: "
        "pinned to one CPU (client and worker share it, as on a busy or small machine) and "
        "unpinned. Compare ratios within one placement: absolute times move with the "
        "machine. How each figure is measured, and why that way: "
        "[bench/README.md](../bench/README.md); the tables with the targets and the "
        "history: [bench/RESULTS.md](../bench/RESULTS.md).",
        "",
    ]
    if meta is not None:
        lines += [
            f"Last run: {'quick' if quick else 'full'}; {_machine_line(meta)}; "
            f"{_versions_line(meta)}.",
            "",
        ]
    for section in sections:
        rendered = section.get("rendered")
        lines += [f"## {section['title']}", ""]
        if rendered is None:
            lines += ["Not available in the last run (see bench/RESULTS.md).", ""]
            continue
        if section["docs"]:
            lines += [f"*Measured {_when(section['docs'])}.*", ""]
        for image, caption in rendered.images:
            lines += [f"![{section['title']}](img/{image})", "", f"*{caption}*", ""]
        lines += [rendered.markdown, ""]
        if rendered.targets:
            lines += [c.targets_table(rendered.targets), ""]
    PERFORMANCE_MD.parent.mkdir(parents=True, exist_ok=True)
    PERFORMANCE_MD.write_text("\n".join(lines).rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
