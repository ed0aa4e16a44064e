"""The runner's descendants: it is their subreaper, and none of them outlives it.

What user code starts may leave the runner's process group (``setsid``,
``start_new_session=True``) or double-fork; as a child subreaper the runner inherits every
orphan below it, so one walk of the process tree from the runner finds them all. The walk
is one pass over ``/proc/*/stat`` (``/proc/PID/task/TID/children`` needs
CONFIG_PROC_CHILDREN, which not every kernel has). Like the rest of the runner, the
functions used are bound at import: user code may replace or delete them.
"""

from __future__ import annotations

import os
import sys
from os import O_RDONLY as _O_RDONLY
from os import WNOHANG as _WNOHANG
from os import close as _close
from os import kill as _kill
from os import listdir as _listdir
from os import open as _open
from os import read as _read
from os import waitpid as _waitpid
from time import monotonic as _monotonic
from time import sleep as _sleep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
else:
    pass  # not `signal`: that imports enum, ~2 ms of start-up for nothing

# Not on every platform.
_waitid = getattr(os, "waitid", None)
_P_ALL = getattr(os, "P_ALL", 0)
_WEXITED = getattr(os, "WEXITED", 0)
_WNOWAIT = getattr(os, "WNOWAIT", 0)

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SIGKILL = 9  # a number: `signal` would import enum, ~2 ms of start-up for nothing


def _prctl(option: int, value: int) -> bool:
    """prctl(option, value) on Linux; False where it is not available.

    Through ``_ctypes`` alone (under 1 ms to import; all of ``ctypes`` takes about 4 ms).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import _ctypes

        ct: Any = _ctypes  # dlopen(None), call_function: not in every stub
        prctl = ct.dlsym(ct.dlopen(None), "prctl")
        return bool(ct.call_function(prctl, (option, value, 0, 0, 0)) == 0)
    except Exception:
        return False


def become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER, 1); False where it is not available."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills us when our parent thread ends,
    even while user code holds the GIL; False where it is not available."""
    return _prctl(PR_SET_PDEATHSIG, _SIGKILL)


def has_children() -> bool:
    """Whether we have a child (zombies too): one system call, not a walk of /proc.

    With no child there is nothing to kill: a descendant hangs below a child of ours
    (orphans become our children: we are their subreaper), and only descendants can be
    in our process group (we lead our own session).
    """
    if _waitid is None:
        return True
    try:
        _waitid(_P_ALL, 0, _WEXITED | _WNOHANG | _WNOWAIT)
    except ChildProcessError:
        return False
    except OSError:
        return True
    return True


def _processes() -> list[tuple[int, int, int]]:
    """(pid, ppid, process group) of every process we can see, from one pass over /proc."""
    table: list[tuple[int, int, int]] = []
    try:
        names = _listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is not None and len(fields) > 2:  # else gone meanwhile
            table.append((int(name), int(fields[1]), int(fields[2])))  # ppid, pgrp
    return table


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        fd = _open(f"/proc/{pid}/stat", _O_RDONLY)
        try:
            stat = _read(fd, 4096)
        finally:
            _close(fd)
        return stat[stat.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None


def descendants_cpu(root: int) -> float:
    """CPU seconds of ``root``'s live descendants and of the children they reaped, from
    one pass over /proc (those we reaped are in our own ``os.times()``)."""
    if not has_children():
        return 0.0
    total = 0
    for pid in set(descendants(root)):
        fields = _stat_fields(pid)
        if fields is not None and len(fields) > 14:
            # utime, stime, and cutime, cstime: what it reaped of its own children.
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / _CLK_TCK


def group_members(leader: int) -> list[int]:
    """Every process in ``leader``'s process group but the leader."""
    return [pid for pid, _ppid, pgrp in _processes() if pgrp == leader and pid != leader]


def descendants(root: int, group: int | None = None) -> list[int]:
    """Every descendant of ``root`` (zombies too), and every process in ``group``, from
    one pass over /proc. The client's launcher uses it too, on a runner it kills."""
    children: dict[int, list[int]] = {}
    found: list[int] = []
    for pid, ppid, pgrp in _processes():
        if pgrp == group and pid != root:
            found.append(pid)
        else:
            children.setdefault(ppid, []).append(pid)
    todo = [root, *found]
    while todo:
        kids = children.get(todo.pop(), ())
        found.extend(kids)
        todo.extend(kids)
    return found


def kill_descendants(root: int, group: int | None, bound: float = 1.0) -> None:
    """SIGKILL ``group`` and every descendant of ``root``, whatever its group, and reap.

    Killing a process makes its children ours (we are their subreaper), so the walk is
    repeated until nothing is left, or ``bound`` seconds have passed (a process in
    uninterruptible sleep dies when it wakes up: we do not wait for it).
    """
    deadline = _monotonic() + bound
    while has_children():
        pids = descendants(root, group)
        if not pids:
            return
        for pid in pids:
            try:
                _kill(pid, _SIGKILL)
            except OSError:
                pass
        while True:
            try:
                pid, _status = _waitpid(-1, _WNOHANG)
            except ChildProcessError:
                break
            if pid <= 0:
                break
        if _monotonic() > deadline:
            return
        _sleep(0.001)
