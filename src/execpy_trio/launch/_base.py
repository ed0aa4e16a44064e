"""The launcher interface: where a runner lives, and what the session needs to know of it.

Theory of operation
-------------------
A :class:`Launcher` starts runners. ``launcher.launch(options)`` is an async context
manager: entering it starts one runner and gives a :class:`RunnerHandle`; leaving it makes
sure the runner is gone (bounded, even when cancelled) and stops whatever background tasks
the launcher needed (a process watcher, a stderr reader). The session (``Runner``) speaks
the protocol over ``handle.stream`` and never touches processes; it asks the handle only:

* :meth:`RunnerHandle.wait`: "return once the runner has ended" (its process exited and
  its diagnostics were read; for a runner that *is* its stream, once that stream ended);
* :attr:`RunnerHandle.returncode` and :meth:`RunnerHandle.stderr_tail`: "how did it end?";
* :meth:`RunnerHandle.kill`: "end it now", with the launcher's own policy (the local process
  kills its whole process group; a fork server would ask the server; ssh kills the ssh
  child);
* :meth:`RunnerHandle.stream_ended`: the session's notice that the stream is over (EOF,
  failure or closed by us), for launchers whose runner ends with its stream;
* :meth:`RunnerHandle.close`: after the session closed the stream, wait up to a bound for
  the runner to exit by itself, then kill it and reap it.

The session decides a runner's death exactly once, from these answers, and every waiter
raises that one error.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from .._errors import raise_unwrapped
from .._tasks import ShieldedServices

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from trio.abc import Stream

    from .._options import RunnerOptions

__all__ = ["Launcher", "RunnerHandle", "resident_bytes", "watched"]


class RunnerHandle(abc.ABC):
    """One started runner, as its launcher sees it."""

    #: The byte stream the protocol runs over.
    stream: Stream
    #: What was started, for messages (a command line, "connected stream", ...).
    description: str
    #: The local process id, when there is a local process; None otherwise.
    pid: int | None = None

    @property
    def returncode(self) -> int | None:
        """The exit status once the runner has ended (negative: killed by that signal);
        None while it runs or when there is no process to have one."""
        return None

    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines of the runner's own diagnostics (its stderr), if the launcher
        sees them."""
        return ()

    @abc.abstractmethod
    async def wait(self) -> None:
        """Return once the runner has ended (for whatever reason). No timeout of its own;
        cancellation is safe (nothing changes)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End the runner now, with everything it started, without waiting. Idempotent;
        harmless after it has ended."""

    def local_pid(self, reported: int) -> int:
        """This host's pid for the pid the runner ``reported`` in its welcome: the same,
        unless the runner lives in a PID namespace of its own (a sandbox)."""
        return reported

    def resident_memory(self, pid: int) -> int | None:
        """Bytes of RAM the runner's process ``pid`` (a local pid) uses now, or None when
        this launcher cannot see it."""
        return None

    def stream_ended(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """The session's stream to the runner has ended (EOF, failure, or closed by us)."""

    @abc.abstractmethod
    async def close(self, *, wait: float) -> None:
        """After the session closed the stream: wait up to ``wait`` seconds for the runner
        to exit by itself, then kill it, and release what the handle holds. Bounded, and
        finishes even when cancelled. Idempotent."""


class Launcher(abc.ABC):
    """Starts runners: the local process, a connected stream, and later a fork server,
    ssh, any stdio command or an authenticated listener."""

    @abc.abstractmethod
    def launch(self, options: RunnerOptions) -> AbstractAsyncContextManager[RunnerHandle]:
        """Start one runner; the context manager owns it and its background tasks.

        Raises RunnerStartError if it cannot be started. Cancellation while entering
        leaves nothing behind. Leaving the block ends the runner (``close(wait=0)``) if the
        session has not already, shielded and bounded.
        """


@contextlib.asynccontextmanager
async def watched(handle: RunnerHandle, *watchers: tuple[Any, ...]) -> AsyncIterator[RunnerHandle]:
    """Yield ``handle`` with its ``watchers`` (``(function, *args)``) running; at the end,
    close it (``close(wait=0)``) and stop them. The watchers (a reaper, a stderr reader)
    outlive a cancellation of the owner's scope: the shutdown needs the exit status, and
    the last diagnostics are worth reporting."""
    services = ShieldedServices()
    try:
        async with trio.open_nursery() as nursery:
            for fn, *args in watchers:
                nursery.start_soon(services.run, fn, *args)
            try:
                yield handle
            finally:
                await handle.close(wait=0)
                services.cancel()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int | None:
    """Bytes of RAM the local process ``pid`` uses now (from /proc), or None."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None
