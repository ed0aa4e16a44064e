"""Section 5.1: resource limits asked for in the hello."""

from __future__ import annotations

from ...protocol import Done
from .._context import Context, require
from .._peer import CheckFailed
from .._registry import MUST, SHOULD, check
from ._util import expect_status, expect_value, still_works


@check(
    "5.1/output-limit",
    MUST,
    "over output_bytes, exactly that many bytes arrive and the op ends 'error', "
    "OutputLimitExceeded; the next op works and is charged afresh",
    "The first `output_bytes` bytes are sent; the rest is dropped, the code is stopped with "
    '`OutputLimitExceeded` (status `"error"`)',
    needs=("limits",),
    since=(1, 1),
)
async def output_limit(ctx: Context) -> None:
    peer = await ctx.connect(limits={"output_bytes": 1000})
    result = await peer.run(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 300)\n    sys.stderr.write('y' * 7)"
    )
    expect_status(result, "error", "OutputLimitExceeded")
    got = len(result.stdout) + len(result.stderr)
    require(got == 1000, "exactly 1000 bytes of output", f"{got} bytes")
    result = await peer.run("print('x' * 99)")
    expect_status(result, "ok")
    require(
        result.stdout == b"x" * 99 + b"\n", "the next op's 100 bytes", repr(result.stdout[:120])
    )


@check(
    "5.1/cpu-limit",
    MUST,
    "over cpu_seconds, a busy loop, and a busy child process, end the op 'error', "
    "CPULimitExceeded; the next op works",
    "Past it the op's code is stopped with an exception of type `CPULimitExceeded` (status "
    '`"error"`), and its child processes are killed.',
    needs=("limits",),
    since=(1, 1),
)
async def cpu_limit(ctx: Context) -> None:
    peer = await ctx.connect(limits={"cpu_seconds": 0.5})
    expect_status(await peer.run("while True:\n    x = 1"), "error", "CPULimitExceeded")
    await still_works(peer)
    code = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'while True: pass'])"
    expect_status(await peer.run(code), "error", "CPULimitExceeded")
    await still_works(peer)


@check(
    "5.1/cpu-limit-ignored",
    MUST,
    "code that catches CPULimitExceeded and goes on spinning is ended with the runner, within "
    "seconds",
    "the runner MUST NOT let an op run on unbounded past its budget",
    needs=("limits",),
    since=(1, 1),
)
async def cpu_limit_ignored(ctx: Context) -> None:
    peer = await ctx.connect(limits={"cpu_seconds": 0.5})
    code = (
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            x = 1\n"
        "    except BaseException:\n"
        "        pass"
    )
    op = await peer.start_op(code)
    # Either a done (the runner stopped it) or the end of the stream (it ended with the
    # runner) will do; going on spinning will not.
    while True:
        msg = await peer.receive(f"op {op} to be stopped within the check's time")
        if msg is None or type(msg) is Done:
            break
    if msg is None:
        await peer.expect_exit("the runner to exit")


@check(
    "5.1/memory-limit",
    MUST,
    "over memory, the op ends 'error', MemoryError; the next op works",
    'User code past it gets `MemoryError`, an ordinary `"error"` result',
    needs=("limits",),
    since=(1, 1),
)
async def memory_limit(ctx: Context) -> None:
    peer = await ctx.connect(limits={"memory": 1 << 30})
    expect_status(await peer.run("b = b'x' * (2 << 30)"), "error", "MemoryError")
    await still_works(peer)
    expect_value(await peer.run("len(b'y' * (1 << 20))"), "1048576")


@check(
    "5.1/open-files",
    SHOULD,
    "open_files lets the code open about that many files, then EMFILE",
    "file descriptors the user's code may open, on top of those the runner holds itself",
    needs=("limits",),
    since=(1, 1),
)
async def open_files(ctx: Context) -> None:
    peer = await ctx.connect(limits={"open_files": 32})
    code = (
        "import errno, os\n"
        "fds = []\n"
        "try:\n"
        "    while len(fds) < 1000:\n"
        "        fds.append(os.open(os.devnull, os.O_RDONLY))\n"
        "except OSError as exc:\n"
        "    assert exc.errno == errno.EMFILE, exc\n"
        "for fd in fds:\n"
        "    os.close(fd)\n"
        "len(fds)"
    )
    result = await peer.run(code)
    expect_status(result, "ok")
    assert result.done is not None
    try:
        opened = int(result.done.value)
    except (TypeError, ValueError):
        raise CheckFailed("the number of files opened as the value", result.describe()) from None
    require(24 <= opened <= 40, "about 32 files opened before EMFILE", f"{opened}")
