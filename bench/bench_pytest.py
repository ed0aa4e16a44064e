"""The cost of a fresh runner per test through the pytest plugin (issue 13).

Runs a generated project of 200 tests four ways and reports the median time from a first
fixture to the test's first line: the set-up of the fixture under test (for pytest-trio,
the test's Trio loop starting too), not pytest's own start:

- ``execpy_sync_runner``: a fresh blocking runner per plain test (forked);
- ``execpy_runner``: a fresh async runner per pytest-trio test (forked);
- ``execpy_sync_runner --execpy-spawn``: spawned instead of forked;
- the baseline: a fixture that runs ``subprocess.run([sys.executable, "-c", ...])``.

Goal: at most 10 ms, and at least 3x faster than the subprocess. Run it pinned too
(``taskset -c 0 python bench/bench_pytest.py``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = int(os.environ.get("BENCH_TESTS", "200"))

CONFTEST = """
import os, subprocess, sys, time
import pytest


@pytest.fixture
def subprocess_python():
    subprocess.run([sys.executable, "-c", "x = 6 * 7"], check=True)


@pytest.fixture
def t0():
    # Asked for first: the test's first line measures the fixtures after it.
    return time.perf_counter()


def ready(t0):
    elapsed = time.perf_counter() - t0
    with open(os.environ["BENCH_OUT"], "a") as f:
        f.write(f"{elapsed}\\n")
"""


def _project(root: Path) -> None:
    (root / "conftest.py").write_text(CONFTEST)
    lines = ["import pytest\nfrom conftest import ready\n"]
    for i in range(TESTS):
        lines.append(
            f"def test_sync_{i}(t0, execpy_sync_runner):\n    ready(t0)\n"
            f"    execpy_sync_runner.exec('x = {i}')\n"
        )
        lines.append(
            f"@pytest.mark.trio\nasync def test_async_{i}(t0, execpy_runner):\n    ready(t0)\n"
            f"    await execpy_runner.exec('x = {i}')\n"
        )
        lines.append(f"def test_subprocess_{i}(t0, subprocess_python):\n    ready(t0)\n")
    (root / "test_many.py").write_text("\n".join(lines))


def _median_ms(root: Path, *args: str) -> tuple[float, int]:
    out = root / "durations.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(root),
            *args,
            str(root),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "BENCH_OUT": str(out)},
        cwd=root,
    )
    durations = [float(line) for line in out.read_text().split()]
    out.unlink()
    return statistics.median(durations) * 1000, len(durations)


def main() -> None:
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _project(root)
        rows = [
            ("execpy_sync_runner (forked)", ("-k", "test_sync_")),
            ("execpy_runner (forked, pytest-trio)", ("-k", "test_async_")),
            ("execpy_sync_runner --execpy-spawn", ("-k", "test_sync_", "--execpy-spawn")),
            ("subprocess.run(python -c) per test", ("-k", "test_subprocess_")),
        ]
        results = {name: _median_ms(root, *args) for name, args in rows}
    base = results["subprocess.run(python -c) per test"][0]
    print(f"## Fresh runner per test through the pytest plugin: {TESTS} tests, {cpus} CPU(s)\n")
    print("| fixture | set-up, median ms | tests | vs subprocess |")
    print("|---|---|---|---|")
    for name, (ms, n) in results.items():
        print(f"| {name} | {ms:.2f} | {n} | {base / ms:.1f}x faster |")


if __name__ == "__main__":
    main()
