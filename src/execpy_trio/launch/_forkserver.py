"""The fork-server launcher: fresh runners forked from a template process that has already
imported the runner and the ``preload`` modules (see ``runner/_forkserver.py``).

:class:`ForkServer` owns one template process and its control channel. It is plain
threads-and-sockets code, owned by no Trio loop, so that one fork server can serve
successive ``trio.run`` calls and the blocking API's thread: a reader thread takes the
template's replies (forked pids, exit statuses); a fork request waits for its reply with
a bound. A template that died is started again on the next request (bounded, with
backoff); its children end with it (each runner watches its parent).

:class:`ForkServerLauncher` is the :class:`Launcher`: per launch, a socketpair for the
channel and a pipe for the runner's stderr, both passed to the template; the handle waits
for the child's end through a pidfd (it is not our child) and gets its exit status from
the template's report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgpack
import trio

from .._errors import RunnerStartError, raise_unwrapped
from .._tasks import ShieldedServices
from ._base import Launcher, RunnerHandle
from ._local import StderrTail

if TYPE_CHECKING:
    from .._options import RunnerOptions

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["ForkServer", "ForkServerLauncher", "ForkedHandle", "can_fork", "shared_launcher"]

#: How long the template may take to import the preload modules and say it is ready, by
#: default (a launch uses its options' ``handshake_timeout``).
READY_TIMEOUT: Final = 60.0
#: How long a fork request may take to be answered.
FORK_TIMEOUT: Final = 10.0
#: After a child's pidfd says it ended, how long the template's report may take.
REPORT_WAIT: Final = 2.0
#: Template starts that fail in a row before a fork server gives up.
TEMPLATE_ATTEMPTS: Final = 3


class ForkServer:
    """One template process with ``preload`` imported, forking runners on request.

    Thread-safe; usable from any thread and any Trio loop. :meth:`close` ends the template
    (and with it every runner it forked). Also a context manager.
    """

    def __init__(
        self,
        preload: Sequence[str] = (),
        *,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.preload = tuple(preload)
        self._python = python or sys.executable
        #: The template's environment (None: this process's): what the preload imports see.
        self.env = env
        self._lock = threading.Lock()  # one request at a time on the control channel
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, int] = {}
        self._next_id = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._failures = 0
        self._closed = False
        self.template_pid: int | None = None
        self.templates_started = 0

    def __repr__(self) -> str:
        return f"ForkServer(preload={list(self.preload)}, template pid {self.template_pid})"

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the template ---------------------------------------------------------------------

    def _start_template(self, ready_timeout: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [self._python, "-m", "execpy_trio.runner._forkserver"]
        argv += ["--control-fd", str(theirs.fileno())]
        for name in self.preload:
            argv += ["--preload", name]
        try:
            process = subprocess.Popen(
                argv,
                env=self.env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise RunnerStartError(f"could not start the fork server {argv!r}: {exc}") from exc
        finally:
            theirs.close()
        ours.settimeout(ready_timeout)
        try:
            first = msgpack.unpackb(ours.recv(1 << 20) or msgpack.packb({"kind": "eof"}))
        except (OSError, ValueError) as exc:
            first = {"kind": "eof", "message": str(exc)}
        if first.get("kind") != "ready":
            try:
                process.wait(timeout=5)  # a refusing template exits by itself, with its status
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            ours.close()
            why = first.get("message") or f"it exited with status {process.returncode}"
            raise RunnerStartError(
                f"the fork server for preload {list(self.preload)} did not start: {why}",
                returncode=process.returncode,
                retryable=first.get("kind") != "refused",
            )
        ours.settimeout(None)
        self._process, self._sock = process, ours
        self.template_pid = process.pid
        self.templates_started += 1
        self._reader = threading.Thread(
            target=self._read, args=(ours, process), name="execpy-forkserver", daemon=True
        )
        self._reader.start()

    def _read(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                break
            msg = msgpack.unpackb(data)
            with self._cond:
                if msg.get("kind") == "exited":
                    self._exits[msg["pid"]] = msg["returncode"]
                elif "id" in msg:
                    self._replies[msg["id"]] = msg
                self._cond.notify_all()
        with self._cond:
            if self._sock is sock:
                self._sock = None  # the template is gone: the next request starts another
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(OSError):
            process.kill()
        process.wait()

    def _ensure_template(self, ready_timeout: float) -> socket.socket:
        if self._closed:
            raise RunnerStartError("this fork server was closed", retryable=False)
        sock = self._sock
        if sock is not None and self._process is not None and self._process.poll() is None:
            return sock
        while True:
            try:
                self._start_template(ready_timeout)
            except RunnerStartError as exc:
                self._failures += 1
                if not exc.retryable or self._failures >= TEMPLATE_ATTEMPTS:
                    raise
                time.sleep(0.1 * 2 ** (self._failures - 1))
                continue
            self._failures = 0
            assert self._sock is not None
            return self._sock

    # -- requests -------------------------------------------------------------------------

    def fork(
        self,
        channel: int,
        stderr: int,
        *,
        env: dict[str, str],
        cwd: str | None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> int:
        """Fork a runner on ``channel`` (its stderr to ``stderr``); return its pid.
        Blocking and bounded: the template's start, if it must start (``ready_timeout``
        for its imports, a few tries), then ``FORK_TIMEOUT``."""
        with self._lock:
            sock = self._ensure_template(ready_timeout)
            self._next_id += 1
            request_id = self._next_id
            msg = {"kind": "fork", "id": request_id, "env": env, "cwd": cwd}
            try:
                socket.send_fds(sock, [msgpack.packb(msg)], [channel, stderr])
            except OSError as exc:
                raise RunnerStartError(f"the fork server is gone: {exc}") from exc
        deadline = time.monotonic() + FORK_TIMEOUT
        with self._cond:
            while request_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._sock is not sock:
                    raise RunnerStartError(
                        "the fork server did not answer a fork request"
                        + (" (it ended)" if self._sock is not sock else f" in {FORK_TIMEOUT} s")
                    )
                self._cond.wait(left)
            reply = self._replies.pop(request_id)
        if reply.get("kind") != "forked":
            raise RunnerStartError(f"the fork server could not fork: {reply.get('message')}")
        pid: int = reply["pid"]
        return pid

    def exit_status(self, pid: int, wait: float) -> int | None:
        """The exit status the template reported for ``pid``, waiting up to ``wait``."""
        deadline = time.monotonic() + wait
        with self._cond:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if left <= 0 or self._sock is None:
                    return self._exits.pop(pid, None)
                self._cond.wait(left)
            return self._exits.pop(pid)

    def close(self) -> None:
        """End the template, and with it every runner it forked. Idempotent."""
        self._closed = True
        with self._cond:
            sock, process = self._sock, self._process
            self._sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(5)


class ForkedHandle(RunnerHandle):
    """A runner forked by a fork server: not our child, watched through a pidfd."""

    def __init__(
        self, server: ForkServer, pid: int, stream: trio.SocketStream, stderr: Any
    ) -> None:
        self.server = server
        self.pid: int = pid
        self.stream = stream
        self.description = f"a runner forked by {server!r}"
        self._pidfd = os.pidfd_open(pid)
        self._stderr = stderr
        self._tail = StderrTail()
        self._returncode: int | None = None
        self._ended = trio.Event()
        self._closed = False

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def stderr_tail(self) -> tuple[str, ...]:
        return self._tail.lines()

    def resident_memory(self, pid: int) -> int | None:
        if self._ended.is_set():
            return None
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    async def watch(self) -> None:
        """Wait for the runner's end and its status (run in the launcher's nursery)."""
        try:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._returncode = await trio.to_thread.run_sync(
                self.server.exit_status, self.pid, REPORT_WAIT
            )
        finally:
            os.close(self._pidfd)
            self._pidfd = -1
        with trio.move_on_after(0.5):
            await self._tail.done.wait()
        self._ended.set()

    async def wait(self) -> None:
        await self._ended.wait()

    def kill(self) -> None:
        # The template kills the runner's process group when it reaps it; what the code
        # started in sessions of its own is killed here, the runner stopped first (as
        # the local launcher does).
        if self._pidfd < 0:
            return
        from ..runner._children import descendants

        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGSTOP)
        for _ in range(3):
            pids = descendants(self.pid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def close(self, *, wait: float) -> None:
        with trio.CancelScope(shield=True):
            if not self._closed:
                self._closed = True
                if wait > 0:
                    with trio.move_on_after(wait):
                        await self._ended.wait()
            self.kill()
            with trio.move_on_after(5):
                await self._ended.wait()
            await self._stderr.aclose()


class ForkServerLauncher(Launcher):
    """Forks each runner from a :class:`ForkServer` whose template has imported the
    runner and the options' ``preload``. One server per preload set, shared by every
    launch (``servers``); close them with :meth:`close`. Not with ``sandbox`` or
    ``command`` (a fork copies this package's runner, in this machine's namespaces)."""

    def __init__(self) -> None:
        self.servers: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], ForkServer] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ForkServerLauncher({len(self.servers)} server(s))"

    def server(self, preload: tuple[str, ...], env: dict[str, str]) -> ForkServer:
        """The server for ``preload`` whose interpreter settings (the ``PYTHON*``
        variables: the path, the hash seed, ...) are those of ``env``; started with
        ``env`` if new."""
        python_env = tuple(sorted((k, v) for k, v in env.items() if k.startswith("PYTHON")))
        key = (preload, python_env)
        with self._lock:
            server = self.servers.get(key)
            if server is None:
                server = self.servers[key] = ForkServer(preload, env=env)
            return server

    def close(self) -> None:
        with self._lock:
            servers = list(self.servers.values())
            self.servers.clear()
        for server in servers:
            server.close()

    @contextlib.asynccontextmanager
    async def launch(self, options: RunnerOptions) -> AsyncIterator[RunnerHandle]:
        if options.sandbox is not None or options.command is not None or options.stdio:
            raise RunnerStartError(
                "the fork server forks this package's runner here: it cannot apply "
                "sandbox=, command= or stdio= (use LocalLauncher for those)",
                retryable=False,
            )
        # The whole environment, as a spawned runner would get it now (the template's is
        # that of its own start).
        env = dict(os.environ) if options.inherit_env else {}
        env.update(options.env or {})
        server = self.server(options.preload, env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        read_end, write_end = os.pipe()
        try:
            cwd = os.fspath(options.cwd) if options.cwd is not None else None
            pid = await trio.to_thread.run_sync(
                lambda: server.fork(
                    theirs.fileno(),
                    write_end,
                    env=env,
                    cwd=cwd,
                    ready_timeout=options.handshake_timeout,
                ),
                # Not abandoned: the thread uses descriptors this frame closes after it.
                abandon_on_cancel=False,
            )
        except BaseException:
            ours.close()
            os.close(read_end)
            raise
        finally:
            theirs.close()
            os.close(write_end)
        stderr = trio.lowlevel.FdStream(read_end)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        handle = ForkedHandle(server, pid, stream, stderr)
        # The watcher and the stderr reader outlive a cancellation of the owner's scope:
        # the shutdown needs the exit status, and the last diagnostics are worth reporting.
        services = ShieldedServices()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(services.run, handle.watch)
                nursery.start_soon(services.run, handle._tail.read_from, stderr)
                try:
                    yield handle
                finally:
                    await handle.close(wait=0)
                    services.cancel()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_unwrapped(group)


def can_fork(options: RunnerOptions) -> bool:
    """Whether a fork server can start a runner with ``options`` here."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "pidfd_open")
        and options.sandbox is None
        and options.command is None
        and not options.stdio
    )


_shared: ForkServerLauncher | None = None
_shared_lock = threading.Lock()


def shared_launcher() -> ForkServerLauncher:
    """The process-wide fork-server launcher the manager uses by default: one template
    per preload set for the whole process, across ``trio.run`` calls, closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            import atexit

            _shared = ForkServerLauncher()
            atexit.register(_shared.close)
        return _shared
