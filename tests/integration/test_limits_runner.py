"""Limits and preload in real runner processes: each limit hit, then the next op works."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

import execpy_trio as ex

# A bound on waits that should end far sooner: a hang detector, not a speed check.
HANG = 30
BURN_CHILD = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'while True: pass'])\n"


async def _next_op_works(runner: ex.Runner) -> None:
    r = await runner.exec("print('next')\n6 * 7")
    assert (r.status, r.stdout, r.value) == ("ok", "next\n", "42"), r


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    print('x' * 1000)",
        "import os\nos.write(1, b'y' * 10**6)",
        "import subprocess\nsubprocess.run('yes | head -c 10000000', shell=True)",
        "print('z' * 50_000)",  # crossed only in the final drain, after the code ended
    ],
    ids=["print-loop", "one-write", "child-process", "at-the-end"],
)
async def test_output_limit(code: str) -> None:
    async with ex.open_runner(limits=ex.Limits(output_bytes=10_000)) as runner:
        with trio.fail_after(HANG):
            r = await runner.exec(code)
            assert r.status == "error" and r.error is not None, r
            assert r.error.type == "OutputLimitExceeded", r.error
            assert "more than 10000 bytes" in r.error.message
            assert len(r.stdout) + len(r.stderr) == 10_000
            await _next_op_works(runner)


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "data = []\nwhile True:\n    data.append(bytearray(1 << 20))"],
    ids=["one-allocation", "slow-growth"],
)
async def test_memory_limit(code: str) -> None:
    async with ex.open_runner(limits=ex.Limits(memory=1 << 30)) as runner:
        with trio.fail_after(HANG):
            r = await runner.exec(code)
            assert r.status == "error" and r.error is not None and r.error.type == "MemoryError"
            assert "Traceback" in r.error.traceback
            await runner.exec("data = None")  # what the growth loop kept, given back
            await _next_op_works(runner)
            # A child process is bounded too (the limit is inherited).
            r = await runner.exec(
                "import subprocess, sys\n"
                "p = subprocess.run([sys.executable, '-c', 'bytearray(10**10)'], "
                "capture_output=True, text=True)\n"
                "'MemoryError' in p.stderr"
            )
            assert r.value == "True", r


@pytest.mark.parametrize("code", ["while True:\n    pass", BURN_CHILD], ids=["loop", "child"])
async def test_cpu_limit(code: str) -> None:
    async with ex.open_runner(limits=ex.Limits(cpu_seconds=0.5)) as runner:
        with trio.fail_after(HANG):
            for _ in range(2):  # the budget is per op
                r = await runner.exec(code)
                assert r.status == "error" and r.error is not None, r
                assert r.error.type == "CPULimitExceeded", r.error
                assert "more than 0.5 s of CPU time" in r.error.message
                await _next_op_works(runner)
            # Sleeping uses no CPU: an op may last longer than its CPU budget.
            assert (await runner.exec("import time\ntime.sleep(0.8)")).ok


async def test_open_files_limit_counts_only_the_users() -> None:
    async with ex.open_runner(limits=ex.Limits(open_files=10)) as runner:
        with trio.fail_after(HANG):
            r = await runner.exec(
                "fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
                "except OSError as e:\n    err = e.errno\nlen(fs)"
            )
            assert r.ok and 8 <= int(r.value or 0) <= 10, r  # the user gets (about) 10
            assert (await runner.eval("err")) == 24  # EMFILE
            await runner.exec("for f in fs: f.close()")
            await _next_op_works(runner)


async def test_limits_combined_with_cancel() -> None:
    limits = ex.Limits(cpu_seconds=5, output_bytes=10**6, memory=1 << 30)
    async with ex.open_runner(limits=limits) as runner:
        with trio.fail_after(HANG):
            with trio.move_on_after(0.3):
                await runner.exec("import time\ntime.sleep(100)")
            await _next_op_works(runner)
            with trio.move_on_after(0.3):
                await runner.exec("while True:\n    pass")
            await _next_op_works(runner)
            assert runner.statistics().ops_cancelled == 2


async def test_preload_imports_before_the_first_op() -> None:
    async with ex.open_runner(preload=("json", "xml.dom.minidom")) as runner:
        assert "preload" in runner.welcome.capabilities
        assert await runner.eval("'xml.dom.minidom' in __import__('sys').modules") is True


async def test_a_preload_that_fails_names_the_module_and_shows_the_traceback(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken_mod.py").write_text("x = 1\nraise ValueError('bad setup')\n")
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    with trio.fail_after(HANG), pytest.raises(ex.RunnerStartError) as info:
        async with ex.open_runner(preload=("json", "broken_mod"), env=env):
            pass
    message = str(info.value)
    assert "importing 'broken_mod' failed" in message
    assert 'broken_mod.py", line 2, in <module>' in message
    assert "ValueError: bad setup" in message
    assert info.value.returncode == 7


async def test_a_limit_the_runner_cannot_apply_fails_the_start() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files to exceed here")
    with trio.fail_after(HANG), pytest.raises(ex.RunnerStartError, match="over the hard limit"):
        async with ex.open_runner(limits=ex.Limits(open_files=hard + 1)):
            pass


def test_the_autograder_example_grades_as_documented() -> None:
    import subprocess

    example = Path(__file__).parents[2] / "examples" / "autograder.py"
    p = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(None, 1) for line in p.stdout.splitlines())
    assert lines["load"] == "ok" and lines["test_add"] == "pass"
    assert lines["test_wrong"] == "AssertionError: add(2, 2) is not 5"
    assert lines["test_loops_forever"].startswith("CPULimitExceeded")
    assert lines["test_sleeps"] == "timeout"
    assert lines["test_prints_too_much"].startswith("OutputLimitExceeded")
    assert lines["test_network"] != "pass"


SWALLOWS_THE_LIMIT = """\
while True:
    try:
        while True:
            pass
    except BaseException:
        pass
