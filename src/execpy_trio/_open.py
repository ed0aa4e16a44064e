"""Getting a :class:`Runner`: ``open_runner``, ``start_runner``, ``connect_runner``, and the
supervising task behind all three.

The supervising task owns one runner from launch to exit: it enters the launcher's
context (which owns the runner's process and its watcher tasks), performs the handshake
(bounded by ``handshake_timeout``), runs the transport's reader and the handle's watcher in
its nursery, and, when the runner is closed or its owner's scope is cancelled, runs the
session's bounded shutdown, shielded. Nothing it starts outlives it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio

from ._errors import RemoteProtocolError, RunnerStartError, raise_unwrapped
from ._options import RunnerOptions, resolve_options
from ._session import EXIT_WAIT, Runner
from ._tasks import ShieldedServices
from ._transport import Transport, TransportBroken
from .launch import Launcher, LocalLauncher, RunnerHandle, StreamLauncher
from .protocol import PROTOCOL_VERSION, Hello, Welcome

if TYPE_CHECKING:
    from trio.abc import Stream
    from typing_extensions import Unpack

    from ._options import OptionKeywords

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["connect_runner", "open_runner", "start_runner"]

#: Options that say how to start a process: meaningless for an already connected stream.
_LAUNCH_OPTIONS = frozenset({"command", "stdio", "env", "inherit_env", "cwd", "sandbox"})


def _hello(max_frame: int, options: RunnerOptions) -> Hello:
    from . import __version__

    limits = options.limits.to_wire() if options.limits is not None else None
    return Hello(
        PROTOCOL_VERSION, "execpy-trio", __version__, max_frame, (), limits, options.preload
    )


def _check_welcome(welcome: Welcome, hello: Hello) -> str | None:
    """Why the runner cannot serve what the hello asked for, or None."""
    who = (
        f"{welcome.impl_name} {welcome.impl_version}, protocol "
        f"{welcome.version[0]}.{welcome.version[1]}"
    )
    if hello.limits is not None and (
        "limits" not in welcome.capabilities or welcome.limits != hello.limits
    ):
        return (
            f"the runner ({who}) does not apply the limits asked for: asked {hello.limits}, "
            f"it applies {welcome.limits or 'none'}; a runner of protocol 1.1 with the "
            "'limits' capability is needed (never run limited code on a runner without them)"
        )
    if hello.preload and "preload" not in welcome.capabilities:
        return (
            f"the runner ({who}) cannot preload modules (no 'preload' capability); "
            "import them in a first exec instead"
        )
    return None


async def _handshake(handle: RunnerHandle, transport: Transport, options: RunnerOptions) -> None:
    failure: BaseException | None = None
    limit = options.handshake_timeout
    refused: str | None = None
    with trio.move_on_after(limit) as scope:
        try:
            hello = _hello(transport.conn.max_frame, options)
            welcome = await transport.handshake(hello)
            refused = _check_welcome(welcome, hello)
            if refused is None:
                return
        except (RemoteProtocolError, TransportBroken, trio.ClosedResourceError) as exc:
            failure = exc
    # Failed: stop the runner so its diagnostics are complete and its exit status known.
    if isinstance(failure, RemoteProtocolError):
        # It said why (a fatal error) and exits by itself, with a status worth reporting.
        with trio.move_on_after(EXIT_WAIT):
            await handle.wait()
    handle.kill()
    with trio.move_on_after(EXIT_WAIT):
        await handle.wait()
    if refused is not None:
        raise RunnerStartError(
            f"{refused}; runner: {handle.description}",
            stderr_tail=handle.stderr_tail(),
            returncode=handle.returncode,
            retryable=False,
        )
    if scope.cancelled_caught:
        what = (
            f"no welcome from the runner within handshake_timeout={limit} s (state "
            f"{transport.conn.state})"
        )
        advice = "check the command starts an execpy runner, or raise handshake_timeout"
        if options.preload:
            advice = (
                f"it was to import the preload modules {list(options.preload)} first: does "
                "one of them hang or take long to import? Otherwise " + advice
            )
    elif isinstance(failure, RemoteProtocolError) and failure.error_code in (
        "preload-failed",
        "limits-failed",
    ):
        what = f"the runner could not be set up: {failure}"
        advice = "fix the preload modules or the limits"
    elif isinstance(failure, RemoteProtocolError):
        what = f"the handshake failed: {failure}"
        advice = "make sure the runner and the client come from matching execpy versions"
    else:
        what = "the runner closed the connection before its welcome"
        advice = "see its stderr below"
    code = handle.returncode
    exit_note = f" (it exited with status {code})" if code is not None else ""
    raise RunnerStartError(
        f"{what}{exit_note}; runner: {handle.description}; {advice}",
        stderr_tail=handle.stderr_tail(),
        returncode=code,
        # It answered, and refused or failed its set-up: the same options fail again.
        retryable=not isinstance(failure, RemoteProtocolError),
    ) from failure


async def _supervise(
    launcher: Launcher,
    options: RunnerOptions,
    *,
    task_status: trio.TaskStatus[Runner] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own one runner from launch to exit: the task behind all three ways to get one."""
    runner: Runner | None = None
    try:
        async with launcher.launch(options) as handle:
            transport = Transport(
                handle.stream,
                max_frame=options.max_frame,
                op_buffer=options.op_buffer,
                write_timeout=options.write_timeout,
            )
            runner = Runner(handle, transport, options)
            # The reader and the watcher must outlive a cancellation of the owner's scope:
            # the shutdown needs them to interrupt the running op (read its cancelled
            # completion, notice the runner's end). They run shielded, and stop when the
            # shutdown has closed the stream or when their scopes are cancelled below.
            services = ShieldedServices()
            async with trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(services.run, runner._watch_handle)
                    await _handshake(handle, transport, options)
                    nursery.start_soon(services.run, transport.run_reader, runner._decide_end)
                    task_status.started(runner)
                    await runner._close_requested.wait()
                except trio.Cancelled:
                    # The owner's scope is cancelled: no polite shutdown (the op, if any,
                    # is still interrupted first).
                    runner._forceful_close = True
                    raise
                finally:
                    with trio.CancelScope(shield=True):
                        await runner._shutdown()
                    services.cancel()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
    finally:
        if runner is not None:
            runner._finished.set()


