"""Section 6.5: output capture, order, streaming and backpressure; section 8: backpressure
on the runner's answers to requests."""

from __future__ import annotations

import trio

from ...protocol import Done, Output, Pong
from .._context import Context, require
from .._peer import CheckFailed, Peer, describe
from .._registry import MUST, SHOULD, check
from ._util import expect_status

_BY_ANY_MEANS = (
    "Everything the op's code writes to file descriptors 1 and 2, by any means (the "
    "language's print, direct writes to the descriptors, child processes that inherited "
    "them), is sent as `output` messages, **in the order it was written within each stream**"
)


@check(
    "6.5/print",
    MUST,
    "what print() and sys.stderr.write() write arrives as output on stdout and stderr, "
    "before the done",
    "Every byte written before the code finished is sent before the op's `done`.",
)
async def print_output(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run(
        "import sys\nprint('out')\nsys.stderr.write('err\\n')\nprint('more', end='')"
    )
    expect_status(result, "ok")
    require(result.stdout == b"out\nmore", "stdout b'out\\nmore'", repr(result.stdout))
    require(result.stderr == b"err\n", "stderr b'err\\n'", repr(result.stderr))


@check(
    "6.5/fd-writes",
    MUST,
    "writes to file descriptors 1 and 2 arrive, in the order written within each stream",
    _BY_ANY_MEANS,
    needs=("fd-capture",),
)
async def fd_writes(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import os\n"
        "for i in range(200):\n"
        "    os.write(1, b'%d,' % i)\n"
        "    os.write(2, b'e%d,' % i)\n"
    )
    result = await peer.run(code)
    expect_status(result, "ok")
    want_out = b"".join(b"%d," % i for i in range(200))
    want_err = b"".join(b"e%d," % i for i in range(200))
    require(result.stdout == want_out, "stdout 0,1,...,199,", repr(result.stdout[:200]))
    require(result.stderr == want_err, "stderr e0,e1,...,e199,", repr(result.stderr[:200]))


@check(
    "6.5/child-output",
    MUST,
    "output of child processes (their stdout and stderr) arrives",
    _BY_ANY_MEANS,
    needs=("fd-capture",),
)
async def child_output(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import subprocess, sys\n"
        "subprocess.run(['echo', 'child out'])\n"
        "child = 'import sys; sys.stderr.write(\"child err\\\\n\")'\n"
        "subprocess.run([sys.executable, '-c', child])\n"
    )
    result = await peer.run(code)
    expect_status(result, "ok")
    require(result.stdout == b"child out\n", "stdout b'child out\\n'", repr(result.stdout))
    require(result.stderr == b"child err\n", "stderr b'child err\\n'", repr(result.stderr))


@check(
    "6.5/order-written",
    MUST,
    "bytes arrive in the order they reach the descriptor: a buffered print after a direct "
    "write, child output between the two",
    "So `print('p1', end='')` followed by `os.write(1, b'|w2\\n')` arrives as `|w2\\np1`",
    needs=("fd-capture",),
)
async def order_written(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run("import os\nprint('p1', end='')\nos.write(1, b'|w2\\n')")
    expect_status(result, "ok")
    require(result.stdout == b"|w2\np1", "stdout b'|w2\\np1'", repr(result.stdout))
    code = (
        "import os, subprocess, sys\n"
        "print('a', flush=True)\n"
        "subprocess.run(['echo', 'b'])\n"
        "os.write(1, b'c\\n')\n"
        "print('d')\n"
    )
    result = await peer.run(code)
    require(
        result.stdout == b"a\nb\nc\nd\n", "stdout a, b, c, d in that order", repr(result.stdout)
    )


@check(
    "6.5/streaming",
    SHOULD,
    "output arrives while the op is still running, not held back until its end",
    "a runner SHOULD NOT hold output back until the end",
)
async def streaming(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op("import time\nprint('first', flush=True)\ntime.sleep(60)")
    await peer.wait_output(op, b"first\n")


@check(
    "6.5/large-output",
    SHOULD,
    "32 MB of output arrives complete and in order",
    "in the order it was written within each stream",
    min_timeout=15.0,
)
async def large_output(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import sys\n"
        "for i in range(32):\n"
        "    sys.stdout.write(('%02d' % i) * (1 << 19))\n"
        "sys.stdout.flush()\n"
    )
    op = await peer.start_op(code)
    checker = _Sequence(lambda i: (b"%02d" % i) * (1 << 19), 32)
    await _stream_into(peer, op, checker)


class _Sequence:
    """Checks a stream of output against the concatenation of ``part(i)``, as it comes."""

    def __init__(self, part: object, count: int) -> None:
        self.expected = b"".join(part(i) for i in range(count))  # type: ignore[operator]
        self.at = 0

    def feed(self, data: bytes) -> None:
        want = self.expected[self.at : self.at + len(data)]
        if data != want:
            k = next(
                (i for i, (a, b) in enumerate(zip(data, want, strict=False)) if a != b), len(want)
            )
            raise CheckFailed(
                f"byte {self.at + k} of the output to be {want[k : k + 8]!r}",
                f"{data[k : k + 8]!r} (the output is lost, duplicated or out of order there)",
            )
        self.at += len(data)

    def finish(self) -> None:
        require(
            self.at == len(self.expected),
            f"{len(self.expected)} bytes of output",
            f"{self.at} bytes before the done",
        )


async def _stream_into(peer: Peer, op: int, checker: _Sequence) -> None:
    while True:
        msg = await peer.expect(f"the output and the done of op {op}", "output", "done")
        if type(msg) is Output:
            if msg.stream == "stdout":
                checker.feed(msg.data)
        elif type(msg) is Done:
            require(msg.status == "ok", "done 'ok'", describe(msg))
            checker.finish()
            return


#: Output a runner may take in while the client reads nothing, before the code's writes
#: block, that the kit still counts as bounded (pipes, frames in flight, a transport's
#: window): more is buffering without bound.
BACKPRESSURE_BOUND = 32 * 1024 * 1024


@check(
    "6.5/backpressure",
    MUST,
    "while the client reads nothing, the code's writes block within 32 MiB (the runner does "
    "not buffer without bound); once it reads, all 64 MiB arrive in order",
    "A runner MUST NOT buffer output without bound: when the client does not read, the runner "
    "stops reading its output pipes, so the writers block (backpressure).",
    min_timeout=20.0,
)
async def backpressure(ctx: Context) -> None:
    peer = await ctx.connect()
    # The kit reads nothing for 2 s. The code writes 64 MiB and reports how much it had
    # written when a write first blocked for a second: what went into buffers meanwhile.
    code = (
        "import sys, time\n"
        "ahead = -1\n"
        "written = 0\n"
        "for i in range(1024):\n"
        "    t = time.monotonic()\n"
        "    sys.stdout.write(('%08d' % i) * 8192)\n"
        "    sys.stdout.flush()\n"
        "    if ahead < 0 and time.monotonic() - t >= 1.0:\n"
        "        ahead = written\n"
        "    written += 65536\n"
        "ahead"
    )
    op = await peer.start_op(code)
    await trio.sleep(2.0)
    checker = _Sequence(lambda i: (b"%08d" % i) * 8192, 1024)
    while True:
        msg = await peer.expect(f"the output and the done of op {op}", "output", "done")
        if type(msg) is Output:
            checker.feed(msg.data)
        elif type(msg) is Done:
            checker.finish()
            require(msg.status == "ok", "done 'ok'", describe(msg))
            try:
                ahead = int(msg.value)
            except (TypeError, ValueError):
                raise CheckFailed("the code's count of bytes as the value", describe(msg)) from None
            require(
                ahead >= 0,
                "a write in the code to block while the kit read nothing for 2 s",
                "no write blocked for a second: all 64 MiB went into buffers",
            )
            require(
                ahead <= BACKPRESSURE_BOUND,
                f"the code's writes to block within {BACKPRESSURE_BOUND} bytes",
                f"they blocked only after {ahead} bytes had gone into buffers",
            )
            return


@check(
    "8/request-backpressure",
    MUST,
    "pings sent while an op prints and the client reads nothing meet backpressure, and every "
    "one is answered once the client reads",
    "When the client does not read, those answers cannot be written; the runner MUST NOT queue "
    "them without bound.",
    min_timeout=15.0,
)
async def request_backpressure(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import sys\n"
        "for i in range(256):\n"
        "    sys.stdout.write('x' * 65536)\n"
        "    sys.stdout.flush()"
    )
    await peer.start_op(code)
    sent = 0
    stop = trio.Event()

    async def flood() -> None:
        nonlocal sent
        while not stop.is_set() and sent < 200_000:
            await peer.send({"kind": "ping", "token": peer.new_token()})
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        # Backpressure: the count stops moving while the kit reads nothing.
        last = -1
        while sent != last and sent < 200_000:
            last = sent
            await trio.sleep(1.0)
        stop.set()
        if sent >= 200_000:
            raise CheckFailed(
                "the kit's writes to block while it reads nothing",
                f"{sent} pings accepted without blocking: the runner queues its answers "
                "without bound",
            )
        pongs = 0
        done = False
        while not done or pongs < sent:
            msg = await peer.expect(
                f"a pong for each of the {sent} pings, and the done", "pong", "output", "done"
            )
            if type(msg) is Pong:
                pongs += 1
            elif type(msg) is Done:
                done = True
