"""The runner cannot be broken or escaped: fork, escaping children, damaged globals, I/O."""

from __future__ import annotations

import os
import select
import sys
import time
from typing import Any

import pytest

from execpy_trio.protocol import NEED_DATA, Done, FrameDecoder, frame, pack_body
from execpy_trio.runner import EXIT_OK
from runner_client import RunnerClient, process_alive, wait_gone

# -- fork() in user code --------------------------------------------------------------------

FORK_EXIT = """\
import os, sys
pid = os.fork()
if pid == 0:
    print('child', flush=True)
    sys.exit(0)
os.waitpid(pid, 0)
print('parent')
"""

FORK_FALL_THROUGH = """\
import os
pid = os.fork()
if pid == 0:
    print('child', flush=True)
else:
    os.waitpid(pid, 0)
    print('parent')
"""

FORK_RAISES = """\
import os
pid = os.fork()
if pid == 0:
    raise ValueError('in the child')
_, status = os.waitpid(pid, 0)
print('parent', os.waitstatus_to_exitcode(status))
"""


def _count_dones_after(client: RunnerClient, seconds: float) -> int:
    """Done frames that arrive within ``seconds`` (none is expected)."""
    extra = 0
    deadline = time.monotonic() + seconds
    while True:
        try:
            ev = client.recv(max(deadline - time.monotonic(), 0))
        except TimeoutError:
            return extra
        if type(ev) is Done:
            extra += 1


@pytest.mark.parametrize("code", [FORK_EXIT, FORK_FALL_THROUGH], ids=["sys-exit", "fall-through"])
def test_forked_child_never_speaks_on_the_channel(code: str) -> None:
    with RunnerClient() as client:
        r = client.exec(code)
        assert r.status == "ok", (r.done, client.diag())
        assert sorted(r.stdout.split()) == [b"child", b"parent"]
        assert _count_dones_after(client, 0.3) == 0
        assert client.eval("1 + 1").value == 2
        assert client.exec("print('next')").stdout == b"next\n"


def test_forked_child_that_raises_exits_with_1_and_shows_the_traceback() -> None:
    with RunnerClient() as client:
        r = client.exec(FORK_RAISES)
        assert r.status == "ok", (r.done, client.diag())
        assert r.stdout == b"parent 1\n"
        assert b"ValueError: in the child" in r.stderr
        assert _count_dones_after(client, 0.3) == 0
        assert client.eval("2").value == 2


# -- nothing escapes ------------------------------------------------------------------------

ESCAPERS = f"""\
import subprocess, sys
loner = subprocess.Popen(['sleep', '100'], start_new_session=True)
grand = subprocess.run(
    [{sys.executable!r}, '-c',
     'import os, subprocess; os.setsid(); '
     'd = subprocess.DEVNULL; print(subprocess.Popen(["sleep", "100"], stdout=d, stderr=d).pid)'],
    capture_output=True, text=True, check=True,
).stdout
print(loner.pid, grand.strip())
"""


def _start_escapers(client: RunnerClient) -> list[int]:
    r = client.exec(ESCAPERS)
    assert r.status == "ok", (r.done, client.diag())
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    return pids


def test_escaped_children_are_killed_at_shutdown() -> None:
    with RunnerClient() as client:
        pids = _start_escapers(client)
        from execpy_trio.protocol import Shutdown

        client.send(Shutdown())
        assert client.wait(10) == EXIT_OK
    try:
        for pid in pids:
            assert wait_gone(pid, 5), f"process {pid} outlived the runner"
    finally:
        _kill(pids)


def test_escaped_children_are_killed_when_the_channel_closes() -> None:
    client = RunnerClient()
    try:
        pids = _start_escapers(client)
        client.close_channel()
        assert client.wait(10) == EXIT_OK
        for pid in pids:
            assert wait_gone(pid, 5), f"process {pid} outlived the runner"
    finally:
        client.close()
        _kill(pids)


def _kill(pids: list[int]) -> None:
    import os
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# -- user code cannot break the runner ------------------------------------------------------