def default_launcher(options: RunnerOptions) -> Launcher:
    """Where ``open_runner``/``start_runner`` start a runner when no launcher is given: a
    new local process (the test suite swaps this to run its runner tests once per
    launcher)."""
    return LocalLauncher()


def check_launcher(launcher: object) -> None:
    """A TypeError, before anything starts, for a ``launcher=`` that is not one."""
    if launcher is None or isinstance(launcher, Launcher):
        return
    if isinstance(launcher, type) and issubclass(launcher, Launcher):
        raise TypeError(
            f"launcher must be a Launcher instance, not the class {launcher.__name__}: "
            f"write launcher={launcher.__name__}()"
        )
    raise TypeError(
        f"launcher must be an execpy_trio.Launcher (such as LocalLauncher()), not {launcher!r}"
    )


async def _start_in(nursery: trio.Nursery, launcher: Launcher, options: RunnerOptions) -> Runner:
    try:
        runner: Runner = await nursery.start(_supervise, launcher, options)
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
    return runner


async def start_runner(
    nursery: trio.Nursery,
    options: RunnerOptions | None = None,
    *,
    launcher: Launcher | None = None,
    **overrides: Unpack[OptionKeywords],
) -> Runner:
    """Start a runner whose supervising task lives in ``nursery``; return it when ready.

    The runner lives until ``await runner.aclose()`` or until ``nursery`` is cancelled
    (then its op, if any, is interrupted and it is killed). Options as for
    :func:`open_runner`. Raises RunnerStartError. Cancellation while starting kills the
    half-started runner.
    """
    opts = resolve_options(options, overrides)
    check_launcher(launcher)
    return await _start_in(nursery, launcher or default_launcher(opts), opts)


@contextlib.asynccontextmanager
async def _runner_scope(launcher: Launcher, options: RunnerOptions) -> AsyncIterator[Runner]:
    try:
        async with trio.open_nursery() as nursery:
            runner = await _start_in(nursery, launcher, options)
            try:
                yield runner
            finally:
                await runner.aclose()
    except BaseExceptionGroup as group:
        raise_unwrapped(group, levels=1)  # only our nursery's group: the user's stays whole


@contextlib.asynccontextmanager
async def open_runner(
    options: RunnerOptions | None = None,
    *,
    launcher: Launcher | None = None,
    **overrides: Unpack[OptionKeywords],
) -> AsyncIterator[Runner]:
    """Start a runner, yield a :class:`Runner`, and shut it down at the end.

    ``options`` is a :class:`RunnerOptions`; keywords (the same names) override its
    fields. ``launcher`` says where the runner lives: by default a local child process,
    ``sys.executable -m execpy_trio.runner --fd N`` over a private socketpair (see
    :class:`RunnerOptions` for ``command``, ``stdio``, ``env``, ``inherit_env``, ``cwd``,
    the timeouts and the memory bounds).

    Raises RunnerStartError; ValueError/TypeError for bad options (before anything
    starts). Cancellation: while starting, the half-started runner is killed. At the end
    of the block the shutdown is shielded and bounded, so no process is left behind; when
    the block is left by cancellation (a deadline around ``open_runner`` itself), a
    running op is interrupted first (its ``result`` says "cancelled"), then the runner is
    killed without the polite shutdown: the block is left within about ``cancel_grace``.
    """
    opts = resolve_options(options, overrides)
    check_launcher(launcher)
    async with _runner_scope(launcher or default_launcher(opts), opts) as runner:
        yield runner


@contextlib.asynccontextmanager
async def connect_runner(
    stream: Stream,
    options: RunnerOptions | None = None,
    **overrides: Unpack[OptionKeywords],
) -> AsyncIterator[Runner]:
    """Speak the protocol over ``stream``, already connected to a runner; yield a Runner.

    For tests (``trio.testing.memory_stream_pair``) and custom transports (a Unix socket
    to a runner started elsewhere). The stream is closed at the end. There is no process
    to kill: "killing" the runner (cancel grace expired) closes the stream, and RunnerDied
    has no exit status. The options that start a process (command, stdio, env,
    inherit_env, cwd) do not apply (TypeError). Raises RunnerStartError if the handshake
    fails. Cancellation as for :func:`open_runner`.
    """
    misplaced = sorted(_LAUNCH_OPTIONS & set(overrides))
    if misplaced:
        raise TypeError(
            f"connect_runner() got process options {misplaced}: a connected stream has no "
            "process to configure; use open_runner() to start one"
        )
    opts = resolve_options(options, overrides)
    async with _runner_scope(StreamLauncher(stream), opts) as runner:
        yield runner
