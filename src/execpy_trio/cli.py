"""The ``execpy`` command.

``execpy run FILE`` / ``execpy run -c CODE`` runs the code in a fresh runner and streams
its output live (the code's stdout to stdout, its stderr to stderr). Input requests are
answered from this terminal's stdin (without echo for ``getpass`` when stdin is a
terminal). Ctrl-C interrupts the code (KeyboardInterrupt in the runner); a second Ctrl-C
kills the runner. Like the interactive interpreter, the value of a final expression
statement is printed (``--no-value`` turns that off).

Exit status: 0 the code finished; 1 it raised (the traceback is printed to stderr, as
Python prints it); 2 usage error, or the runner failed to start, died or broke the
protocol; 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import shlex
import signal
import sys
from typing import TYPE_CHECKING

EXIT_OK = 0
EXIT_CODE_ERROR = 1
EXIT_FAILURE = 2
EXIT_INTERRUPTED = 130

if TYPE_CHECKING:
    from ._results import ExecResult, InputRequest
    from ._session import Runner

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="execpy", description="Run Python code in an execpy runner process."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a file or a string of code in a fresh runner",
        description="Run FILE (or -c CODE) in a fresh runner, streaming its output. "
        "Exit status: 0 ok, 1 the code raised, 2 runner or protocol failure, 130 Ctrl-C.",
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", metavar="FILE", help="the Python file to run")
    source.add_argument("-c", dest="code", metavar="CODE", help="the code to run")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``execpy`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.code is not None:
        code = args.code
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                code = f.read()
        except OSError as exc:
            print(f"execpy: cannot read {args.file!r}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
    if args.trace:
        logging.basicConfig(stream=sys.stderr, format="execpy: %(name)s: %(message)s")
        logging.getLogger("execpy_trio.frames").setLevel(logging.DEBUG)
    import trio

    try:
        return trio.run(_run, code, args)
    except KeyboardInterrupt:
        print("execpy: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


async def _run(code: str, args: argparse.Namespace) -> int:
    from ._errors import ProtocolError, RunnerDied, RunnerStartError
    from ._open import open_runner
    from ._options import RunnerOptions

    options = RunnerOptions()
    if args.runner:
        options = options.replace(command=shlex.split(args.runner), stdio=True)
    if args.trace:
        options = options.replace(env={"EXECPY_TRACE": "1"})
    try:
        async with open_runner(options) as runner:
            result = await _stream(runner, code)
    except (RunnerStartError, RunnerDied, ProtocolError) as exc:
        print(f"execpy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if result.status == "ok":
        if result.value is not None and not args.no_value:
            print(result.value, flush=True)
        return EXIT_OK
    if result.error is not None:
        sys.stderr.write(result.error.traceback or f"{result.error.type}: {result.error.message}")
        if not result.error.traceback.endswith("\n"):
            sys.stderr.write("\n")
        sys.stderr.flush()
    if result.status == "cancelled":
        if result.error is None:
            print("KeyboardInterrupt", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_CODE_ERROR


async def _stream(runner: Runner, code: str) -> ExecResult:
    import trio

    from ._errors import raise_unwrapped
    from ._results import Output

    input_scope: trio.CancelScope | None = None
    try:
        async with trio.open_nursery() as nursery:
            async with runner.exec_stream(code) as op:

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
                            line = await _read_line(event)
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


async def _read_line(request: InputRequest) -> str | None:
    """One line from the terminal; None at end of input (or if interrupted)."""
    import trio

    def read() -> str | None:
        if request.password and sys.stdin.isatty():
            try:
                return getpass.getpass(request.prompt)
            except EOFError:
                return None
        sys.stdout.write(request.prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
        return line if line else None

    result: str | None = await trio.to_thread.run_sync(read, abandon_on_cancel=True)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