DAMAGE = {
    "del-stdout": "import sys\ndel sys.stdout",
    "del-stderr": "import sys\ndel sys.stderr",
    "del-stdin": "import sys\ndel sys.stdin",
    "none-streams": "import sys\nsys.stdout = sys.stderr = sys.stdin = None",
    "os-write": "import os\nos.write = None",
    "os-read": "import os\nos.read = None",
    "os-writev": "import os\nos.writev = None",
    "os-many": "import os\nfor n in ('dup2', 'kill', 'listdir', 'getpid', 'close', 'open'):"
    " setattr(os, n, None)",
    "print": "import builtins\nbuiltins.print = None",
    "sys-modules-os": "import sys\ndel sys.modules['os']",
    "sys-exit": "import sys\nsys.exit = None",
    "signal-signal": "import signal\nsignal.signal = None",
    "select-poll": "import select\nselect.poll = None",
    "time": "import time\ntime.monotonic = time.sleep = None",
}


@pytest.mark.parametrize("damage", list(DAMAGE.values()), ids=list(DAMAGE))
def test_user_code_cannot_break_the_runner(damage: str) -> None:
    with RunnerClient() as client:
        r = client.exec(damage)
        assert r.done is not None, client.diag()
        # The next ops get ordinary results, output included, and errors are reported.
        r = client.exec("import sys\nsys.stdout.write('out\\n')\nsys.stderr.write('err\\n')")
        assert r.status == "ok", (r.done, client.diag())
        assert r.stdout == b"out\n" and r.stderr == b"err\n"
        r = client.exec("raise ValueError('boom')")
        assert r.status == "error" and r.error["type"] == "ValueError", r.done
        assert "boom" in r.error["traceback"]
        r = client.exec("x = input()", stdin="hello\n")
        assert r.status == "ok", r.done
        assert client.eval("x").value == "hello"
        assert client.eval("40 + 2").value == 42
        client.close_channel()
        assert client.wait(10) == EXIT_OK, client.diag()
        assert "internal error" not in client.diag()


# -- non-blocking stdio ---------------------------------------------------------------------


def test_stdio_runner_with_nonblocking_descriptors() -> None:
    # Output far over a pipe buffer makes the runner's writes hit EAGAIN while we do not
    # read; a burst of requests makes its reads hit EAGAIN between frames.
    with RunnerClient(stdio=True, nonblocking=True) as client:
        op = client.start_exec("import sys\nfor i in range(64): sys.stdout.write('x' * 65536)")
        time.sleep(0.3)  # let the pipe fill: the runner's writes must wait, not fail
        r = client.collect(op, timeout=30)
        assert r.status == "ok", (r.done, client.diag())
        assert r.stdout == b"x" * 65536 * 64
        time.sleep(0.2)  # the runner now waits for a request on an empty O_NONBLOCK pipe
        for i in range(20):
            assert client.eval(f"{i} * 2").value == i * 2
        r = client.exec("import time\ntime.sleep(0.3)\nprint('slept')")  # the I/O thread reads
        assert r.stdout == b"slept\n", client.diag()
        client.close_channel()
        assert client.wait(10) == EXIT_OK, client.diag()


# -- deep tracebacks ------------------------------------------------------------------------

DEEP_RECURSION = """\
import sys
sys.setrecursionlimit(300000)
def f(n):
    return f(n + 1)
f(0)
"""


def test_deep_recursion_error_is_reported_as_cheaply_as_python_does() -> None:
    with RunnerClient() as client:
        start = time.monotonic()
        r = client.exec(DEEP_RECURSION, timeout=60)
        elapsed = time.monotonic() - start
        assert r.status == "error" and r.error["type"] == "RecursionError", r.done
        tb = r.error["traceback"]
        assert "[Previous line repeated" in tb and "more times]" in tb
        assert tb.rstrip().endswith("RecursionError: maximum recursion depth exceeded")
        # Plain python3 takes about 0.6 s for this; formatting every frame took 7-9 s.
        assert elapsed < 4, f"took {elapsed:.1f} s"
        assert client.eval("1").value == 1


def test_traceback_limit_keeps_the_innermost_frames_like_python() -> None:
    with RunnerClient() as client:
        r = client.exec(
            "import sys\nsys.setrecursionlimit(10000)\n"
            "def g(n):\n    if n == 0:\n        raise KeyError('deep')\n    g(n - 1)\n"
            "def f(n):\n    f(n + 1) if n < 2500 else g(2500)\nf(0)"
        )
        tb = r.error["traceback"]
        assert "raise KeyError('deep')" in tb
        assert tb.count('File "<exec-1>"') < 20  # collapsed, not 5000 frames


