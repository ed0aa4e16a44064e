"""``Sandbox``: a local runner under bubblewrap (``bwrap``), for code you do not trust.

What the runner (and everything it starts) gets:

- its own user, PID, IPC, UTS, cgroup and network namespaces: no network at all (not even
  loopback to the host's services), unless ``network=True``; it sees only its own
  processes; it runs as ``nobody`` (uid 65534) inside, with no capabilities and
  ``PR_SET_NO_NEW_PRIVS`` (no setuid programs). Outside, its files and permission checks
  are those of the client's own user (the namespace maps one to the other): run the
  client as an unprivileged user, not root;
- a filesystem that is read-only and holds only what Python needs: ``/usr`` (and the
  ``/bin``, ``/lib`` links), a few files of ``/etc`` (users, certificates, time zone,
  the linker's cache), the interpreter's prefix, the directories execpy_trio and msgpack
  are imported from, and the ``read_only`` paths you name (not the rest of ``sys.path``,
  which may hold the client's script or current directory). Home directories, ``/srv``,
  other projects and the rest of ``/etc`` are not there (a path under one of them is
  visible only where the interpreter or the package lives under it, and only that);
- a private writable ``/tmp`` (a tmpfs, gone with the runner) and one writable work
  directory, its current directory and HOME: ``workdir``, or a fresh temporary directory
  removed when the runner ends;
- an environment of its own: only the options' ``env`` (never the host's variables, so no
  token of the client's leaks), over PATH, LANG, HOME and TMPDIR;
- an end with its connection: the runner exits when the client closes it or dies (the
  channel ends), and the namespace, with everything in it, with the runner.

What it does not protect against: kernel bugs (the namespaces are only as strong as the
kernel), resource exhaustion (use :class:`~execpy_trio.Limits` with it: memory, CPU,
output, files; the number of processes is not limited), reading what is made visible
(the interpreter's prefix, the package directories, ``read_only``), and side channels.
It needs user namespaces (most distributions allow them; some containers do not) and the
``bwrap`` program (Debian/Ubuntu: ``apt-get install bubblewrap``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import attrs

__all__ = ["Sandbox", "sandbox_argv"]

#: System paths made visible read-only when they exist.
_SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
)
NOBODY = 65534


def _paths(value: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        raise TypeError(f"read_only must be a sequence of paths, not the single path {value!r}")
    return tuple(os.path.abspath(os.fspath(p)) for p in value)


def _workdir(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.path.abspath(os.fspath(value))


@attrs.frozen(kw_only=True)
class Sandbox:
    """How to confine a local runner (see the module docstring for what it does).

    - ``workdir``: a host directory the runner may write, mounted at the same path and
      made its current directory; None: a fresh temporary directory, removed at the end.
    - ``network``: share the host's network (default: none at all).
    - ``read_only``: more host paths to make visible, read-only (data, a model, a venv).
    - ``bwrap``: the bubblewrap program.
    """

    workdir: str | None = attrs.field(default=None, converter=_workdir)
    network: bool = False
    read_only: tuple[str, ...] = attrs.field(default=(), converter=_paths)
    bwrap: str = "bwrap"

    def find_bwrap(self) -> str | None:
        """The bwrap program's path, or None if it is not installed."""
        return shutil.which(self.bwrap)


def _package_roots() -> list[str]:
    """The directories execpy_trio and msgpack are imported from (an editable checkout's
    ``src``, a user site): only those, not all of ``sys.path``."""
    import msgpack

    import execpy_trio

    return [
        os.path.dirname(os.path.dirname(os.path.abspath(module.__file__ or "")))
        for module in (execpy_trio, msgpack)
    ]


def _python_paths() -> list[str]:
    """What the runner's interpreter needs to start and import execpy_trio."""
    found = [sys.base_prefix, sys.prefix, sys.exec_prefix, *_package_roots()]
    executable = os.path.realpath(sys.executable)
    found.append(os.path.dirname(executable))
    unique: list[str] = []
    for path in found:
        path = os.path.abspath(path)
        if path not in unique and not any(path.startswith(u + os.sep) for u in unique):
            unique.append(path)
    return unique


def sandbox_argv(
    sandbox: Sandbox, bwrap: str, argv: list[str], workdir: str, env: dict[str, str] | None = None
) -> list[str]:
    """``argv`` run under bubblewrap as ``sandbox`` says, with ``workdir`` writable.

    The environment inside is only ``env`` over a minimal one (PATH, LANG, HOME, TMPDIR),
    with PYTHONPATH naming where execpy_trio is imported from (after any of ``env``).
    """
    inside = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": "/tmp",
        **(env or {}),
    }
    inside["PYTHONPATH"] = os.pathsep.join(
        p for p in (inside.get("PYTHONPATH", ""), *dict.fromkeys(_package_roots())) if p
    )
    # No --die-with-parent: it is PR_SET_PDEATHSIG, which fires when the *thread* that
    # started bwrap exits (Trio starts processes from worker threads that end when idle).
    # The runner ends with its connection instead, and the namespace with the runner.
    args = [
        bwrap,
        "--unshare-all",
        "--clearenv",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--cap-drop",
        "ALL",
    ]
    if sandbox.network:
        args.append("--share-net")
    # The private /tmp first: what is bound below may live under the host's /tmp (a
    # checkout, a venv, the default workdir) and must stay visible on top of it.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in (*_SYSTEM_PATHS, *_python_paths(), *sandbox.read_only):
        args += ["--ro-bind-try", path, path]
    args += [
        "--bind",
        workdir,
        workdir,
        "--chdir",
        workdir,
    ]
    for name, value in inside.items():
        args += ["--setenv", name, value]
    args += [
        # bwrap's root is a tmpfs holding the mount points: read-only too, last.
        "--remount-ro",
        "/",
        "--",
        *argv,
    ]
    return args
