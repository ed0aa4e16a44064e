"""The local-process launcher: ``python -m execpy_trio.runner`` (or ``options.command``) as a
child process, over a private socketpair (``--fd N``) or its stdin/stdout (``stdio``).

The child is the leader of a new process group, so killing it kills what the user's code
started too (``killpg``; the group id stays reserved while any member lives, so this is
safe from pid reuse). Its stderr is the runner's diagnostic stream: the last lines are kept
for error messages.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, TextIO

import trio

from .._errors import RunnerStartError
from ._base import Launcher, RunnerHandle, resident_bytes, watched

if TYPE_CHECKING:
    from trio.abc import ReceiveStream, Stream

    from .._options import RunnerOptions

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    pass  # type: ignore[import-not-found,unused-ignore]

__all__ = ["DEFAULT_COMMAND", "LocalLauncher", "LocalProcessHandle", "runner_command"]

#: The default runner command (``--fd N`` or ``--stdio`` is added according to the mode).
DEFAULT_COMMAND: Final = (sys.executable, "-m", "execpy_trio.runner")
#: How many lines of the runner's own stderr are kept for error messages.
STDERR_TAIL_LINES: Final = 50
#: How many characters of one line of the runner's own stderr are kept (its end). A peer
#: may write without newlines: without a cap, memory and the re-joining of the unfinished
#: line would grow without bound.
STDERR_LINE_MAX: Final = 4096
#: After the process exits, how long to wait for the rest of its stderr.
STDERR_WAIT: Final = 0.5
#: After the polite wait, how long SIGTERM gets before SIGKILL.
TERMINATE_WAIT: Final = 1.0
#: After SIGKILL, how long to wait to reap the process (it cannot refuse; this only bounds
#: a kernel that is slow to tear it down).
REAP_WAIT: Final = 5.0
_TRANSIENT_ERRNOS: Final = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


def runner_command(options: RunnerOptions, fd: int | None) -> list[str]:
    """The argv to start: ``options.command`` (or the default) for fd ``fd`` (stdio: None)."""
    if options.command is None:
        base = list(DEFAULT_COMMAND)
        return [*base, "--stdio"] if fd is None else [*base, "--fd", str(fd)]
    command = list(options.command)
    if fd is None:
        return command
    if "{fd}" in command:
        return [str(fd) if a == "{fd}" else a for a in command]
    return [*command, "--fd", str(fd)]


def _environment(options: RunnerOptions) -> dict[str, str] | None:
    if options.inherit_env:
        return None if options.env is None else {**os.environ, **options.env}
    return dict(options.env or {})


class StderrTail:
    """The last lines of a byte stream, bounded in lines and in characters per line;
    optionally echoed as they come (``echo``: a text stream, e.g. ``sys.stderr``)."""

    def __init__(self, echo: TextIO | None = None) -> None:
        self._echo = echo
        self._lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        #: Set once the stream has ended (or failed).
        self.done = trio.Event()

    def feed(self, data: bytes | bytearray) -> None:
        decoded = self._decoder.decode(data)
        if self._echo is not None:
            with contextlib.suppress(OSError, ValueError):
                self._echo.write(decoded)
                self._echo.flush()
        text = self._partial + decoded
        *lines, partial = text.split("\n")
        self._lines.extend(x[-STDERR_LINE_MAX:] for x in lines[-STDERR_TAIL_LINES:])
        self._partial = partial[-STDERR_LINE_MAX:]

    def lines(self) -> tuple[str, ...]:
        lines = tuple(self._lines)
        if self._partial:
            lines = (*lines, self._partial)
        return lines[-STDERR_TAIL_LINES:]

    async def read_from(self, stream: ReceiveStream) -> None:
        """Read ``stream`` to its end (or failure), keeping the tail."""
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                    break
                if not data:
                    break
                self.feed(data)
        finally:
            self.done.set()


def _open_pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # pragma: no cover - Linux < 5.3, or not Linux
        return -1


def _wait_exit_unreaped(pid: int) -> None:  # pragma: no cover - the pidfd path is used here
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


class LocalProcessHandle(RunnerHandle):
    """A runner that is a child process of this one.

    Only :meth:`reap` (a background task) reaps the process. It waits for the exit
    *without* reaping, kills the process group then, while the unreaped leader still pins
    the group id (so the kill cannot reach an unrelated group that reused the id, and
    nothing the code started outlives the runner), and only then reaps. Nothing else may
    reap: ``trio.Process.returncode`` and ``Popen.send_signal`` poll (and so reap), so
    they are not used here.
    """

    def __init__(
        self,
        process: trio.Process,
        stream: Stream,
        argv: list[str],
        echo_stderr: TextIO | None = None,
    ) -> None:
        self.process = process
        self.stream = stream
        self.description = " ".join(argv)
        self.pid = process.pid
        self._tail = StderrTail(echo_stderr)
        if process.stderr is None:
            self._tail.done.set()
        self._pidfd = _open_pidfd(process.pid)
        #: Whether the runner is in a PID namespace of its own (a sandbox), below bwrap.
        self.namespaced = False
        self._local_pids: dict[int, int] = {}
        self._returncode: int | None = None
        self._reaping = False  # from here on the pid and group id are not ours to signal
        self._exited = trio.Event()  # exited, its group killed, reaped
        self._ended = trio.Event()  # and its last diagnostics read (bounded)
        self._closed = False

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def local_pid(self, reported: int) -> int:
        if not self.namespaced:
            return reported
        found = self._local_pids.get(reported)
        if found is None:
            # The process below bwrap whose innermost pid (NSpid's last field) it is.
            from ..runner._children import descendants

            for pid in descendants(self.process.pid):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                        for line in f:
                            if line.startswith("NSpid:") and int(line.split()[-1]) == reported:
                                found = pid
                                break
                if found is not None:
                    break
            if found is None:
                return reported  # gone already: nothing better to say
            self._local_pids[reported] = found
        return found

    def stderr_tail(self) -> tuple[str, ...]:
        return self._tail.lines()

    def resident_memory(self, pid: int) -> int | None:
        if self._reaping:
            return None  # exited: the pid may belong to another process now
        return resident_bytes(pid)

    async def wait(self) -> None:
        await self._ended.wait()

    async def reap(self) -> None:
        """The handle's watcher: see the class docstring. Run it in the launcher's nursery."""
        try:
            if self._pidfd >= 0:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:  # pragma: no cover - no pidfd: a thread waits without reaping
                await trio.to_thread.run_sync(
                    _wait_exit_unreaped, self.process.pid, abandon_on_cancel=True
                )
            self._kill_group()
            self._reaping = True
            self._returncode = await self.process.wait()
        finally:
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
            self._reaping = True
            self._exited.set()
        # The exit status is known; the last diagnostics may still be in the pipe.
        with trio.move_on_after(STDERR_WAIT):
            await self._tail.done.wait()
        self._ended.set()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _signal_leader(self, sig: int) -> None:
        if self._reaping:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:  # pragma: no cover - no pidfd: still unreaped, so the pid is still ours
                os.kill(self.process.pid, sig)

    def kill(self) -> None:
        if self._reaping:
            return  # it has exited: its group was killed then; the ids may be reused now
        self._kill_descendants()
        self._signal_leader(signal.SIGKILL)
        self._kill_group()  # the unreaped leader pins the group id

    def _kill_descendants(self) -> None:
        # What user code started in sessions of its own is out of the group's reach, and
        # once the runner is dead it is adopted by init and out of anyone's. So first
        # stop the runner (it starts nothing more), then kill its process tree while the
        # runner, as their subreaper, still collects the orphans of the processes killed:
        # a second look finds those. Bounded: a few passes over /proc.
        from ..runner._children import descendants

        self._signal_leader(signal.SIGSTOP)
        for _ in range(3):
            pids = descendants(self.process.pid)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def _exited_within(self, limit: float) -> bool:
        if limit > 0:
            with trio.move_on_after(limit):
                await self._exited.wait()
        return self._exited.is_set()

    async def close(self, *, wait: float) -> None:
        with trio.CancelScope(shield=True):
            if not self._closed:
                self._closed = True
                # Closing the channel alone makes a healthy runner exit.
                if not await self._exited_within(wait) and wait > 0:
                    self._signal_leader(signal.SIGTERM)
                    await self._exited_within(TERMINATE_WAIT)
            self.kill()
            await self._exited_within(REAP_WAIT)
            with trio.move_on_after(STDERR_WAIT):
                await self._tail.done.wait()
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    await pipe.aclose()


def _sandboxed(options: RunnerOptions, argv: list[str], cleanup: list[str]) -> list[str]:
    """``argv`` under the options' sandbox (none: as it is). A temporary work directory
    made for it is added to ``cleanup``."""
    sandbox = options.sandbox
    if sandbox is None:
        return argv
    from ._sandbox import sandbox_argv

    bwrap = sandbox.find_bwrap()
    if bwrap is None:
        raise RunnerStartError(
            f"the sandbox needs bubblewrap, and {sandbox.bwrap!r} was not found on PATH; "
            "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
            "bubblewrap) or give Sandbox(bwrap='/path/to/bwrap')",
            retryable=False,
        )
    workdir = sandbox.workdir
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="execpy-sandbox-")
        cleanup.append(workdir)
    elif not os.path.isdir(workdir):
        raise RunnerStartError(
            f"the sandbox's workdir {workdir!r} is not a directory", retryable=False
        )
    return sandbox_argv(sandbox, bwrap, argv, workdir, dict(options.env or {}))


async def _spawn(
    options: RunnerOptions, cleanup: list[str]
) -> tuple[trio.Process, Stream, list[str]]:
    env = _environment(options)

    async def start(argv: list[str], **io: Any) -> trio.Process:
        # Its own process group (so that a kill reaches what the code started); stderr is
        # the runner's diagnostic stream.
        argv = _sandboxed(options, argv, cleanup)
        return await trio.lowlevel.open_process(
            argv, stderr=subprocess.PIPE, start_new_session=True, env=env, cwd=options.cwd, **io
        )

    argv: list[str] = runner_command(options, None if options.stdio else -1)
    try:
        if options.stdio:
            process = await start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert process.stdin is not None and process.stdout is not None
            return process, trio.StapledStream(process.stdin, process.stdout), argv
        ours, theirs = socket.socketpair()
        try:
            argv = runner_command(options, theirs.fileno())
            process = await start(
                argv,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return process, trio.SocketStream(trio.socket.from_stdlib_socket(ours)), argv
    except OSError as exc:
        raise RunnerStartError(
            f"could not start the runner command {argv!r}: {exc}; check that the command "
            "exists and is executable (and that cwd, if given, is a directory)",
            # Out of processes, memory or descriptors may pass; a missing program does not.
            retryable=exc.errno in _TRANSIENT_ERRNOS,
        ) from exc


class LocalLauncher(Launcher):
    """Runs each runner as a child process (``options.command``, fd or stdio mode).

    ``echo_stderr``: a text stream that also gets the runner's own diagnostics (its
    stderr) as they come, e.g. ``sys.stderr`` to see its frame log (``EXECPY_TRACE=1``).
    """

    def __init__(self, *, echo_stderr: TextIO | None = None) -> None:
        self._echo_stderr = echo_stderr

    def __repr__(self) -> str:
        return f"LocalLauncher(echo_stderr={self._echo_stderr!r})"

    @contextlib.asynccontextmanager
    async def launch(self, options: RunnerOptions) -> AsyncIterator[RunnerHandle]:
        cleanup: list[str] = []  # a sandbox's temporary work directory
        try:
            async with self._launched(options, cleanup) as handle:
                yield handle
        finally:
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def _launched(
        self, options: RunnerOptions, cleanup: list[str]
    ) -> AsyncIterator[RunnerHandle]:
        process, stream, argv = await _spawn(options, cleanup)
        handle = LocalProcessHandle(process, stream, argv, self._echo_stderr)
        handle.namespaced = options.sandbox is not None
        watchers: list[tuple[Any, ...]] = [(handle.reap,)]
        if process.stderr is not None:
            watchers.append((handle._tail.read_from, process.stderr))
        async with watched(handle, *watchers):
            yield handle
