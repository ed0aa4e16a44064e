"""An autograder over a pool: many submissions graded at once, each in a fresh runner of its
own, under limits, in a sandbox when bubblewrap is there (docs/manager.md).
Run: .venv/bin/python examples/pool_autograder.py"""

from __future__ import annotations

import shutil

import trio
from autograder import LIMITS, run_tests  # the one-runner autograder, beside this file

import execpy_trio as ex

SUBMISSIONS = {
    "alice": "def add(a, b):\n    return a + b\n",
    "bob": "def add(a, b):\n    return a - b\n",
    "carol": "def add(a, b):\n    while True:\n        pass\n",
    "dave": "import os\nos._exit(1)\n",  # kills its runner: only dave's grade suffers
    "erin": "def add(a, b):\n    import time\n    time.sleep(60)\n",
    "frank": "add = lambda a, b: a + b\nopen('left-behind', 'w').write('for the next one')\n",
    "grace": "def add(a, b):\n    return open('left-behind').read()\n",  # sees nothing of frank
}
TESTS = [
    ("small", "assert add(2, 3) == 5"),
    ("negative", "assert add(-2, -3) == -5"),
]


async def grade(manager: ex.Manager, submission: str) -> dict[str, str]:
    try:
        # fresh=True: a runner that never ran anyone else's code, discarded after.
        async with manager.runner(fresh=True) as runner:
            return await run_tests(runner, submission, TESTS)
    except ex.RunnerDied as exc:  # os._exit, a segfault, a kill: only this grade suffers
        return {"died": f"RunnerDied: {exc.reason} (exit status {exc.returncode})"}


async def main() -> None:
    sandbox = ex.Sandbox() if shutil.which("bwrap") else None  # a temporary workdir each
    async with ex.open_manager(
        size=4,  # four submissions at a time
        fresh_spares=2,  # runners started ahead, so a submission rarely waits for one
        limits=LIMITS,
        sandbox=sandbox,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        inherit_env=False,
    ) as manager:
        reports: dict[str, dict[str, str]] = {}

        async def one(student: str, code: str) -> None:
            reports[student] = await grade(manager, code)

        async with trio.open_nursery() as nursery:
            for student, code in SUBMISSIONS.items():
                nursery.start_soon(one, student, code)
        for student in SUBMISSIONS:
            print(f"{student:6} {reports[student]}")
        s = manager.statistics()
        print(f"runners started: {s.spawned}, crashed: {s.crashed}, fresh waits: {s.fresh_waits}")


if __name__ == "__main__":
    trio.run(main)