# -- bounded memory against a peer that floods and does not read --------------------------

PRINT_FOREVER = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
FLOOD_BYTES = 32 * 1024 * 1024


def _flood(make_frame: Any, wfd: int, limit: int) -> tuple[int, int, bytes]:
    """Write frames ``make_frame(i)`` without blocking until the runner stops taking them.

    Returns how many frames were started, how many bytes went out and the unsent rest of
    the last frame.
    """
    sent_bytes = frames = 0
    pending = memoryview(b"")
    os.set_blocking(wfd, False)
    try:
        while sent_bytes < limit:
            if not pending:
                pending = memoryview(make_frame(frames))
                frames += 1
            if not select.select([], [wfd], [], 1.0)[1]:
                break  # the runner stopped reading for a whole second: backpressure
            try:
                n = os.write(wfd, pending)
            except BlockingIOError:
                continue
            pending = pending[n:]
            sent_bytes += n
    finally:
        os.set_blocking(wfd, True)
    return frames, sent_bytes, bytes(pending)


def _exchange(client: RunnerClient, to_send: bytes, until: Any) -> tuple[dict[str, Any], int]:
    """Write ``to_send`` while reading every frame, until ``until(value)``; count replies."""
    decoder = FrameDecoder(client.max_frame)
    replies = 0
    out = memoryview(to_send)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([client.rfd], [client.wfd] if out else [], [], 1.0)
        if writable:
            out = out[os.write(client.wfd, out[:65536]) :]
        if readable:
            data = os.read(client.rfd, 1 << 20)
            assert data, f"the runner closed the channel:\n{client.diag()}"
            decoder.feed(data)
            while (value := decoder.next_value()) is not NEED_DATA:
                if until(value):
                    assert not out, "the runner answered before reading everything"
                    return value, replies
                kind = value["kind"]
                if kind == "pong" or (kind == "error" and value["code"] == "busy"):
                    replies += 1
                else:
                    assert kind == "output", value
    raise AssertionError(f"no end to the exchange after the flood:\n{client.diag()}")


def _raw(**fields: Any) -> bytes:
    return frame(pack_body(fields))


@pytest.mark.parametrize("kind", ["ping", "busy-exec"])
def test_a_flooding_peer_that_does_not_read_gets_backpressure_not_memory_growth(
    kind: str,
) -> None:
    import psutil

    with RunnerClient() as client:
        op = client.start_exec(PRINT_FOREVER)
        time.sleep(0.5)  # the output fills the channel; the I/O thread reads for the op
        proc = psutil.Process(client.pid)
        before = proc.memory_info().rss
        # Built by hand: our own state machine would refuse ops sent while one runs.
        if kind == "ping":
            ping = _raw(kind="ping", token=7)
            sent, sent_bytes, rest = _flood(lambda i: ping, client.wfd, FLOOD_BYTES)
        else:
            sent, sent_bytes, rest = _flood(
                lambda i: _raw(kind="exec", op=op + 1 + i, code="1"), client.wfd, FLOOD_BYTES
            )
        grown = proc.memory_info().rss - before
        assert sent_bytes < FLOOD_BYTES, "the runner read the whole flood"
        assert grown < 16 * 1024 * 1024, f"the runner grew by {grown / 2**20:.0f} MiB"
        # Nothing was lost: once we read again, every frame sent gets its reply, the
        # cancel behind them all is seen, and the runner goes on working.
        done, replies = _exchange(
            client, rest + _raw(kind="cancel", op=op), lambda v: v["kind"] == "done"
        )
        assert done["op"] == op and done["status"] == "cancelled", (done, client.diag())
        assert replies == sent
        last = op + 1 + (sent if kind == "busy-exec" else 0)
        done, _ = _exchange(
            client, _raw(kind="eval", op=last, expr="6 * 7"), lambda v: v["kind"] == "done"
        )
        assert done["op"] == last and done["value"] == 42, done


# -- decode amplification -------------------------------------------------------------------


