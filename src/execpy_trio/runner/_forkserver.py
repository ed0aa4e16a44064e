"""The fork server's template process: ``python -m execpy_trio.runner._forkserver
--control-fd N [--preload MODULE ...]``.

It imports the runner's modules and the ``preload`` modules once, then forks a ready
runner for each request on its control channel (a ``SOCK_SEQPACKET`` Unix socket to the
client; one msgpack map per packet, descriptors passed with ``SCM_RIGHTS``). The child
becomes an ordinary runner on the channel descriptor it was given: its own session and
process group (the runner sets it up), stderr to the pipe it was given, stdin and stdout
``/dev/null``, every other descriptor closed, the environment and working directory of
the request. The template stays single-threaded (forking a process with threads is
unsafe): a preload that starts a thread is refused.

The template is every child's parent: it reaps them and reports each exit status. A
child watches its parent (the runner does so anyway), so a template that dies takes its
children with it; a template whose client goes away (EOF on the control channel) exits.

The control messages are a private detail of this implementation (client and template
come from the same installed package, on the same host); see docs/design.md.

Client -> template: ``{"kind": "fork", "id": N, "env": {...}, "cwd": str | None}`` (the
child's whole environment) with two descriptors (the child's channel, its stderr).
Template -> client: ``{"kind": "ready", "pid": P}`` once; ``{"kind": "refused", "message":
...}`` instead, then it exits; ``{"kind": "forked", "id": N, "pid": P}`` or ``{"kind":
"fork-failed", "id": N, "message": ...}``; ``{"kind": "exited", "pid": P, "returncode":
R}`` (negative: the signal).
"""

from __future__ import annotations

import os
import sys

import msgpack

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import socket
    from typing import Any
else:
    import _signal as signal  # not the signal module: it imports enum (start-up time)

#: Exit statuses of the template.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 7  # as a runner whose set-up failed
#: Set to 1 in the template (unless set): the thread pools of numerical libraries.
SINGLE_THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: The largest control message.
MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(msgpack.packb(msg))


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _child(
    sock: socket.socket, wake: tuple[int, int], msg: dict[str, Any], fds: list[int], template: int
) -> None:
    """In the forked child: become a runner on the channel descriptor. Never returns."""
    code = 70
    try:
        # The template is single-threaded, so its only thread is our parent: the kernel
        # ends us with it, even while user code holds the GIL (the runner's own watch of
        # its parent then could not run).
        from ._children import die_with_parent

        die_with_parent()
        if os.getppid() != template:
            os._exit(code)  # it died before the prctl took hold
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # whatever the template's start had
        channel, stderr = fds
        sock.close()
        for fd in wake:
            os.close(fd)
        os.dup2(stderr, 2)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        keep = {0, 1, 2, channel}
        for fd in (null, stderr):
            if fd not in keep:
                os.close(fd)
        os.closerange(channel + 1, 65536)
        os.closerange(3, channel)
        env = msg.get("env")
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        import time

        time.tzset()  # TZ as the request's environment says
        umask = msg.get("umask")
        if isinstance(umask, int):
            os.umask(umask)
        cwd = msg.get("cwd")
        if cwd:
            started_in = os.getcwd()
            os.chdir(cwd)
            if sys.path and sys.path[0] == started_in:
                sys.path[0] = os.getcwd()  # as ``python -m`` started in cwd would have it
        from ._command import main

        sys.argv = ["execpy_trio.runner", "--fd", str(channel)]
        code = main(["--fd", str(channel)])
    except BaseException as exc:
        try:
            os.write(2, f"execpy-forkserver child: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def serve(control_fd: int, preload: list[str]) -> int:
    # Imported here, not at the top: the runner's modules stay light to import (this one
    # is only the template's program).
    import select
    import socket

    sock = socket.socket(fileno=control_fd)
    # The runner's own modules, so that a child imports nothing of ours.
    from . import _capture, _channel, _children, _execute, _hooks, _input, _io, _limits, _main

    del _capture, _channel, _children, _execute, _hooks, _input, _io, _limits, _main
    import importlib

    # Numerical libraries start a pool of threads when they load (OpenBLAS, MKL, OpenMP)
    # unless told to use one: a process with threads cannot be forked safely, so the
    # template asks for one, unless the environment already says otherwise.
    for name in SINGLE_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    for name in preload:
        try:
            importlib.import_module(name)
        except BaseException:
            import traceback

            _send(
                sock,
                {
                    "kind": "refused",
                    "message": f"preload: importing {name!r} failed:\n{traceback.format_exc()}",
                },
            )
            return EXIT_REFUSED
    if _threads() > 1:
        _send(
            sock,
            {
                "kind": "refused",
                "message": (
                    f"the preload modules {preload} started a thread; forking a process "
                    "with threads is unsafe, so this fork server cannot use them (preload "
                    "them in each runner instead: spawn, not fork; for numerical libraries, "
                    f"leave {', '.join(SINGLE_THREAD_VARIABLES)} unset or 1)"
                ),
            },
        )
        return EXIT_REFUSED
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # whatever its starter had blocked
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    _send(sock, {"kind": "ready", "pid": os.getpid()})
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            while True:
                # Look before reaping: while the exited runner is unreaped its pid still
                # names its process group, so killing the group cannot reach another.
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break
                if info is None or info.si_pid == 0:
                    break
                try:
                    os.killpg(info.si_pid, signal.SIGKILL)
                except OSError:
                    pass
                pid, status = os.waitpid(info.si_pid, 0)
                children.discard(pid)
                _send(
                    sock,
                    {"kind": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)},
                )
        if sock.fileno() in readable:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
            except OSError:
                data, fds = b"", []
            if not data:
                _end_children(children)
                return EXIT_OK  # the client went away: so do its runners
            reply = _fork(sock, (wake_r, wake_w), data, fds, children)
            if reply is not None:
                message, pidfd = reply
                if pidfd is None:
                    _send(sock, message)
                else:
                    socket.send_fds(sock, [msgpack.packb(message)], [pidfd])
                    os.close(pidfd)


