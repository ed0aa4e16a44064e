"""The runner's command line: ``python -m execpy_trio.runner (--fd N | --stdio)
[--hello-timeout SECONDS]`` (also what a forked runner runs, with ``--fd``)."""

from __future__ import annotations

import sys

from execpy_trio.protocol import PROTOCOL_VERSION

from . import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, UsageError
from ._main import Runner

DEFAULT_HELLO_TIMEOUT = 10.0

USAGE = """\
usage: python -m execpy_trio.runner (--fd N | --stdio) [--hello-timeout SECONDS]

Run Python code for an execpy-trio client, speaking protocol {major}.{minor}.

  --fd N                  the channel is file descriptor N (a socketpair end)
  --stdio                 the channel is this process's stdin and stdout
  --hello-timeout SECONDS exit (code 4) if no hello arrives in time (default {timeout:g})

Set EXECPY_TRACE=1 to log every frame on stderr. Exit codes: 0 clean, 2 usage,
3 protocol error, 4 no hello in time, 5 channel lost during an op, 6 parent died,
70 internal error.
"""


def _parse(argv: list[str]) -> tuple[int | None, bool, float]:
    fd: int | None = None
    stdio = False
    timeout = DEFAULT_HELLO_TIMEOUT
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if name in ("--fd", "--hello-timeout"):
            if not eq:
                if not args:
                    raise UsageError(f"{name} needs a value")
                inline = args.pop(0)
            try:
                if name == "--fd":
                    fd = int(inline)
                    if fd < 0:
                        raise ValueError
                else:
                    timeout = float(inline)
                    if not timeout > 0:
                        raise ValueError
            except ValueError:
                raise UsageError(f"invalid value for {name}: {inline!r}") from None
        elif arg == "--stdio":
            stdio = True
        else:
            raise UsageError(f"unknown argument {arg!r}")
    if (fd is None) == (not stdio):
        raise UsageError("give exactly one of --fd N and --stdio")
    return fd, stdio, timeout


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(_usage())
        return EXIT_OK
    try:
        fd, stdio, timeout = _parse(argv)
    except UsageError as exc:
        sys.stderr.write(f"execpy-runner: {exc}\n{_usage()}")
        return EXIT_USAGE
    try:
        runner = Runner(fd, stdio, timeout)
    except UsageError as exc:
        sys.stderr.write(f"execpy-runner: {exc}\n")
        return EXIT_USAGE
    try:
        runner.serve()
    except BaseException as exc:
        runner.internal_error(exc)
    return EXIT_INTERNAL  # serve() only ends through runner.exit()


def _usage() -> str:
    return USAGE.format(
        major=PROTOCOL_VERSION[0], minor=PROTOCOL_VERSION[1], timeout=DEFAULT_HELLO_TIMEOUT
    )
