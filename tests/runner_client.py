"""A small synchronous client that drives a real runner process, for tests and benchmarks.

It spawns ``python -m execpy_trio.runner`` with one end of a socketpair as ``--fd N`` (or
in ``--stdio`` mode), speaks the protocol through :class:`execpy_trio.protocol.Connection`
and bounds every wait: each receive takes a timeout and raises ``TimeoutError`` with the
runner's diagnostic output when it passes. The runner's stderr (its diagnostic stream)
goes to a temporary file, so a chatty runner can never block on it.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from execpy_trio.protocol import (
    CLIENT,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    ConnectionClosed,
    Done,
    Error,
    Eval,
    Exec,
    FrameDecoder,
    Hello,
    InputReply,
    InputRequest,
    Message,
    Output,
    Welcome,
    message_from_wire,
)

RUNNER_CMD = [sys.executable, "-m", "execpy_trio.runner"]


class Result:
    """Everything one op produced."""

    def __init__(self, op: int) -> None:
        self.op = op
        self.events: list[Message] = []
        self.done: Done | None = None
        self.rejected: Error | None = None

    @property
    def stdout(self) -> bytes:
        return b"".join(e.data for e in self.events if type(e) is Output and e.stream == "stdout")

    @property
    def stderr(self) -> bytes:
        return b"".join(e.data for e in self.events if type(e) is Output and e.stream == "stderr")

    @property
    def status(self) -> str:
        assert self.done is not None
        return self.done.status

    @property
    def value(self) -> Any:
        assert self.done is not None
        return self.done.value

    @property
    def error(self) -> dict[str, str]:
        assert self.done is not None and self.done.error is not None, self.done
        return self.done.error


class RunnerClient:
    def __init__(
        self,
        *,
        stdio: bool = False,
        handshake: bool = True,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        max_frame: int = DEFAULT_MAX_FRAME,
        cmd: list[str] | None = None,
        nonblocking: bool = False,
    ) -> None:
        self.conn = Connection(CLIENT, max_frame=max_frame)
        self.max_frame = max_frame
        self.diag_file = tempfile.TemporaryFile()
        self.next_op = 1
        self.sock: socket.socket | None = None
        #: Our ends of the stdio pipes when made by hand (``nonblocking``).
        self._own_fds: list[int] = []
        full_env = dict(os.environ)
        full_env.update(env or {})
        base = cmd if cmd is not None else RUNNER_CMD
        try:
            if stdio and nonblocking:
                # The runner's ends are O_NONBLOCK: the flag lives in the open file
                # description, which the runner's fds 0 and 1 share.
                in_r, in_w = os.pipe()
                out_r, out_w = os.pipe()
                os.set_blocking(in_r, False)
                os.set_blocking(out_w, False)
                try:
                    self.proc = subprocess.Popen(
                        [*base, "--stdio", *args],
                        stdin=in_r,
                        stdout=out_w,
                        stderr=self.diag_file,
                        start_new_session=True,
                        env=full_env,
                    )
                finally:
                    os.close(in_r)
                    os.close(out_w)
                self._own_fds = [in_w, out_r]
                self.rfd, self.wfd = out_r, in_w
            elif stdio:
                self.proc = subprocess.Popen(
                    [*base, "--stdio", *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.diag_file,
                    start_new_session=True,
                    env=full_env,
                )
                assert self.proc.stdin is not None and self.proc.stdout is not None
                self.rfd = self.proc.stdout.fileno()
                self.wfd = self.proc.stdin.fileno()
            else:
                ours, theirs = socket.socketpair()
                try:
                    self.proc = subprocess.Popen(
                        [*base, "--fd", str(theirs.fileno()), *args],
                        pass_fds=[theirs.fileno()],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=self.diag_file,
                        start_new_session=True,
                        env=full_env,
                    )
                finally:
                    theirs.close()
                self.sock = ours
                self.rfd = self.wfd = ours.fileno()
        except BaseException:
            self.diag_file.close()
            raise
        self.pid = self.proc.pid
        self.welcome: Welcome | None = None
        if handshake:
            try:
                self.handshake()
            except BaseException:
                self.close()
                raise

    # -- plumbing -------------------------------------------------------------------------

    def diag(self) -> str:
        """The runner's diagnostic stream so far."""
        self.diag_file.seek(0)
        return self.diag_file.read().decode("utf-8", "replace")

    def send(self, msg: Message) -> None:
        self.send_raw(self.conn.send(msg))

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    def _read(self, timeout: float) -> bytes | None:
        if not select.select([self.rfd], [], [], max(timeout, 0))[0]:
            return None
        try:
            return os.read(self.rfd, 1 << 20)
        except ConnectionResetError:
            return b""

    def recv(self, timeout: float = 5.0) -> Message | ConnectionClosed:
        """The next message (or ConnectionClosed); TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev  # type: ignore[no-any-return]
            data = self._read(deadline - time.monotonic())
            if data is None:
                raise TimeoutError(
                    f"no frame from the runner within {timeout} s (connection state "
                    f"{self.conn.state}); runner diagnostics:\n{self.diag()}"
                )
            self.conn.receive_data(data)

    def recv_raw_values(self, timeout: float = 5.0) -> list[Any]:
        """Every frame until the runner closes the channel, decoded without a state machine."""
        decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        values = []
        deadline = time.monotonic() + timeout
        while True:
            data = self._read(deadline - time.monotonic())
            if data is None:
                raise TimeoutError(f"the runner did not close the channel:\n{self.diag()}")
            if not data:
                return values
            decoder.feed(data)
            while (v := decoder.next_value()) is not NEED_DATA:
                values.append(v)

    def handshake(self, timeout: float = 10.0) -> Welcome:
        self.send(Hello(PROTOCOL_VERSION, "runner_client", "0", self.max_frame, []))
        ev = self.recv(timeout)
        assert type(ev) is Welcome, (ev, self.diag())
        self.welcome = ev
        return ev

    # -- ops ------------------------------------------------------------------------------

    def start_exec(self, code: str, **fields: Any) -> int:
        op = self.next_op
        self.next_op += 1
        self.send(Exec(op, code, **fields))
        return op

    def start_eval(self, expr: str, **fields: Any) -> int:
        op = self.next_op
        self.next_op += 1
        self.send(Eval(op, expr, **fields))
        return op

    def collect(
        self,
        op: int,
        timeout: float = 10.0,
        on_input: Any = None,
        on_event: Any = None,
    ) -> Result:
        """Receive op ``op``'s events until its done (or rejection).

        ``on_input(request) -> str | None`` answers input requests (None = end of input);
        without it an input request fails the test. ``on_event(event)`` sees each event.
        """
        result = Result(op)
        deadline = time.monotonic() + timeout
        while True:
            ev = self.recv(deadline - time.monotonic())
            if on_event is not None:
                on_event(ev)
            if type(ev) is ConnectionClosed:
                raise AssertionError(f"channel closed before op {op} ended:\n{self.diag()}")
            assert getattr(ev, "op", op) == op, (ev, op)
            result.events.append(ev)  # type: ignore[arg-type]
            if type(ev) is Done:
                result.done = ev
                return result
            if type(ev) is Error:
                assert not ev.fatal, (ev, self.diag())
                result.rejected = ev
                return result
            if type(ev) is InputRequest:
                assert on_input is not None, f"unexpected input request {ev!r}"
                self.send(InputReply(op, on_input(ev)))

    def exec(self, code: str, timeout: float = 10.0, on_input: Any = None, **fields: Any) -> Result:
        return self.collect(self.start_exec(code, **fields), timeout, on_input)

    def eval(self, expr: str, timeout: float = 10.0, **fields: Any) -> Result:
        return self.collect(self.start_eval(expr, **fields), timeout)

    # -- ending ---------------------------------------------------------------------------

    def wait(self, timeout: float = 5.0) -> int:
        """The runner's exit code; kills it and fails if it does not exit in time."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(
                f"runner {self.pid} did not exit within {timeout} s:\n{self.diag()}"
            ) from None

    def close_channel(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        elif self._own_fds:
            for fd in self._own_fds:
                os.close(fd)
            self._own_fds = []
        else:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None and not f.closed:
                    f.close()

    def close(self, timeout: float = 5.0) -> int | None:
        """Close the channel, reap the runner (killing it after ``timeout``), free all."""
        try:
            self.close_channel()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None
        finally:
            self.diag_file.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_file_code(path: object, timeout: float = 30, indent: str = "") -> str:
    """User code that waits until ``path`` exists (at most ``timeout`` s, then goes on).

    The test creates the file when it has seen what it waits for, so the code's progress
    is driven by events, not by guessed sleeps. Lines end with a newline; each is prefixed
    with ``indent``. Afterwards ``_signalled`` says whether the file came in time.
    """
    lines = [
        "import os as _os, time as _time",
        f"_deadline = _time.monotonic() + {timeout}",
        f"while not _os.path.exists({str(path)!r}) and _time.monotonic() < _deadline:",
        "    _time.sleep(0.002)",
        f"_signalled = _os.path.exists({str(path)!r})",
    ]
    return "".join(f"{indent}{line}\n" for line in lines)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.005) -> None:
    """Poll ``predicate()`` until it is true; AssertionError naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.01)
    return not process_alive(pid)


__all__ = [
    "RUNNER_CMD",
    "Result",
    "RunnerClient",
    "message_from_wire",
    "process_alive",
    "wait_for",
    "wait_for_file_code",
    "wait_gone",
]
