"""The public names of :mod:`execpy_trio`, imported lazily by the package ``__init__``.

Importing this module imports Trio and attrs; the package ``__init__`` only does so when a
public name is first used, so ``python -m execpy_trio.runner`` stays free of them.
"""

from __future__ import annotations

from ._errors import (
    CodeError,
    ExecpyError,
    LocalProtocolError,
    OperationRejected,
    ProtocolError,
    RemoteProtocolError,
    RunnerDied,
    RunnerStartError,
)
from ._limits import Limits
from ._open import connect_runner, open_runner, start_runner
from ._operation import Operation
from ._options import RunnerOptions
from ._results import ErrorInfo, ExecResult, InputRequest, Output
from ._session import Runner, RunnerStatistics
from .launch import (
    ForkServer,
    ForkServerLauncher,
    Launcher,
    LocalLauncher,
    RunnerHandle,
    StreamLauncher,
)
from .launch._sandbox import Sandbox
from .manager import Manager, ManagerStatistics, PoolFull, PoolOptions, open_manager

__all__ = [
    "CodeError",
    "ErrorInfo",
    "ExecResult",
    "ExecpyError",
    "ForkServer",
    "ForkServerLauncher",
    "InputRequest",
    "Launcher",
    "Limits",
    "LocalLauncher",
    "LocalProtocolError",
    "Manager",
    "ManagerStatistics",
    "Operation",
    "OperationRejected",
    "Output",
    "PoolFull",
    "PoolOptions",
    "ProtocolError",
    "RemoteProtocolError",
    "Runner",
    "RunnerDied",
    "RunnerHandle",
    "RunnerOptions",
    "RunnerStartError",
    "RunnerStatistics",
    "Sandbox",
    "StreamLauncher",
    "connect_runner",
    "open_manager",
    "open_runner",
    "start_runner",
]
