"""Launchers: where a runner lives. See :mod:`execpy_trio.launch._base` for the interface.

* :class:`LocalLauncher`: a child process of this one (fd or stdio mode), the default;
* :class:`StreamLauncher`: a stream that is already connected to a runner;
* :class:`ForkServerLauncher`: runners forked from a template that has imported the
  runner and the preload modules (fresh interpreters in milliseconds).

ssh, any stdio command and an authenticated listener are further launchers
with no change to the session.
"""

from __future__ import annotations

from ._base import Launcher, RunnerHandle
from ._forkserver import ForkedHandle, ForkServer, ForkServerLauncher
from ._local import DEFAULT_COMMAND, LocalLauncher, LocalProcessHandle, runner_command
from ._stream import StreamHandle, StreamLauncher

__all__ = [
    "DEFAULT_COMMAND",
    "ForkServer",
    "ForkServerLauncher",
    "ForkedHandle",
    "Launcher",
    "LocalLauncher",
    "LocalProcessHandle",
    "RunnerHandle",
    "StreamHandle",
    "StreamLauncher",
    "runner_command",
]
