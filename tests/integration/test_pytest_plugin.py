"""The pytest plugin, in a real pytest run of a small project (a subprocess, so that the
plugin is loaded as users get it: through its pytest11 entry point)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

PROJECT = """
import pytest
import trio

import execpy_trio as ex


@pytest.mark.trio
async def test_async_fixture(execpy_runner):
    r = await execpy_runner.exec("leak = 1\\n6 * 7")
    assert r.value == "42"


def test_sync_fixture(execpy_sync_runner):
    assert execpy_sync_runner.eval("1 + 1") == 2
    execpy_sync_runner.exec("leak = 2")


@pytest.mark.trio
async def test_isolated_async(execpy_runner):
    assert (await execpy_runner.exec("'leak' in globals()")).value == "False"


def test_isolated_sync(execpy_sync_runner):
    assert execpy_sync_runner.eval("'leak' in globals()") is False


@pytest.mark.execpy(limits=ex.Limits(cpu_seconds=0.3), preload=["colorsys"])
def test_marker(execpy_sync_runner):
    assert execpy_sync_runner.eval("__import__('sys').modules.get('colorsys') is not None")
    r = execpy_sync_runner.exec("while True:\\n    x = 1")
    assert r.error.type == "CPULimitExceeded"


def test_option_preload(execpy_sync_runner):
    assert execpy_sync_runner.eval("'json' in __import__('sys').modules")


@pytest.mark.trio
async def test_a_failing_op(execpy_runner):
    await execpy_runner.exec("import sys\\nsys.stderr.flush()")
    await execpy_runner.exec("import os\\nos.kill(os.getpid(), 9)")


def test_a_failing_sync_op(execpy_sync_runner):
    execpy_sync_runner.exec("import os\\nos._exit(3)")
"""


def pytest_in(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real pytest run in ``tmp_path`` (the plugin loaded through its entry point)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_project.py").write_text(textwrap.dedent(PROJECT))
    return pytest_in(tmp_path, "--execpy-preload", "json", *args, str(tmp_path))


def test_fixtures_isolation_marker_options_and_reports(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    p = _run(tmp_path)
    out = p.stdout
    for name in (
        "async_fixture",
        "sync_fixture",
        "isolated_async",
        "isolated_sync",
        "marker",
        "option_preload",
    ):
        assert f"PASSED test_project.py::test_{name}" in out, out
    assert "FAILED test_project.py::test_a_failing_op - execpy_trio" in out, out
    assert "FAILED test_project.py::test_a_failing_sync_op - execpy_trio" in out, out
    # The library's error, not an ExceptionGroup, and the runner's own stderr.
    assert "ExceptionGroup" not in out, out
    assert "RunnerDied" in out and "SIGKILL" in out, out
    assert re.search(r"execpy runner \(pid \d+, .*\): its stderr", out), out
    assert p.returncode == 1
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before  # nothing of the session's is left running


def test_under_xdist(tmp_path: Path) -> None:
    """Two workers, each with its own fork server and pools: the same results, and
    nothing left running."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (pip install -e .[test])")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    p = _run(tmp_path, "-n", "2")
    assert "6 passed" in p.stdout and "2 failed" in p.stdout, p.stdout
    assert "ExceptionGroup" not in p.stdout
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before


def test_spawn_option(tmp_path: Path) -> None:
    p = _run(tmp_path, "--execpy-spawn", "-k", "isolated or sync_fixture")
    assert "4 passed" in p.stdout, p.stdout


def test_the_docs_harnesses_work_as_documented(tmp_path: Path) -> None:
    """docs/pytest.md's two harnesses, run as a user would copy them."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pytest.md").read_text()
    fence = "`" * 3
    blocks = re.findall(fence + r"python\n(.*?)" + fence, doc, re.S)
    (tmp_path / "test_docs.py").write_text(blocks[1])
    (tmp_path / "test_grade.py").write_text(blocks[2])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        f"{fence}python\nx = 1\n{fence}\n\n{fence}python\nassert 'x' not in globals()\n{fence}\n"
        f"\n{fence}python\n1 / 0\n{fence}\n"
    )
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "good.py").write_text("def add(a, b):\n    return a + b\n")
    (tmp_path / "submissions" / "loops.py").write_text(
        "def add(a, b):\n    while True:\n        pass\n"
    )
    p = pytest_in(tmp_path, str(tmp_path))
    out = p.stdout
    for passed in (
        "test_docs.py::test_snippet_runs[a.md:0]",
        "test_docs.py::test_snippet_runs[a.md:1]",
        "test_grade.py::test_grade[good-add]",
        "test_grade.py::test_grade[good-negative]",
    ):
        assert f"PASSED {passed}" in out, out
    assert "FAILED test_docs.py::test_snippet_runs[a.md:2]" in out and "ZeroDivisionError" in out
    assert "FAILED test_grade.py::test_grade[loops-add]" in out and "CPULimitExceeded" in out


def test_marker_limits_merge_with_the_command_line_limit_by_limit(tmp_path: Path) -> None:
    (tmp_path / "test_merge.py").write_text(
        textwrap.dedent("""
        import pytest
        import execpy_trio as ex

        pytestmark = pytest.mark.execpy(limits=ex.Limits(output_bytes=1000))

        @pytest.mark.execpy(limits=ex.Limits(memory=1 << 30))
        def test_merged(execpy_sync_runner):
            r = execpy_sync_runner.exec("while True:\\n    x = 1")
            assert r.error.type == "CPULimitExceeded"   # from --execpy-cpu-seconds
            r = execpy_sync_runner.exec("print('x' * 5000)")
            assert r.error.type == "OutputLimitExceeded"  # from the module's marker
            r = execpy_sync_runner.exec("b = b'x' * (2 << 30)")
            assert r.error.type == "MemoryError"  # from the test's marker
    """)
    )
    p = pytest_in(tmp_path, "--execpy-cpu-seconds", "0.3", str(tmp_path / "test_merge.py"))
    assert "1 passed" in p.stdout, p.stdout


def test_many_option_sets_keep_a_bounded_number_of_pools(tmp_path: Path) -> None:
    (tmp_path / "test_envs.py").write_text(
        textwrap.dedent("""
        import psutil
        import pytest

        @pytest.mark.parametrize("i", range(20))
        def test_env(request, i):
            request.applymarker(pytest.mark.execpy(env={"I": str(i)}))
            runner = request.getfixturevalue("execpy_sync_runner")
            assert runner.eval("__import__('os').environ.get('I')") == str(i)
            # 4 pools of 3 runners at most, and the fork server's template.
            assert len(psutil.Process().children(recursive=True)) <= 20
    """)
    )
    p = pytest_in(tmp_path, str(tmp_path / "test_envs.py"))
    assert "20 passed" in p.stdout, p.stdout
