"""The ``execpy`` command, run as a real process (it starts real runners)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from execpy_trio import cli

EXECPY = [sys.executable, "-c", "import sys; from execpy_trio.cli import main; sys.exit(main())"]


def execpy(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXECPY, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_ok_prints_output_and_value() -> None:
    p = execpy("run", "-c", "import sys\nprint('hi')\nprint('oops', file=sys.stderr)\n6 * 7")
    assert (p.returncode, p.stdout, p.stderr) == (0, "hi\n42\n", "oops\n")


def test_no_value() -> None:
    p = execpy("run", "--no-value", "-c", "6 * 7")
    assert (p.returncode, p.stdout) == (0, "")


def test_file(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("print('from a file')\n")
    p = execpy("run", str(script))
    assert (p.returncode, p.stdout) == (0, "from a file\n")


def test_user_error_exits_1_with_traceback() -> None:
    p = execpy("run", "-c", "def f():\n    return 1 / 0\nf()")
    assert p.returncode == cli.EXIT_CODE_ERROR
    assert "Traceback" in p.stderr and "ZeroDivisionError: division by zero" in p.stderr
    assert "return 1 / 0" in p.stderr


def test_input_from_stdin() -> None:
    p = execpy("run", "-c", "n = input('n? ')\nprint(int(n) * 2)", stdin="21\n")
    assert (p.returncode, p.stdout) == (0, "n? 42\n")


def test_input_at_end_of_stdin_is_eof_error() -> None:
    p = execpy("run", "-c", "input()", stdin="")
    assert p.returncode == 1 and "EOFError" in p.stderr


def test_missing_file_exits_2() -> None:
    p = execpy("run", "/nonexistent/file.py")
    assert p.returncode == cli.EXIT_FAILURE and "cannot read" in p.stderr


def test_runner_failure_exits_2() -> None:
    p = execpy("run", "--runner", f"{sys.executable} -c 'import sys; sys.exit(3)'", "-c", "1")
    assert p.returncode == cli.EXIT_FAILURE
    assert "RunnerStartError" in p.stderr


def test_runner_dying_exits_2() -> None:
    p = execpy("run", "-c", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert p.returncode == cli.EXIT_FAILURE
    assert "RunnerDied" in p.stderr and "SIGKILL" in p.stderr


def test_usage_errors() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["run", "file.py", "-c", "1"])


def test_streams_output_live() -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"
    with subprocess.Popen([*EXECPY, "run", "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        start = time.monotonic()
        first = proc.stdout.readline()
        elapsed = time.monotonic() - start
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0
    assert first == "first\n"
    assert rest == "second\n"
    # Start-up included, the first line arrives well before the code ends.
    assert elapsed < 1.4


def test_ctrl_c_interrupts_the_code() -> None:
    code = "import time\nprint('go', flush=True)\nwhile True:\n    time.sleep(0.05)"
    with subprocess.Popen(
        [*EXECPY, "run", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "go\n"
        os.kill(proc.pid, signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=30) == cli.EXIT_INTERRUPTED
    assert "KeyboardInterrupt" in err


def test_demo_runs() -> None:
    demo = Path(__file__).parent.parent / "examples" / "demo.py"
    p = execpy("run", str(demo))
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == "[1, 4, 9, 16, 25]"
