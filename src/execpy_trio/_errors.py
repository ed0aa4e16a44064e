"""The public error classes.

The protocol package's errors *are* the public protocol errors (the runner uses them too
and must not import Trio), so they are re-exported here unchanged; the rest are defined on
top of :class:`ExecpyError`. Each message says what state things were in, what was
expected, what came instead, and what to do.
"""

from __future__ import annotations

import signal as _signal
import sys
from typing import TYPE_CHECKING, NoReturn

from .protocol import ExecpyError, LocalProtocolError, ProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from ._results import ExecResult

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "CodeError",
    "ExecpyError",
    "LocalProtocolError",
    "OperationRejected",
    "ProtocolError",
    "RemoteProtocolError",
    "RunnerDied",
    "RunnerStartError",
]


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = _signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def _format_tail(lines: tuple[str, ...], whose: str = "its") -> str:
    if not lines:
        return f"{whose} stderr was empty"
    return f"last lines of {whose} stderr:\n    " + "\n    ".join(lines)


class RunnerStartError(ExecpyError):
    """The runner could not be started: spawn failed, no valid welcome in time, or a
    protocol version mismatch.

    ``stderr_tail`` holds the last lines the runner wrote to its own stderr (often the
    reason), ``returncode`` its exit status if it had exited. ``retryable`` is False when
    starting again with the same options would fail the same way (the command does not
    exist, a preload module fails to import, the runner refuses the limits or speaks
    another protocol version); True for what may pass (a timeout, a crash, EAGAIN).
    """

    def __init__(
        self,
        message: str,
        *,
        stderr_tail: tuple[str, ...] = (),
        returncode: int | None = None,
        retryable: bool = True,
    ) -> None:
        self.stderr_tail = stderr_tail
        self.returncode = returncode
        self.retryable = retryable
        if stderr_tail:
            tail = _format_tail(stderr_tail, "the runner's")
            message = f"{message}\n{tail[0].upper()}{tail[1:]}"
        super().__init__(message)


class RunnerDied(ExecpyError):
    """The runner process ended (or its connection broke) while it was needed.

    Attributes: ``pid``; ``returncode`` (None if unknown, negative for a signal, like
    :attr:`subprocess.Popen.returncode`); ``signal`` (the signal number that killed it, or
    None); ``stderr_tail`` (the last lines of the runner's own stderr); ``op`` (a short
    description of the operation it was running, or None if it was idle); ``reason`` (why
    the client thinks it died).
    """

    def __init__(
        self,
        *,
        pid: int | None,
        returncode: int | None,
        stderr_tail: tuple[str, ...],
        op: str | None,
        reason: str,
    ) -> None:
        self.pid = pid
        self.returncode = returncode
        self.signal = -returncode if returncode is not None and returncode < 0 else None
        self.stderr_tail = stderr_tail
        self.op = op
        self.reason = reason
        who = f"runner (pid {pid})" if pid is not None else "runner"
        doing = f"while running {op}" if op is not None else "while idle"
        super().__init__(
            f"the {who} died {doing}: {reason}; {describe_exit(returncode)}; "
            f"{_format_tail(stderr_tail)}\nThis runner cannot be used any more: start a new "
            "one."
        )


class CodeError(ExecpyError):
    """The user's code did not finish with status "ok". ``result`` is the ExecResult."""

    def __init__(self, result: ExecResult) -> None:
        self.result = result
        if result.error is not None:
            detail = result.error.traceback.rstrip() or (
                f"{result.error.type}: {result.error.message}"
            )
            text = f"the code failed with {result.error.type}: {result.error.message}\n{detail}"
        else:
            text = f"the code finished with status {result.status!r} instead of 'ok'"
        super().__init__(text)


class OperationRejected(ProtocolError):
    """The runner refused an operation before starting it (a non-fatal ``error`` naming
    the op). ``code`` is the runner's error code, e.g. ``busy``. The runner stays usable.
    """

    def __init__(self, op: int, code: str, message: str) -> None:
        self.op = op
        self.code = code
        super().__init__(
            f"the runner rejected op {op} ({code}): {message}; nothing ran. "
            "Fix the request (or, for 'busy', wait for the running op) and try again",
            error_code=code,
        )


def unwrap_group(exc: BaseException, *, levels: int | None = None) -> BaseException:
    """The one real failure inside ``exc``, if there is exactly one; else ``exc``.

    Trio nurseries wrap everything in ExceptionGroups; a user who made one call that failed
    one way should get that one exception. Cancelled leaves are dropped when there is a
    single other failure (the enclosing scope re-delivers the cancellation if it still
    applies). A group of only Cancelled collapses to one Cancelled.

    ``levels`` bounds how many groups are opened: 1 around a user's code, so that the
    user's own ExceptionGroup reaches them as they raised it.
    """
    import trio

    current: BaseException = exc
    while isinstance(current, BaseExceptionGroup):
        if levels is not None:
            if levels == 0:
                break
            levels -= 1
            leaves: list[BaseException] = list(current.exceptions)
        else:
            leaves = list(_leaves(current))
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            current = real[0]
        elif not real and leaves:
            current = leaves[0]
        else:
            break
    return current


def raise_unwrapped(group: BaseException, *, levels: int | None = None) -> NoReturn:
    """Raise :func:`unwrap_group` of ``group``, keeping the inner exception's own
    ``__cause__``/``__context__`` (a bare ``raise`` in an ``except`` would overwrite them)."""
    inner = unwrap_group(group, levels=levels)
    if inner is group:
        raise group
    saved = (inner.__context__, inner.__cause__, inner.__suppress_context__)
    try:
        raise inner
    finally:
        inner.__context__, inner.__cause__, inner.__suppress_context__ = saved
        del inner, group


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        sub: BaseException
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]
