"""The ``execpy`` command, run as a real process (it starts real runners)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from execpy_trio import cli

EXECPY = [sys.executable, "-c", "import sys; from execpy_trio.cli import main; sys.exit(main())"]


def execpy(
    *args: str, stdin: str = "", timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXECPY, *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd
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
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])  # neither FILE, - nor -c
    assert info.value.code == 2


class DeadlineReader:
    """A child's pipe read with a deadline (a hung CLI fails the test, never hangs it)."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.data = b""

    def read_until(self, marker: bytes | None) -> bytes:
        """Read until ``marker`` is in the data (None: until end of file); return it all."""
        while marker is None or marker not in self.data:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise AssertionError(f"timed out waiting for {marker!r}; got {self.data!r}")
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: a pty whose other side is closed
                chunk = b""
            if not chunk:
                if marker is None:
                    break
                raise AssertionError(f"end of output before {marker!r}; got {self.data!r}")
            self.data += chunk
        return self.data


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill ``proc`` if the block fails, so that leaving ``Popen``'s block cannot hang."""
    try:
        yield
    except BaseException:
        proc.kill()
        raise


def test_streams_output_live(tmp_path: Path) -> None:
    # The code cannot finish before the test has read 'first': it waits for a file the
    # test creates only then. Had the CLI held the output back until the end, 'first'
    # would not come before the code gave up waiting (30 s), and it would say 'no go'.
    go = tmp_path / "go"
    code = (
        "import os, time\nprint('first', flush=True)\ndeadline = time.monotonic() + 30\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.005)\n"
        f"print('second' if os.path.exists({str(go)!r}) else 'no go')"
    )
    proc = subprocess.Popen([*EXECPY, "run", "-c", code], stdout=subprocess.PIPE)
    with proc, killed_on_failure(proc):
        assert proc.stdout is not None
        out = DeadlineReader(proc.stdout.fileno(), time.monotonic() + 60)
        assert out.read_until(b"\n") == b"first\n"
        go.touch()
        assert out.read_until(None) == b"first\nsecond\n"
        assert proc.wait(timeout=30) == 0


