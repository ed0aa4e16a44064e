"""The ``execpy`` command.

``execpy run FILE [ARGS...]`` / ``execpy run - [ARGS...]`` (code from stdin) / ``execpy run
-c CODE [ARGS...]`` runs the code in a fresh runner as ``python3`` would (``sys.argv``,
``__file__``, the exit status of ``sys.exit(n)`` and ``os._exit(n)``) and streams its output
live (the code's stdout to stdout, its stderr to stderr). Input requests are
answered from this terminal's stdin (without echo for ``getpass`` when stdin is a
terminal). Ctrl-C interrupts the code (KeyboardInterrupt in the runner); a second Ctrl-C
kills the runner. Like the interactive interpreter, the value of a final expression
statement is printed (``--no-value`` turns that off).

Exit status: 0 the code finished; 1 it raised (the traceback is printed to stderr, as
Python prints it); n for ``sys.exit(n)`` or ``os._exit(n)``; 2 usage error, or the runner
failed to start, died or broke the protocol; 130 interrupted by Ctrl-C (also when a second
Ctrl-C killed the runner); 141 our stdout was closed by its reader (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
from typing import TYPE_CHECKING, Any

EXIT_OK = 0
EXIT_CODE_ERROR = 1
EXIT_FAILURE = 2
EXIT_INTERRUPTED = 130
#: Our stdout was closed by its reader (``| head``): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141

if TYPE_CHECKING:
    from ._results import ExecResult, InputRequest
    from ._session import Runner

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="execpy", description="Run Python code in an execpy runner process."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a file, stdin or a string of code in a fresh runner, as python3 would",
        usage="execpy run [options] (FILE | - | -c CODE) [ARGS...]",
        description="Run FILE (or the code on stdin with -, or -c CODE) in a fresh runner, "
        "streaming its output, with sys.argv set as python3 would set it. Exit status: 0 ok, "
        "1 the code raised, n for sys.exit(n) or os._exit(n), 2 runner or protocol "
        "failure, 130 Ctrl-C.",
    )
    run.add_argument("-c", dest="code", metavar="CODE", help="the code to run")
    run.add_argument(
        "--no-value",
        action="store_true",
        help="do not print the value of a final expression statement",
    )
    run.add_argument(
        "--runner",
        metavar="COMMAND",
        help="start the runner with COMMAND (split like a shell would) speaking the "
        "protocol on its stdin/stdout, e.g. 'ssh host python3 -m execpy_trio.runner --stdio'",
    )
    run.add_argument(
        "--trace",
        action="store_true",
        help="log every protocol frame (both sides) to stderr",
    )
    run.add_argument(
        "program",
        nargs=argparse.REMAINDER,
        metavar="FILE | - [ARGS...]",
        help="the file to run (- for stdin) and its arguments (sys.argv[1:])",
    )
    conformance = commands.add_parser(
        "conformance",
        help="check a runner (any command speaking the protocol on stdio) against the spec",
        usage="execpy conformance [--list] [--json] [--junit FILE] [-k PATTERN] [--timeout S] "
        "[--strict] -- COMMAND [ARGS...]",
        description="Check the runner that COMMAND starts (speaking the protocol on its "
        "stdin and stdout) against spec/protocol.md. Exit 0 when every MUST check passes "
        "(--strict: SHOULD too), 1 when one fails, 2 for a usage error.",
    )
    from .conformance._cli import add_arguments

    add_arguments(conformance)
    return parser, run


def _version() -> str:
    from . import __version__
    from .protocol import PROTOCOL_VERSION

    major, minor = PROTOCOL_VERSION
    return f"execpy {__version__} (protocol {major}.{minor}, Python {sys.version.split()[0]})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``execpy`` command; returns the exit status."""
    parser, run = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.version:
        print(_version())
        return EXIT_OK
    if args.command is None:
        parser.error("give a command: execpy run FILE | - | -c CODE (see execpy run --help)")
    if args.command == "conformance":
        from .conformance._cli import run as run_conformance

        return run_conformance(args)
    if extra:
        run.error(f"unrecognized arguments: {' '.join(extra)}")
    program: list[str] = args.program
    if args.code is not None:
        code = args.code
        args.argv = ["-c", *program]
        # As python3 names them: tracebacks say <string>; there is no __file__.
        args.filename, args.file = "<string>", None
    elif not program:
        run.error("give FILE, - (the code on stdin) or -c CODE")
    elif program[0] == "-":
        code = sys.stdin.read()
        args.argv = program
        args.filename = args.file = "<stdin>"
    else:
        try:
            with open(program[0], encoding="utf-8") as f:
                code = f.read()
        except OSError as exc:
            print(f"execpy: cannot read {program[0]!r}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
        args.argv = program
        # python3 (3.9 and later) makes the script's path absolute, in __file__ and in
        # tracebacks; sys.argv[0] stays as typed.
        args.filename = args.file = os.path.abspath(program[0])
    if args.trace:
        logging.basicConfig(stream=sys.stderr, format="execpy: %(name)s: %(message)s")
        logging.getLogger("execpy_trio.frames").setLevel(logging.DEBUG)
    import trio

    try:
        return trio.run(_run, code, args)
    except BaseException as exc:
        if _is_interrupt(exc):  # Ctrl-C outside an op (start-up, shutdown): one line
            print("\nexecpy: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_interrupt(e) for e in exc.exceptions)
    return False


def _exit_status_of_system_exit(message: str) -> int:
    """What python3 does with ``SystemExit(arg)``: None or an int is the status; anything
    else is printed to stderr and the status is 1."""
    if message in ("", "None"):
        return EXIT_OK
    try:
        return int(message) & 0xFF
    except ValueError:
        print(message, file=sys.stderr)
        return EXIT_CODE_ERROR


async def _run(code: str, args: argparse.Namespace) -> int:
    from ._errors import ProtocolError, RunnerDied, RunnerStartError
    from ._open import open_runner
    from ._options import RunnerOptions
    from .launch import LocalLauncher

    options = RunnerOptions()
    if args.runner:
        options = options.replace(command=shlex.split(args.runner), stdio=True)
    if args.trace:
        options = options.replace(env={"EXECPY_TRACE": "1"})
    # The runner's own diagnostics (its frame log with --trace) go to our stderr.
    launcher = LocalLauncher(echo_stderr=sys.stderr if args.trace else None)
    state = _CliState()
    try:
        async with open_runner(options, launcher=launcher) as runner:
            await runner.exec(
                "import sys as _execpy_sys\n_execpy_sys.argv = _execpy_argv\n"
                "del _execpy_sys, _execpy_argv",
                variables={"_execpy_argv": args.argv},
            )
            result = await _stream(runner, code, args, state)
    except BrokenPipeError:
        # Our stdout was closed (``| head``): end quietly, as a well-behaved filter does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except RunnerDied as exc:
        if state.killed_by_user:
            print("execpy: killed the runner (interrupted twice)", file=sys.stderr)
            return EXIT_INTERRUPTED
        if exc.returncode is not None and exc.returncode >= 0 and not exc.stderr_tail:
            return exc.returncode  # the code called os._exit(n): its status, as python3
        print(f"execpy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (RunnerStartError, ProtocolError) as exc:
        print(f"execpy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if result.status == "ok":
        if result.value is not None and not args.no_value:
            print(result.value, flush=True)
        return EXIT_OK
    error = result.error
    if error is not None and error.type == "SystemExit" and result.status == "error":
        return _exit_status_of_system_exit(error.message)
    if error is not None:
        sys.stderr.write(error.traceback or f"{error.type}: {error.message}")
        if not error.traceback.endswith("\n"):
            sys.stderr.write("\n")
        sys.stderr.flush()
    if result.status == "cancelled":
        if error is None:
            print("KeyboardInterrupt", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_CODE_ERROR


class _CliState:
    """What the interrupt handler did, for the exit status."""

    killed_by_user = False


async def _stream(
    runner: Runner, code: str, args: argparse.Namespace, state: _CliState
) -> ExecResult:
    import trio

    from ._errors import raise_unwrapped
    from ._results import Output

    input_scope: trio.CancelScope | None = None
    stdin = _StdinLines()
    try:
        async with trio.open_nursery() as nursery:
            variables = {"__file__": args.file} if args.file is not None else None
            async with runner.exec_stream(code, variables=variables, filename=args.filename) as op:

                async def on_interrupt() -> None:
                    # First Ctrl-C: interrupt the code; second: kill the runner.
                    with trio.open_signal_receiver(signal.SIGINT) as signals:
                        count = 0
                        async for _ in signals:
                            count += 1
                            if input_scope is not None:
                                input_scope.cancel()
                            if count == 1:
                                print(
                                    "\nexecpy: interrupting (Ctrl-C again to kill)", file=sys.stderr
                                )
                                await op.cancel()
                            else:
                                state.killed_by_user = True
                                await runner.kill("interrupted twice from the terminal")
                                return

                nursery.start_soon(on_interrupt)
                async for event in op:
                    if isinstance(event, Output):
                        out = sys.stdout if event.stream == "stdout" else sys.stderr
                        out.flush()
                        out.buffer.write(event.data)
                        out.buffer.flush()
                    else:
                        # Stays None if Ctrl-C cancels the read: then answer with end of
                        # input (the interrupted request is still outstanding).
                        line: str | None = None
                        with trio.CancelScope() as input_scope:
                            line = await stdin.read_line(event)
                        input_scope = None
                        if op.finished:  # pragma: no cover - interrupted meanwhile
                            continue
                        if line is None:
                            await op.send_eof()
                        else:
                            await op.send_input(line)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
    return op.result


class _StdinLines:
    """Lines of our stdin, read in the event loop: a Ctrl-C cancels the read outright, so
    no thread is left blocked on the terminal to swallow the next line typed, and the
    terminal's echo, turned off for a password, is always restored. What arrives after a
    line (a pipe delivers many at once) is kept for the next request."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # no stdin at all: every request gets end of input
        self._buffer = bytearray()
        self._eof = self._fd is None
        self._pollable = True

    def _isatty(self) -> bool:
        return self._fd is not None and os.isatty(self._fd)

    async def read_line(self, request: InputRequest) -> str | None:
        """One line (without its newline); None at end of input. Cancellation: nothing is
        lost (what was read stays buffered) and the echo is restored."""
        hide = request.password and self._isatty()
        # Echo off before the prompt shows: nothing typed after it can be seen.
        saved = self._echo_off() if hide else None
        try:
            out = sys.stderr if hide else sys.stdout
            out.write(request.prompt)
            out.flush()
            return await self._line()
        finally:
            if saved is not None:
                self._restore(saved)
                sys.stderr.write("\n")  # the newline the hidden input did not echo
                sys.stderr.flush()

    async def _line(self) -> str | None:
        import trio

        while b"\n" not in self._buffer and not self._eof:
            assert self._fd is not None
            if self._pollable:
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except OSError:  # a regular file or /dev/null: reads never block anyway
                    self._pollable = False
            else:
                await trio.lowlevel.checkpoint()
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the terminal went away
                data = b""
            if data:
                self._buffer += data
            else:
                self._eof = True
        if not self._buffer:
            return None
        end = self._buffer.find(b"\n")
        end = len(self._buffer) if end < 0 else end + 1
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line.decode("utf-8", "replace")

    def _echo_off(self) -> list[Any] | None:
        import termios

        assert self._fd is not None
        try:
            saved = termios.tcgetattr(self._fd)
            quiet = termios.tcgetattr(self._fd)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(self._fd, termios.TCSADRAIN, quiet)
        except termios.error:
            return None
        return saved

    def _restore(self, saved: list[Any]) -> None:
        import termios

        assert self._fd is not None
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
