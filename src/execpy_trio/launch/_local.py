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
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import trio

from .._errors import RunnerStartError, raise_unwrapped
from .._tasks import ShieldedServices
from ._base import Launcher, RunnerHandle

if TYPE_CHECKING:
    from trio.abc import ReceiveStream, Stream

    from .._options import RunnerOptions

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

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
    """The last lines of a byte stream, bounded in lines and in characters per line."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        #: Set once the stream has ended (or failed).
        self.done = trio.Event()

    def feed(self, data: bytes | bytearray) -> None:
        text = self._partial + self._decoder.decode(data)
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


class LocalProcessHandle(RunnerHandle):
    """A runner that is a child process of this one."""

    def __init__(self, process: trio.Process, stream: Stream, argv: list[str]) -> None:
        self.process = process
        self.stream = stream
        self.description = " ".join(argv)
        self.pid = process.pid
        self._tail = StderrTail()
        if process.stderr is None:
            self._tail.done.set()
        self._closed = False

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stderr_tail(self) -> tuple[str, ...]:
        return self._tail.lines()

    async def wait(self) -> None:
        await self.process.wait()
        # The exit status is known; the last diagnostics may still be in the pipe.
        with trio.move_on_after(STDERR_WAIT):
            await self._tail.done.wait()

    def kill(self) -> None:
        # The whole group, also after the leader exited: the code may have left children.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def _exited_within(self, limit: float) -> bool:
        if limit > 0:
            with trio.move_on_after(limit):
                await self.process.wait()
        return self.process.returncode is not None

    async def close(self, *, wait: float) -> None:
        with trio.CancelScope(shield=True):
            if not self._closed:
                self._closed = True
                # Closing the channel alone makes a healthy runner exit.
                if not await self._exited_within(wait) and wait > 0:
                    with contextlib.suppress(ProcessLookupError):
                        self.process.terminate()
                    await self._exited_within(TERMINATE_WAIT)
            self.kill()
            await self._exited_within(REAP_WAIT)
            with trio.move_on_after(STDERR_WAIT):
                await self._tail.done.wait()
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def _spawn(options: RunnerOptions) -> tuple[trio.Process, Stream, list[str]]:
    env = _environment(options)

    async def start(argv: list[str], **io: Any) -> trio.Process:
        # Its own process group (so that a kill reaches what the code started); stderr is
        # the runner's diagnostic stream.
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
            "exists and is executable (and that cwd, if given, is a directory)"
        ) from exc


class LocalLauncher(Launcher):
    """Runs each runner as a child process (``options.command``, fd or stdio mode)."""

    def __repr__(self) -> str:
        return "LocalLauncher()"

    @contextlib.asynccontextmanager
    async def launch(self, options: RunnerOptions) -> AsyncIterator[RunnerHandle]:
        process, stream, argv = await _spawn(options)
        handle = LocalProcessHandle(process, stream, argv)
        # The stderr reader outlives a cancellation of the owner's scope: the last
        # diagnostics of a runner that dies during a shutdown are still worth reporting.
        services = ShieldedServices()
        try:
            async with trio.open_nursery() as nursery:
                if process.stderr is not None:
                    nursery.start_soon(services.run, handle._tail.read_from, process.stderr)
                try:
                    yield handle
                finally:
                    await handle.close(wait=0)
                    services.cancel()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_unwrapped(group)
