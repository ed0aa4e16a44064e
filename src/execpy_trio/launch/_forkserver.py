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
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgpack
import trio

from .._errors import RunnerStartError
from ._base import Launcher, RunnerHandle, resident_bytes, watched
from ._local import StderrTail

if TYPE_CHECKING:
    from .._options import RunnerOptions

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    pass  # type: ignore[import-not-found,unused-ignore]

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
        self._awaited: set[int] = set()  # request ids a caller still waits for
        self._exits: dict[int, int] = {}
        self._live: set[int] = set()  # pids forked whose exit status is still wanted
        self._next_id = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._failures = 0
        self._closed = False
        self.template_pid: int | None = None
        self.templates_started = 0
        _servers.add(self)

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
        except TimeoutError:
            first = {
                "kind": "hung",
                "message": f"it was not ready within {ready_timeout:g} s (handshake_timeout): "
                f"does importing one of {list(self.preload)} hang?",
            }
        except (OSError, ValueError) as exc:
            first = {"kind": "eof", "message": str(exc)}
        if first.get("kind") != "ready":
            if first.get("kind") == "hung":
                process.kill()
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
                retryable=first.get("kind") == "eof",
            )
        ours.settimeout(None)
        self._process, self._sock = process, ours
        self.template_pid = process.pid
        self.templates_started += 1
        # The reader holds the server weakly, and a server never closed ends its template
        # when it is collected.
        self._reader = threading.Thread(
            target=_read_replies,
            args=(weakref.ref(self), ours, process),
            name="execpy-forkserver",
            daemon=True,
        )
        self._reader.start()
        weakref.finalize(self, _end_template, process)

    def _deliver(self, msg: dict[str, Any], fds: list[int]) -> None:
        with self._cond:
            if msg.get("kind") == "exited":
                if msg["pid"] in self._live:  # nobody asks for the others: not kept
                    self._exits[msg["pid"]] = msg["returncode"]
            elif msg.get("id") in self._awaited:
                msg["pidfd"] = fds.pop() if fds else None
                self._replies[msg["id"]] = msg
                if msg.get("kind") == "forked":
                    self._live.add(msg["pid"])  # before its "exited" can come
            self._cond.notify_all()
        for fd in fds:
            os.close(fd)  # a late reply's: nobody waits for it any more

    def _lost(self, sock: socket.socket) -> None:
        with self._cond:
            if self._sock is sock:
                self._sock = None  # the template is gone: the next request starts another
            self._cond.notify_all()

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
            if self._closed:  # closed while it started
                self.close()
                raise RunnerStartError("this fork server was closed", retryable=False)
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
        umask: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> tuple[int, int | None]:
        """Fork a runner on ``channel`` (its stderr to ``stderr``); return its pid and a
        pidfd for it (opened by the template, its parent: it names this process for sure).
        Blocking and bounded: the template's start, if it must start (``ready_timeout``
        for its imports, a few tries), then ``FORK_TIMEOUT``; a template that does not
        answer in time is killed (the next request starts another)."""
        with self._lock:
            sock = self._ensure_template(ready_timeout)
            process = self._process
            self._next_id += 1
            request_id = self._next_id
            msg = {"kind": "fork", "id": request_id, "env": env, "cwd": cwd, "umask": umask}
            with self._cond:
                self._awaited.add(request_id)
            try:
                socket.send_fds(sock, [msgpack.packb(msg)], [channel, stderr])
            except OSError as exc:
                with self._cond:
                    self._awaited.discard(request_id)
                raise RunnerStartError(f"the fork server is gone: {exc}") from exc
        deadline = time.monotonic() + FORK_TIMEOUT
        with self._cond:
            try:
                while request_id not in self._replies:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._sock is not sock:
                        gone = self._sock is not sock
                        if not gone and process is not None:
                            process.kill()  # stopped or wedged: replaced on the next request
                        raise RunnerStartError(
                            "the fork server did not answer a fork request"
                            + (" (it ended)" if gone else f" in {FORK_TIMEOUT} s: killed it")
                        )
                    self._cond.wait(left)
                reply = self._replies.pop(request_id)
            finally:
                self._awaited.discard(request_id)
        if reply.get("kind") != "forked":
            raise RunnerStartError(f"the fork server could not fork: {reply.get('message')}")
        return reply["pid"], reply.get("pidfd")

    def exit_status(self, pid: int, wait: float) -> int | None:
        """The exit status the template reported for ``pid``, waiting up to ``wait``
        (asked once: after it, the status is not kept)."""
        deadline = time.monotonic() + wait
        with self._cond:
            try:
                while pid not in self._exits:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._sock is None:
                        return self._exits.pop(pid, None)
                    self._cond.wait(left)
                return self._exits.pop(pid)
            finally:
                self._live.discard(pid)

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