def _fork(
    sock: socket.socket,
    wake: tuple[int, int],
    data: bytes,
    fds: list[int],
    children: set[int],
) -> tuple[dict[str, Any], int | None] | None:
    """One request: fork a child for it, or say why not. A malformed request is answered,
    never fatal (the template's runners depend on it)."""
    try:
        msg = msgpack.unpackb(data)
    except Exception:
        msg = None
    request_id = msg.get("id") if isinstance(msg, dict) else None
    env = msg.get("env") if isinstance(msg, dict) else None
    if (
        not isinstance(msg, dict)
        or msg.get("kind") != "fork"
        or not isinstance(request_id, int)
        or len(fds) != 2
        or not (env is None or isinstance(env, dict))
    ):
        for fd in fds:
            os.close(fd)
        return {
            "kind": "fork-failed",
            "id": request_id,
            "message": f"not a fork request with an id and two descriptors: {msg!r:.200}",
        }, None
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        return {"kind": "fork-failed", "id": request_id, "message": str(exc)}, None
    if pid == 0:
        _child(sock, wake, msg, fds, os.getppid())
    children.add(pid)
    for fd in fds:
        os.close(fd)
    # The pidfd goes with the reply: opened by the parent before it reaps, it names this
    # child for sure (the client opening one by pid could name a process that reused it).
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    return {"kind": "forked", "id": request_id, "pid": pid}, pidfd


def _end_children(children: set[int]) -> None:
    """Kill every runner still alive and their groups (the client is gone)."""
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    control: int | None = None
    preload: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--control-fd" and args:
            control = int(args.pop(0))
        elif arg == "--preload" and args:
            preload.append(args.pop(0))
        else:
            sys.stderr.write(f"execpy-forkserver: unknown argument {arg!r}\n")
            return EXIT_USAGE
    if control is None:
        sys.stderr.write("execpy-forkserver: --control-fd N is required\n")
        return EXIT_USAGE
    return serve(control, preload)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
