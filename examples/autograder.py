"""An autograder: untrusted code under limits, in a sandbox, with a clean environment and a
wall-clock bound per test (docs/limits.md). Run: .venv/bin/python examples/autograder.py"""

from __future__ import annotations

import shutil
import tempfile

import trio

import execpy_trio as ex

LIMITS = ex.Limits(memory=1 << 30, cpu_seconds=1, open_files=64, output_bytes=1 << 20)

SUBMISSION = "def add(a, b):\n    return a + b\n"
TESTS = [
    ("test_add", "assert add(2, 3) == 5"),
    ("test_wrong", "assert add(2, 2) == 5, 'add(2, 2) is not 5'"),
    ("test_loops_forever", "while True:\n    pass"),
    ("test_sleeps", "import time\ntime.sleep(60)"),
    ("test_prints_too_much", "while True:\n    print('spam' * 100)"),
    ("test_network", "import socket\nsocket.create_connection(('example.com', 80), timeout=2)"),
]


async def run_tests(
    runner: ex.Runner, submission: str, tests: list[tuple[str, str]]
) -> dict[str, str]:
    """Load ``submission`` in ``runner``, then run each test: a report of name -> outcome."""
    report = {}
    r = await runner.exec(submission, filename="submission.py")
    report["load"] = "ok" if r.ok else f"{r.error.type}: {r.error.message}"  # type: ignore[union-attr]
    for name, check in tests:
        with trio.move_on_after(2) as scope:  # wall clock per test (sleep uses no CPU)
            r = await runner.exec(check, filename=f"{name}.py")
        if scope.cancelled_caught:
            report[name] = "timeout"
        elif r.ok:
            report[name] = "pass"
        else:
            report[name] = f"{r.error.type}: {r.error.message[:60]}"  # type: ignore[union-attr]
    return report


async def grade(submission: str, tests: list[tuple[str, str]], workdir: str) -> dict[str, str]:
    sandbox = ex.Sandbox(workdir=workdir) if shutil.which("bwrap") else None
    async with ex.open_runner(
        limits=LIMITS,
        sandbox=sandbox,  # no network, the only writable place is workdir
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        inherit_env=False,  # nothing of the grader's environment
        preload=("json",),
    ) as runner:
        return await run_tests(runner, submission, tests)


async def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        for name, outcome in (await grade(SUBMISSION, TESTS, workdir)).items():
            print(f"{name:22} {outcome}")


if __name__ == "__main__":
    trio.run(main)