def _read_replies(
    ref: weakref.ref[ForkServer], sock: socket.socket, process: subprocess.Popen[bytes]
) -> None:
    """The reader thread of one template: its replies and exit reports."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 1)
        except OSError:
            data, fds = b"", []
        server = ref()
        if not data or server is None:
            for fd in fds:
                os.close(fd)
            break
        server._deliver(msgpack.unpackb(data), fds)
        del server
    server = ref()
    if server is not None:
        server._lost(sock)
    del server
    with contextlib.suppress(OSError):
        sock.close()
    _end_template(process)


def _end_template(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        process.kill()
    process.wait()


class ForkedHandle(RunnerHandle):
    """A runner forked by a fork server: not our child, watched through a pidfd."""

    def __init__(
        self,
        server: ForkServer,
        pid: int,
        pidfd: int | None,
        stream: trio.SocketStream,
        stderr: Any,
    ) -> None:
        self.server = server
        self.pid: int = pid
        self.stream = stream
        self.description = f"a runner forked by {server!r}"
        if pidfd is None:  # the template could not open one (an old kernel)
            pidfd = os.pidfd_open(pid)
        self._pidfd = pidfd
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
        return resident_bytes(pid)

    async def watch(self) -> None:
        """Wait for the runner's end and its status (run in the launcher's nursery)."""
        try:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._returncode = await trio.to_thread.run_sync(
                self.server.exit_status, self.pid, REPORT_WAIT
            )
            if self._returncode is None:
                # No report: its template ended, and the kernel ended it too (it dies with
                # its parent). Say so where RunnerDied looks.
                self._tail.feed(
                    b"execpy-forkserver: the fork server's template ended, and this runner "
                    b"with it (no exit status)\n"
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
        _launchers.add(self)

    def __repr__(self) -> str:
        return f"ForkServerLauncher({len(self.servers)} server(s))"

    def server(self, preload: tuple[str, ...], env: dict[str, str]) -> ForkServer:
        """The server for ``preload`` whose interpreter settings (the ``PYTHON*``
        variables: the path, the hash seed, ...) are those of ``env``; started with
        ``env`` if new."""
        # Only what decides how the interpreter starts and imports: the template's own
        # environment stays readable in every child's /proc/self/environ, so nothing of
        # one request (a token) may go into it.
        start_env = {k: v for k, v in env.items() if _shapes_the_interpreter(k)}
        key = (preload, tuple(sorted(start_env.items())))
        with self._lock:
            server = self.servers.get(key)
            if server is None:
                server = self.servers[key] = ForkServer(preload, env=start_env)
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
            # Absolute, from our working directory of now, as a spawned runner's would be.
            where = os.fspath(options.cwd) if options.cwd is not None else "."
            cwd = os.path.abspath(where)  # noqa: ASYNC240 - a getcwd(), no I/O to wait for
            if not os.path.isdir(cwd):  # noqa: ASYNC240 - one stat
                raise RunnerStartError(
                    f"the runner's working directory {cwd!r} is not a directory; give an "
                    "existing cwd",
                    retryable=False,
                )
            pid, pidfd = await trio.to_thread.run_sync(
                lambda: server.fork(
                    theirs.fileno(),
                    write_end,
                    env=env,
                    cwd=cwd,
                    umask=_current_umask(),
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
        handle = ForkedHandle(server, pid, pidfd, stream, stderr)
        async with watched(handle, (handle.watch,), (handle._tail.read_from, stderr)):
            yield handle


def _shapes_the_interpreter(name: str) -> bool:
    """Whether the environment variable ``name`` decides how Python starts or what it
    imports (the path, the user site, the hash seed, the locale's encoding)."""
    return name.startswith(("PYTHON", "LC_")) or name in ("LANG", "HOME")


_servers: weakref.WeakSet[ForkServer] = weakref.WeakSet()


_launchers: weakref.WeakSet[ForkServerLauncher] = weakref.WeakSet()


def _forget_servers_after_fork() -> None:
    """In a child of this process (``os.fork`` in the client): the fork servers are the
    parent's. Close the inherited control sockets (so a template still sees EOF when the
    parent goes), leave those servers closed, and let every launcher start servers of
    its own on its next launch."""
    for launcher in list(_launchers):
        launcher.servers = {}
        launcher._lock = threading.Lock()
    for server in list(_servers):
        sock = server._sock
        server._sock = None
        server._process = None
        server._closed = True
        server._lock = threading.Lock()
        server._cond = threading.Condition()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


os.register_at_fork(after_in_child=_forget_servers_after_fork)


def _current_umask() -> int | None:
    """This process's umask, read without changing it (os.umask would, for a moment, for
    every thread); None if /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


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
