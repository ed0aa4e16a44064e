"""Runner lifetime: client gone, parent gone, garbage on the channel, diagnostics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from execpy_trio.protocol import (
    CLIENT,
    PROTOCOL_VERSION,
    Connection,
    Hello,
    Output,
    Ping,
    Pong,
    Welcome,
)
from execpy_trio.runner import EXIT_CHANNEL_LOST, EXIT_OK, EXIT_PROTOCOL
from runner_client import RUNNER_CMD, RunnerClient, process_alive, wait_for, wait_gone


def _child_pid_from(client: RunnerClient, code: str) -> tuple[int, int]:
    op = client.start_exec(code)
    out = client.recv(10)
    assert isinstance(out, Output), out
    return op, int(out.data)


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:  # our child: it stays until we reap it
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_channel_closed_mid_op_kills_runner_and_children() -> None:
    client = RunnerClient()
    try:
        _, child = _child_pid_from(
            client,
            "import subprocess, time\np = subprocess.Popen(['sleep', '100'])\n"
            "print(p.pid, flush=True)\ntime.sleep(100)",
        )
        assert process_alive(child)
        client.close_channel()
        # The runner exits at once (interrupting the op, or after its 1 s grace): the
        # bounds are hang detectors, not speed checks.
        assert client.wait(10) == EXIT_CHANNEL_LOST
        assert wait_gone(child, 10)
        assert "channel was lost while op 1 ran" in client.diag()
    finally:
        client.close()


def test_channel_closed_mid_op_in_c_code_that_ignores_signals() -> None:
    # The op cannot be interrupted (SIGINT ignored): the runner still exits, after a grace.
    client = RunnerClient()
    try:
        client.start_exec(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "print('go', flush=True)\ntime.sleep(100)"
        )
        assert isinstance(client.recv(10), Output)
        cpu_before = _cpu_seconds(client.pid)
        client.close_channel()
        # Waiting out the grace (all of it: a zombie still reports its CPU time) must not
        # busy-poll the closed channel.
        wait_for(lambda: _is_zombie(client.pid), 10, "the runner to exit after its grace")
        assert _cpu_seconds(client.pid) - cpu_before < 0.25
        assert client.wait(10) == EXIT_CHANNEL_LOST
    finally:
        client.close()


def test_channel_closed_while_idle_is_a_clean_exit_and_kills_background_children() -> None:
    client = RunnerClient()
    try:
        _, child = _child_pid_from(
            client, "import subprocess\np = subprocess.Popen(['sleep', '100'])\nprint(p.pid)"
        )
        client.collect(1)
        client.close_channel()
        assert client.wait(10) == EXIT_OK  # hang detectors, not speed checks
        assert wait_gone(child, 10)
    finally:
        client.close()


INTERMEDIATE = """
import subprocess, sys
fd = int(sys.argv[1])
p = subprocess.Popen(sys.argv[2:] + ["--fd", str(fd)], pass_fds=[fd], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(p.pid, flush=True)
sys.stdin.read()
"""


def test_runner_dies_with_its_parent() -> None:
    ours, theirs = socket.socketpair()
    try:
        middle = subprocess.Popen(
            [sys.executable, "-c", INTERMEDIATE, str(theirs.fileno()), *RUNNER_CMD],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        theirs.close()
        try:
            assert middle.stdout is not None
            runner_pid = int(middle.stdout.readline())
            # Handshake, so the runner is fully up; we keep our end of the channel open.
            conn = Connection(CLIENT)
            ours.sendall(conn.send(Hello(PROTOCOL_VERSION, "t", "0", conn.max_frame)))
            ours.settimeout(10)
            conn.receive_data(ours.recv(65536))
            assert isinstance(conn.next_event(), Welcome)
            middle.kill()
            middle.wait(5)
            # A hang detector: the runner watches a pidfd (or polls getppid twice a second).
            assert wait_gone(runner_pid, 10), "the runner outlived its parent"
        finally:
            if middle.poll() is None:
                middle.kill()
                middle.wait(5)
            for f in (middle.stdin, middle.stdout):
                if f is not None:
                    f.close()
    finally:
        ours.close()


@pytest.mark.parametrize(
    "garbage, code",
    [
        (b"\x00\x00\x00\x05hello", "bad-frame"),
        (b"\x00\x00\x00\x01\x07", "bad-message"),  # a frame holding an int, not a map
        (b"\xff\xff\xff\xff", "frame-too-large"),
    ],
    ids=["not-msgpack", "not-a-map", "too-large"],
)
def test_garbage_on_the_channel(garbage: bytes, code: str) -> None:
    client = RunnerClient()
    try:
        client.exec("x = 1")
        client.send_raw(garbage)
        values = client.recv_raw_values()
        assert len(values) == 1 and values[0]["kind"] == "error"
        assert values[0]["fatal"] is True and values[0]["code"] == code
        assert client.wait() == EXIT_PROTOCOL
        diag = client.diag()
        assert f"protocol error ({code}) while in state IDLE" in diag
        assert repr(garbage[:20])[2:-1] in diag
    finally:
        client.close()


def test_garbage_instead_of_hello() -> None:
    client = RunnerClient(handshake=False)
    try:
        client.send_raw(b"GET / HTTP/1.1\r\n\r\n")
        values = client.recv_raw_values()
        assert values and values[-1]["kind"] == "error" and values[-1]["fatal"] is True
        assert client.wait() == EXIT_PROTOCOL
        assert "while in state AWAIT_HELLO" in client.diag()
    finally:
        client.close()


def test_garbage_while_an_op_runs() -> None:
    client = RunnerClient()
    try:
        client.start_exec("print('go', flush=True)\nimport time\ntime.sleep(100)")
        assert isinstance(client.recv(10), Output)
        # Only the I/O thread answers a ping while an op runs: once the pong is here, it
        # is the one reading.
        client.send(Ping(1))
        assert client.recv(10) == Pong(1)
        client.send_raw(b"\x00\x00\x00\x02\x91\x01")
        values = client.recv_raw_values()
        assert values[-1]["kind"] == "error" and values[-1]["fatal"] is True
        assert client.wait() == EXIT_PROTOCOL
        assert "while in state BUSY" in client.diag()
    finally:
        client.close()


def test_runner_diagnostics_are_separate_from_user_stderr() -> None:
    client = RunnerClient(args=("--hello-timeout", "5"))
    try:
        r = client.exec(
            "import os, sys\nos.write(2, b'user err\\n')\nprint('more', file=sys.stderr)"
        )
        assert r.stderr == b"user err\nmore\n"
        assert "user err" not in client.diag()
    finally:
        client.close()


def _sigint_pending(pid: int) -> bool:
    bit = 1 << (signal.SIGINT - 1)
    with open(f"/proc/{pid}/status") as f:
        masks = [line.split()[1] for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(int(mask, 16) & bit for mask in masks)


def test_terminal_sigint_is_ignored_when_idle_and_private_fds_are_not_inherited() -> None:
    client = RunnerClient()
    try:
        os.kill(client.pid, signal.SIGINT)
        # Once the kernel has delivered it (no longer pending), the runner's handler runs
        # in its main thread before the next request is handled: while it is idle.
        wait_for(lambda: not _sigint_pending(client.pid), 10, "the SIGINT to be delivered")
        r = client.exec(
            "import os, subprocess\n"
            "subprocess.run(['sh', '-c', 'ls /proc/self/fd'], capture_output=True).stdout.split()"
        )
        # A child sees fds 0, 1, 2 and its own ls fd only: nothing of the runner's.
        assert r.status == "ok"
        assert sorted(eval(r.value)) == sorted([b"0", b"1", b"2", b"3"])
        assert client.exec("os.getpgrp() == os.getpid()").value == "True"
    finally:
        client.close()
