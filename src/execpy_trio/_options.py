"""The one options object that configures a runner: :class:`RunnerOptions`.

``open_runner``, ``start_runner`` and ``connect_runner`` take it (``options=``) or the same
names as keywords (which override the object's fields); the manager and the blocking API
take the same object, so a runner is configured the same way wherever it comes from.
Validation happens here, once, before anything is started: a bad value is a ``ValueError``
that names the option, the value and the allowed range.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._limits import Limits
from .launch._sandbox import Sandbox
from .protocol import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME, MIN_MAX_FRAME

__all__ = ["DEFAULT_RESULT_OUTPUT_LIMIT", "RunnerOptions", "resolve_options"]

#: What an op keeps of its output for ``op.result`` by default (stdout + stderr, bytes).
DEFAULT_RESULT_OUTPUT_LIMIT: Final = 16 * 1024 * 1024


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _check_max_frame(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not MIN_MAX_FRAME <= value <= ABSOLUTE_MAX_FRAME:
        raise ValueError(
            f"max_frame must be between {MIN_MAX_FRAME} and {ABSOLUTE_MAX_FRAME}, not {value!r}"
        )


def _check_op_buffer(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"op_buffer must be at least 1, not {value!r}")


def _check_result_limit(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(
            f"result_output_limit must be a number of bytes >= 0 or None (no limit), not {value!r}"
        )


def _command(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"command must be a sequence of arguments, not the string {value!r}: "
            "split it first (shlex.split)"
        )
    command = tuple(os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in value)
    if not command:
        raise ValueError("command must not be empty")
    return command


def _check_limits(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Limits):
        raise TypeError(f"limits must be an execpy_trio.Limits or None, not {value!r}")


def _check_sandbox(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Sandbox):
        raise TypeError(f"sandbox must be an execpy_trio.Sandbox or None, not {value!r}")


def _preload(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(
            f"preload must be a sequence of module names, not the string {value!r}: "
            f"write preload=({value!r},)"
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError(f"preload: {name!r} is not a module name such as 'json' or 'os.path'")
    return names


def _env(value: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if value is None:
        return None
    env = dict(value)
    for key, item in env.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"env must map str to str; got {key!r}: {item!r}")
    return env


@attrs.frozen(kw_only=True)
class RunnerOptions:
    """How to start and talk to a runner. Every field has a default; see docs/api.md.

    Where it runs (used by the local-process launcher):

    - ``command``: the runner program; default ``[sys.executable, "-m",
      "execpy_trio.runner"]``. In fd mode an argument ``"{fd}"`` is replaced by the channel's
      descriptor number, otherwise ``--fd N`` is appended; with ``stdio=True`` it is used as
      given.
    - ``stdio``: speak the protocol over the child's stdin/stdout instead of a socketpair.
    - ``env``: environment variables for the runner. ``inherit_env`` (default True): add
      them to (and override) this process's environment; False: the runner gets exactly
      ``env`` and nothing else (nothing of ours leaks into graded code).
    - ``cwd``: the runner's working directory.

    Bounds (seconds):

    - ``handshake_timeout``: start-up, from spawn to the runner's ``welcome``.
    - ``cancel_grace``: how long a cancelled op may take to complete before the runner is
      killed.
    - ``shutdown_timeout``: the orderly exit before the runner is terminated and killed.
    - ``write_timeout``: how long a frame write may go **without progress** (no byte
      accepted) before the connection is declared broken; a slow but live peer is fine.

    Memory:

    - ``max_frame``: the largest frame this side accepts.
    - ``op_buffer``: messages buffered per op before backpressure stops the reader.
    - ``result_output_limit``: bytes of output (stdout + stderr) an op keeps for its
      ``result``; past it the result is cut (``result.truncated``) while the events of
      ``exec_stream`` still deliver everything. None keeps everything.
    - ``limits``: a :class:`Limits`, applied in the runner before any user code runs.
    - ``preload``: modules the runner imports before the first op; a failed import is a
      ``RunnerStartError`` that names the module and shows the traceback.
    - ``sandbox``: a :class:`Sandbox`: the local runner runs under bubblewrap (no network,
      a read-only filesystem but for a work directory, its own PID namespace).
    """

    command: tuple[str, ...] | None = attrs.field(default=None, converter=_command)
    stdio: bool = False
    env: Mapping[str, str] | None = attrs.field(default=None, converter=_env)
    inherit_env: bool = True
    cwd: str | os.PathLike[str] | None = None
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    cancel_grace: float = attrs.field(default=2.0, validator=_positive)
    shutdown_timeout: float = attrs.field(default=2.0, validator=_positive)
    write_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=_check_max_frame)
    op_buffer: int = attrs.field(default=16, validator=_check_op_buffer)
    result_output_limit: int | None = attrs.field(
        default=DEFAULT_RESULT_OUTPUT_LIMIT, validator=_check_result_limit
    )
    limits: Limits | None = attrs.field(default=None, validator=_check_limits)
    preload: tuple[str, ...] = attrs.field(default=(), converter=_preload)
    sandbox: Sandbox | None = attrs.field(default=None, validator=_check_sandbox)

    def replace(self, **changes: Any) -> RunnerOptions:
        """A copy with ``changes`` applied (and validated)."""
        if not changes:
            return self
        unknown = set(changes) - {a.name for a in attrs.fields(RunnerOptions)}
        if unknown:
            raise TypeError(
                f"unknown runner option(s) {sorted(unknown)}; the options are "
                f"{[a.name for a in attrs.fields(RunnerOptions)]}"
            )
        return attrs.evolve(self, **changes)


def resolve_options(options: RunnerOptions | None, overrides: Mapping[str, Any]) -> RunnerOptions:
    """``options`` (or the defaults) with the keyword ``overrides`` that were given."""
    if options is not None and not isinstance(options, RunnerOptions):
        raise TypeError(f"options must be a RunnerOptions, not {type(options).__name__}")
    base = options if options is not None else _DEFAULTS
    return base.replace(**overrides)


_DEFAULTS: Final = RunnerOptions()


if TYPE_CHECKING:
    from typing_extensions import TypedDict

    class OptionKeywords(TypedDict, total=False):
        """The fields of :class:`RunnerOptions` as keywords, for type checkers only."""

        command: Sequence[str] | None
        stdio: bool
        env: Mapping[str, str] | None
        inherit_env: bool
        cwd: str | os.PathLike[str] | None
        handshake_timeout: float
        cancel_grace: float
        shutdown_timeout: float
        write_timeout: float
        max_frame: int
        op_buffer: int
        result_output_limit: int | None
        limits: Limits | None
        preload: Sequence[str]
        sandbox: Sandbox | None
