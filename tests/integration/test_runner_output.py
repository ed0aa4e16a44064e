"""Runner output capture: fd-level, ordered, streamed, bounded, robust to fd games."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from execpy_trio.protocol import Done, Output
from execpy_trio.runner._capture import MAX_CHUNK
from runner_client import RunnerClient, wait_for, wait_for_file_code


def test_interleaved_print_os_write_and_children_keep_order(client: RunnerClient) -> None:
    code = """
import os, subprocess, sys
for i in range(20):
    print(f"print {i}")
    os.write(1, f"write {i}\\n".encode())
    subprocess.run(["echo", f"child {i}"])
    sys.stdout.write(f"sys {i}\\n")
    print(f"err {i}", file=sys.stderr)
    subprocess.run(["sh", "-c", f"echo childerr {i} >&2"])
"""
    r = client.exec(code, timeout=30)
    assert r.status == "ok", r.done
    expected_out = "".join(f"print {i}\nwrite {i}\nchild {i}\nsys {i}\n" for i in range(20))
    expected_err = "".join(f"err {i}\nchilderr {i}\n" for i in range(20))
    assert r.stdout.decode() == expected_out
    assert r.stderr.decode() == expected_err


def test_partial_line_is_flushed_before_done(client: RunnerClient) -> None:
    r = client.exec("import sys\nprint('no newline', end='')\nsys.stderr.write('e')")
    assert (r.stdout, r.stderr) == (b"no newline", b"e")


def test_output_streams_before_the_op_ends(client: RunnerClient, tmp_path: Path) -> None:
    # The code cannot end before the test has seen 'early': it waits for a file the test
    # creates only then (had the runner held the output back, the code would give up
    # waiting after 30 s and print 'timed out').
    go = tmp_path / "go"
    op = client.start_exec(
        f"print('early')\n{wait_for_file_code(go)}print('late' if _signalled else 'timed out')"
    )
    first = client.recv(60)
    assert isinstance(first, Output) and first.data == b"early\n"
    go.touch()
    rest = client.collect(op)
    assert rest.stdout == b"late\n" and rest.status == "ok"


def test_binary_and_utf8_output(client: RunnerClient) -> None:
    r = client.exec("import os\nos.write(1, bytes(range(256)))\nprint('h\u00e9llo \u2603')")
    assert r.stdout == bytes(range(256)) + "h\u00e9llo \u2603\n".encode()


@pytest.mark.parametrize(
    ("max_frame", "largest"), [(64 * 1024, 64 * 1024 - 64), (1 << 24, MAX_CHUNK)]
)
def test_chunks_are_bounded_by_max_chunk_and_the_peer_limit(max_frame: int, largest: int) -> None:
    c = RunnerClient(max_frame=max_frame)
    try:
        r = c.exec("import os\nos.write(1, b'x' * 4_000_000)", timeout=30)
        outputs = [e for e in r.events if isinstance(e, Output)]
        assert sum(len(e.data) for e in outputs) == 4_000_000
        biggest = max(len(e.data) for e in outputs)
        assert biggest <= largest
        if max_frame > MAX_CHUNK:
            assert biggest > 64 * 1024  # bulk output in chunks as large as allowed
    finally:
        c.close()


def test_child_holding_the_pipe_does_not_stall_done(client: RunnerClient) -> None:
    # A background child keeps fd 1 open and keeps writing after the code finished.
    # 'started' goes first: printed after the Popen, it could follow the child's first tick.
    code = (
        "import subprocess\n"
        "print('started', flush=True)\n"
        "p = subprocess.Popen(['sh', '-c', 'while true; do echo tick; sleep 0.01; done'])\n"
    )
    # Stalled, the done would never come (the child writes forever): the timeout is a
    # hang detector, not a speed check.
    r = client.exec(code, timeout=30)
    assert r.status == "ok" and r.stdout.startswith(b"started\n")
    r = client.exec("p.kill(); p.wait()")
    assert r.status == "ok"


@pytest.mark.parametrize("fd", [0, 1, 2])
def test_user_code_closing_fds_leaves_the_protocol_alone(client: RunnerClient, fd: int) -> None:
    r = client.exec(f"import os\nos.close({fd})\n'closed'")
    assert r.status == "ok" and r.value == "'closed'"
    # Later ops get their fds back: output is captured again, stdin is still EOF.
    r = client.exec("import os, sys\nprint('back')\nos.write(2, b'err')\nos.read(0, 10)")
    assert (r.status, r.stdout, r.stderr, r.value) == ("ok", b"back\n", b"err", "b''")


def test_closing_sys_stdout_is_repaired_next_op(client: RunnerClient) -> None:
    r = client.exec("import sys\nsys.stdout.close()")
    assert r.status == "ok"
    assert client.exec("print('again')").stdout == b"again\n"


def test_writing_to_fds_1_and_2_cannot_corrupt_the_channel(client: RunnerClient) -> None:
    fake_frame = b"\x00\x00\x00\x05\x81\xa4kind"
    r = client.exec(f"import os\nos.write(1, {fake_frame!r})\nos.write(2, {fake_frame!r})")
    assert r.stdout == fake_frame and r.stderr == fake_frame
    assert client.exec("1").value == "1"


def test_output_written_while_idle_goes_with_the_next_op(
    client: RunnerClient, tmp_path: Path
) -> None:
    # A thread prints once the first op is done (the test says when, with a file) and
    # says so with another file; only then does the next op start.
    go, printed = tmp_path / "go", tmp_path / "printed"
    client.exec(
        "import threading\ndef later():\n"
        f"{wait_for_file_code(go, indent='    ')}"
        "    print('from the thread', flush=True)\n"
        f"    open({str(printed)!r}, 'w').close()\n"
        "threading.Thread(target=later).start()"
    )
    go.touch()
    wait_for(printed.exists, 30, "the thread to print while no op runs")
    r = client.exec("'x'")
    assert r.stdout == b"from the thread\n"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _all_threads_asleep(pid: int) -> bool:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue  # a thread that just ended
    return bool(states) and all(state in "SD" for state in states)


def _wait_stalled(pid: int, samples: int = 5, timeout: float = 30) -> None:
    """Until every thread of ``pid`` sleeps on ``samples`` polls in a row (10 ms apart).

    A runner that buffered the output instead of blocking would keep a thread running
    (reading the pipe, growing) until it held all of it: then the RSS check fails.
    """
    in_a_row = 0

    def stalled() -> bool:
        nonlocal in_a_row
        in_a_row = in_a_row + 1 if _all_threads_asleep(pid) else 0
        return in_a_row >= samples

    wait_for(stalled, timeout, f"runner {pid} to stall on its full channel", interval=0.01)


def test_200_mb_of_output_with_a_slow_reader_keeps_memory_bounded(client: RunnerClient) -> None:
    total = 200 * 1024 * 1024
    op = client.start_exec(
        f"import os\nb = b'y' * 65536\nfor _ in range({total // 65536}):\n    os.write(1, b)"
    )
    # The reader is slow: the runner must block, not buffer. Wait until it is stalled
    # (every thread asleep, on several samples in a row), then see what it holds.
    _wait_stalled(client.pid)
    rss_stalled = _rss_kib(client.pid)
    ours_before = _rss_kib(os.getpid())
    received = 0
    samples = []
    next_sample = 16 * 1024 * 1024
    deadline = time.monotonic() + 60
    while True:
        ev = client.recv(deadline - time.monotonic())
        if isinstance(ev, Output):
            received += len(ev.data)
            if received >= next_sample:  # every 16 MiB, whatever the chunks' size
                next_sample += 16 * 1024 * 1024
                samples.append(_rss_kib(client.pid))
                time.sleep(0.05)  # stay slow now and then
            continue
        assert isinstance(ev, Done) and ev.op == op and ev.status == "ok", ev
        break
    assert received == total
    ours_after = _rss_kib(os.getpid())
    # The runner holds at most a pipe and a chunk or two, never the output.
    assert rss_stalled < 60 * 1024, rss_stalled
    assert max(samples) < 60 * 1024, samples
    assert ours_after - ours_before < 50 * 1024


@pytest.mark.parametrize(
    "route",
    [
        "os.write(1, b'<%d>')",
        "sys.stdout.write('<%d>')",  # a partial line: only the end-of-op flush sends it
        "sys.stdout.buffer.write(b'<%d>')",
        "sys.stderr.write('<%d>')",
        "os.write(2, b'<%d>')",
        "os.write(1, b'<%d>' + b'.' * 300_000)",  # more than a default pipe holds
        "subprocess.run(['printf', '<%d>'])",
    ],
)
def test_output_written_last_thing_precedes_done(client: RunnerClient, route: str) -> None:
    # Each op writes as its very last act; every byte must arrive before its done, never
    # after it (collect() would see it as the next op's event and fail), and none is lost.
    client.exec("import os, subprocess, sys")
    for i in range(40 if "subprocess" not in route else 10):
        r = client.exec(route % i)
        assert r.status == "ok", r.done
        expected = b"<%d>" % i + (b"." * 300_000 if "300_000" in route else b"")
        assert r.stdout + r.stderr == expected, (r.stdout + r.stderr)[:50]
        assert isinstance(r.events[-1], Done) and len(r.events) >= 2