"""
IGNORES_INTERRUPTS = (
    "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
)


@pytest.mark.parametrize(
    "code", [SWALLOWS_THE_LIMIT, IGNORES_INTERRUPTS], ids=["swallows", "ignores"]
)
async def test_code_that_fights_the_cpu_limit_ends_the_runner_not_runs_on(code: str) -> None:
    async with ex.open_runner(limits=ex.Limits(cpu_seconds=0.5)) as runner:
        with trio.fail_after(HANG), pytest.raises(ex.RunnerDied) as info:
            await runner.exec(code)
        assert info.value.returncode is not None and info.value.returncode < 0


GRANDCHILDREN = """\
import subprocess, sys
code = (
    "import subprocess, sys\\n"
    "for _ in range(8):\\n"
    "    subprocess.run([sys.executable, '-c', 'import time\\\\nt = time.process_time()\\\\n"
    "while time.process_time() - t < 0.3: pass'])\\n"
)
subprocess.run([sys.executable, '-c', code])
"""


async def test_cpu_of_grandchildren_reaped_by_children_counts() -> None:
    async with ex.open_runner(limits=ex.Limits(cpu_seconds=1.0)) as runner:
        with trio.fail_after(HANG):
            r = await runner.exec(GRANDCHILDREN)
            assert r.error is not None and r.error.type == "CPULimitExceeded", r
            await _next_op_works(runner)


async def test_a_caught_memory_error_leaves_the_runner_usable() -> None:
    code = (
        "L = []\ntry:\n    while True:\n        L.append(bytearray(1 << 10))\n"
        "except MemoryError:\n    pass"
    )
    async with ex.open_runner(limits=ex.Limits(memory=1 << 30)) as runner:
        with trio.fail_after(HANG):
            assert (await runner.exec(code)).ok
            r = await runner.exec("print('next')")  # L still holds the memory
            assert r.stdout == "next\n" or (r.error is not None and r.error.type == "MemoryError")
            await runner.exec("del L")
            await _next_op_works(runner)


async def test_output_written_between_ops_is_not_charged_to_the_next() -> None:
    late_writer = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', "
        "'import time, os; time.sleep(0.3); os.write(1, b\"q\" * 5000)'])"
    )
    async with ex.open_runner(limits=ex.Limits(output_bytes=1000)) as runner:
        with trio.fail_after(HANG):
            assert (await runner.exec(late_writer)).ok
            await trio.sleep(1.0)
            r = await runner.exec("print('op2')")
            assert (r.status, r.stdout) == ("ok", "op2\n"), r
