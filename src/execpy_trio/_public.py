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
from .client import (
    ErrorInfo,
    ExecResult,
    InputRequest,
    Operation,
    Output,
    Runner,
    RunnerStatistics,
    connect_runner,
    open_runner,
    start_runner,
)

__all__ = [
    "CodeError",
    "ErrorInfo",
    "ExecResult",
    "ExecpyError",
    "InputRequest",
    "LocalProtocolError",
    "Operation",
    "OperationRejected",
    "Output",
    "ProtocolError",
    "RemoteProtocolError",
    "Runner",
    "RunnerDied",
    "RunnerStartError",
    "RunnerStatistics",
    "connect_runner",
    "open_runner",
    "start_runner",
]