@pytest.mark.parametrize("while_busy", [False, True], ids=["idle", "busy"])
def test_a_frame_that_expands_past_the_object_budget_is_a_bad_frame(while_busy: bool) -> None:
    import struct

    from execpy_trio.runner import EXIT_PROTOCOL

    n = 16 * 1024 * 1024 - 64
    with RunnerClient() as client:
        op = 1
        if while_busy:
            op = client.start_exec("import time\ntime.sleep(100)") + 1
            time.sleep(0.3)  # the I/O thread is the reader now
        head = pack_body({"kind": "exec", "op": op, "code": "1", "variables": {"v": None}})
        # The same message with the nil replaced by 16 million empty lists.
        body = head[:-1] + b"\xdd" + struct.pack(">I", n) + b"\x90" * n
        client.send_raw(frame(body))
        fatal = client.recv_raw_values(timeout=30)[-1]
        assert fatal["kind"] == "error" and fatal["fatal"] and fatal["code"] == "bad-frame"
        assert "expands to more than 1048576 objects" in fatal["message"], fatal
        assert client.wait(10) == EXIT_PROTOCOL


def test_nesting_512_levels_is_accepted_and_over_1024_is_a_bad_frame() -> None:
    from execpy_trio.protocol import Pong
    from execpy_trio.runner import EXIT_PROTOCOL

    head = b"\x83\xa4kind\xa4ping\xa5token\x07\xa5extra"
    with RunnerClient() as client:
        client.send_raw(frame(head + b"\x91" * 511 + b"\xc0"))  # 512 levels with the map
        assert client.recv() == Pong(7)
        client.send_raw(frame(head + b"\x91" * 1024 + b"\xc0"))  # 1025
        fatal = client.recv_raw_values()[-1]
        assert fatal["code"] == "bad-frame" and "deeper than 1024 levels" in fatal["message"]
        assert client.wait() == EXIT_PROTOCOL


def test_os_exit_in_user_code_still_ends_what_it_started() -> None:
    client = RunnerClient()
    pids: list[int] = []
    try:
        pids = _start_escapers(client)
        client.start_exec("import os; os._exit(4)")
        assert client.wait(10) == 4
        for pid in pids:
            assert wait_gone(pid, 5), f"process {pid} outlived the runner's os._exit"
    finally:
        client.close()
        _kill(pids)


def test_a_users_sigint_handler_lasts_only_for_its_op() -> None:
    with RunnerClient() as client:
        r = client.exec("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n")
        assert r.status == "ok"
        # The next op can still be cancelled: the runner's own handler is back.
        op = client.start_exec("import time\ntime.sleep(30)")
        time.sleep(0.3)
        from execpy_trio.protocol import Cancel

        client.send(Cancel(op))
        r = client.collect(op, timeout=10)
        assert r.status == "cancelled", (r.done, client.diag())


def test_os_exit_with_a_status_out_of_range_raises_like_python() -> None:
    with RunnerClient() as client:
        r = client.exec("import os\nos._exit(2**31)\n")
        assert (r.status, r.error["type"]) == ("error", "OverflowError"), r.done
        assert "does not fit in a C int" in r.error["message"]
        # Nothing was drained or killed on the way: the runner goes on, and exits cleanly.
        assert client.exec("print('still here')").stdout == b"still here\n"
        from execpy_trio.protocol import Shutdown

        client.send(Shutdown())
        assert client.wait(10) == EXIT_OK


SIGINT_HANDLER_THEN_BLOCKED_OUTPUT = r"""
import signal, os, time
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    time.sleep(30)
except KeyboardInterrupt:
    pass
os.set_blocking(1, False)
while True:
    try:
        os.write(1, b"y" * 4096)
    except BlockingIOError:
        break
    except KeyboardInterrupt:
        pass
"""


def test_a_users_sigint_handler_never_runs_in_the_runners_own_code() -> None:
    from execpy_trio.protocol import Cancel

    with RunnerClient() as client:
        # The code takes the cancel with its own handler, then fills the output pipe and
        # ends while the client does not read: the runner waits in its own code to send
        # the output, where a redelivered interrupt must not reach the user's handler.
        op = client.start_exec(SIGINT_HANDLER_THEN_BLOCKED_OUTPUT)
        time.sleep(0.5)
        client.send(Cancel(op))
        time.sleep(1.0)
        r = client.collect(op, timeout=10)
        assert r.status == "ok", (r.done, client.diag())
        assert client.proc.poll() is None
        assert client.exec("1").value == "1"