@contextlib.contextmanager
def _running_until_go(code: str) -> Iterator[tuple[subprocess.Popen[bytes], DeadlineReader]]:
    """``execpy run -c code``, once it has printed "go"; yields it and its stderr reader."""
    proc = subprocess.Popen(
        [*EXECPY, "run", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with proc, killed_on_failure(proc):
        assert proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + 60  # a hang detector
        assert DeadlineReader(proc.stdout.fileno(), deadline).read_until(b"\n") == b"go\n"
        yield proc, DeadlineReader(proc.stderr.fileno(), deadline)


def test_ctrl_c_interrupts_the_code() -> None:
    code = "import time\nprint('go', flush=True)\nwhile True:\n    time.sleep(0.05)"
    with _running_until_go(code) as (proc, errors):
        os.kill(proc.pid, signal.SIGINT)
        err = errors.read_until(None)
        assert proc.wait(timeout=30) == cli.EXIT_INTERRUPTED
    assert b"KeyboardInterrupt" in err


def test_second_ctrl_c_kills_the_runner_and_exits_130() -> None:
    code = (
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('go', flush=True)\nwhile True:\n    time.sleep(0.05)"
    )
    with _running_until_go(code) as (proc, errors):
        os.kill(proc.pid, signal.SIGINT)  # ignored by the code
        errors.read_until(b"Ctrl-C again to kill")
        os.kill(proc.pid, signal.SIGINT)
        err = errors.read_until(None)
        assert proc.wait(timeout=30) == cli.EXIT_INTERRUPTED
    assert b"killed the runner" in err and b"Traceback" not in err
    assert b"RunnerDied" not in err


EXECPY_SCRIPT = Path(sys.executable).parent / "execpy"


@pytest.mark.skipif(not EXECPY_SCRIPT.exists(), reason="the execpy script is not installed")
def test_ctrl_c_at_an_input_prompt_in_a_terminal() -> None:
    # A real terminal, not pipes: Ctrl-C is the terminal's, sent by the line discipline
    # to the foreground process group (the CLI; the runner has its own session) while
    # the CLI is reading the terminal for input().
    def script(master: int, out: DeadlineReader) -> None:
        out.read_until(b"name? ")
        os.write(master, b"\x03")

    status, text = _in_a_terminal("x = input('name? ')", script)
    assert status == cli.EXIT_INTERRUPTED, text
    # The code's own traceback (its frames are <string>, as python3 -c names them) and
    # nothing from the CLI: no traceback of a real file, no crash at interpreter exit.
    assert text.count("Traceback") == 1 and "KeyboardInterrupt" in text, text
    frames = [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]
    assert frames and all(f.startswith('File "<string>"') for f in frames), text
    assert "Fatal Python error" not in text and "Exception ignored" not in text, text


def _in_a_terminal(code: str, script: Callable[[int, DeadlineReader], None]) -> tuple[int, str]:
    """Run ``execpy run -c code`` on a pseudo-terminal; ``script`` drives it through the
    master side; return the exit status and everything the terminal showed."""
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader with the pty as its controlling terminal
        try:
            os.execv(str(EXECPY_SCRIPT), ["execpy", "run", "-c", code])
        finally:
            os._exit(127)
    status = None
    try:
        out = DeadlineReader(master, time.monotonic() + 60)  # every wait: a hang detector
        script(master, out)
        out.read_until(None)
        while status is None and time.monotonic() < out.deadline:
            waited, raw = os.waitpid(pid, os.WNOHANG)
            if waited:
                status = os.waitstatus_to_exitcode(raw)
            else:
                time.sleep(0.01)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    assert status is not None
    return status, out.data.decode("utf-8", "replace")


@pytest.mark.skipif(not EXECPY_SCRIPT.exists(), reason="the execpy script is not installed")
def test_echo_is_restored_after_ctrl_c_at_a_password_prompt() -> None:
    echo: list[bool] = []

    def script(master: int, out: DeadlineReader) -> None:
        out.read_until(b"secret? ")
        echo.append(bool(termios.tcgetattr(master)[3] & termios.ECHO))  # hidden input
        os.write(master, b"\x03")
        out.read_until(b"KeyboardInterrupt")  # the read was cancelled and the code stopped
        echo.append(bool(termios.tcgetattr(master)[3] & termios.ECHO))

    status, text = _in_a_terminal("import getpass\ngetpass.getpass('secret? ')", script)
    assert status == cli.EXIT_INTERRUPTED, text
    assert echo == [False, True], text  # off while the password was asked, then restored


def test_demo_runs() -> None:
    demo = Path(__file__).parent.parent / "examples" / "demo.py"
    p = execpy("run", str(demo))
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == "[1, 4, 9, 16, 25]"


# --- like python3 ------------------------------------------------------------------------


def test_argv_file_and_exit_status_as_python3(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text("import sys\nprint(sys.argv, __file__ == sys.argv[0])\nsys.exit(4)\n")
    p = execpy("run", str(script), "a", "--flag")
    assert p.returncode == 4 and p.stderr == ""  # no SystemExit traceback
    assert p.stdout == f"{[str(script), 'a', '--flag']} True\n"


def test_tracebacks_name_the_file_and_its_lines_as_python3(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text("def main():\n    return 1 / 0\n\nmain()\n")
    p = execpy("run", str(script))
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{script}", line 4, in <module>',
        "    main()",
        f'  File "{script}", line 2, in main',
        "    return 1 / 0",
        "           ~~^~~",
        "ZeroDivisionError: division by zero",
    ]
    # A relative path is made absolute, as python3 does; sys.argv[0] stays as typed.
    p = execpy("run", "prog.py", cwd=tmp_path)
    assert f'File "{script}", line 2, in main' in p.stderr
    p = execpy("run", "-c", "1 / 0")
    assert 'File "<string>", line 1, in <module>' in p.stderr
    p = execpy("run", "-", stdin="print(__file__)\n1 / 0\n")
    assert p.stdout == "<stdin>\n" and 'File "<stdin>", line 2, in <module>' in p.stderr


def test_argv_with_c_and_stdin() -> None:
    p = execpy("run", "-c", "import sys; print(sys.argv)", "x", "y")
    assert (p.returncode, p.stdout) == (0, "['-c', 'x', 'y']\n")
    p = execpy("run", "-", "q", stdin="import sys; print('from stdin', sys.argv)")
    assert (p.returncode, p.stdout) == (0, "from stdin ['-', 'q']\n")


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [
        ("import sys; sys.exit()", 0, ""),
        ("import sys; sys.exit(0)", 0, ""),
        ("import sys; sys.exit(3)", 3, ""),
        ("raise SystemExit('bye')", 1, "bye\n"),
        ("import os; os._exit(4)", 4, ""),
    ],
)
def test_exit_statuses(code: str, status: int, stderr: str) -> None:
    p = execpy("run", "-c", code)
    assert (p.returncode, p.stderr) == (status, stderr)


def test_version_and_run_usage() -> None:
    p = execpy("--version")
    assert p.returncode == 0 and p.stdout.startswith("execpy 0.") and "protocol 1." in p.stdout
    p = execpy("run", "--bogus", "x.py")
    assert p.returncode == 2 and "usage: execpy run" in p.stderr and "--bogus" in p.stderr
    p = execpy("run")
    assert p.returncode == 2 and "usage: execpy run" in p.stderr


def test_closed_stdout_pipe_ends_quietly() -> None:
    command = shlex.join([*EXECPY, "run", "-c", "while True: print('y' * 100)"])
    p = subprocess.run(
        ["bash", "-c", f"{command} | head -c 10 >/dev/null; echo status=${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.stdout == f"status={cli.EXIT_BROKEN_PIPE}\n"
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_trace_logs_the_runners_frames_too() -> None:
    p = execpy("run", "--trace", "-c", "1")
    assert p.returncode == 0
    assert "execpy_trio.frames: send Hello" in p.stderr  # ours
    assert "execpy-runner[" in p.stderr and "recv Hello" in p.stderr  # the runner's


def test_os_exit_sends_what_was_written_first() -> None:
    code = "import os\nprint('bye', flush=True)\nos.write(1, b'raw\\n')\nos._exit(3)"
    p = execpy("run", "-c", code)
    assert (p.returncode, p.stdout, p.stderr) == (3, "bye\nraw\n", "")
    # A forked child's os._exit ends only the child.
    code = (
        "import os\npid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"
    )
    p = execpy("run", "-c", code)
    assert (p.returncode, p.stdout) == (0, "7\n")
