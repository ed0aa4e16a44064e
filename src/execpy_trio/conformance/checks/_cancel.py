"""Section 6.7: cancel."""

from __future__ import annotations

from .._context import Context, require
from .._peer import Peer, describe
from .._registry import MUST, check
from ._util import expect_status, expect_value, still_works

_INTERRUPTS = (
    "If that op is running, the runner interrupts the code (in Python: `KeyboardInterrupt` "
    "raised in the thread running it, including while it sleeps, waits for input, or waits "
    'for a child process) and the op ends with `done` `status: "cancelled"`, after its '
    "output."
)


async def _cancel_when_started(peer: Peer, code: str) -> None:
    """Run ``code`` (which prints 'started' first), cancel it, expect 'cancelled'."""
    op = await peer.start_op(code)
    await peer.wait_output(op, b"started\n")
    await peer.send({"kind": "cancel", "op": op})
    result = await peer.collect(op, what=f"the done 'cancelled' of op {op} after its cancel")
    expect_status(result, "cancelled")
    await still_works(peer)


@check(
    "6.7/cancel-tight-loop",
    MUST,
    "cancel interrupts a busy loop: done 'cancelled' after the op's output; the runner goes on",
    _INTERRUPTS,
    needs=("interrupt",),
)
async def cancel_tight_loop(ctx: Context) -> None:
    peer = await ctx.connect()
    await _cancel_when_started(peer, "print('started', flush=True)\nwhile True:\n    x = 1")


@check(
    "6.7/cancel-sleep",
    MUST,
    "cancel interrupts time.sleep()",
    _INTERRUPTS,
    needs=("interrupt",),
)
async def cancel_sleep(ctx: Context) -> None:
    peer = await ctx.connect()
    await _cancel_when_started(peer, "import time\nprint('started', flush=True)\ntime.sleep(60)")


@check(
    "6.7/cancel-input",
    MUST,
    "cancel interrupts a pending input wait",
    _INTERRUPTS,
    needs=("interrupt", "stdin"),
)
async def cancel_input(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op("input('waiting? ')", allow_stdin=True)
    await peer.expect("an input_request", "input_request")
    await peer.send({"kind": "cancel", "op": op})
    expect_status(await peer.collect(op), "cancelled")
    await still_works(peer)


@check(
    "6.7/cancel-child-wait",
    MUST,
    "cancel interrupts waiting for a child process",
    _INTERRUPTS,
    needs=("interrupt",),
)
async def cancel_child_wait(ctx: Context) -> None:
    peer = await ctx.connect()
    code = "import subprocess, sys\nprint('started', flush=True)\nsubprocess.run(['sleep', '60'])"
    await _cancel_when_started(peer, code)


@check(
    "6.7/cancel-at-once",
    MUST,
    "a cancel sent right behind its exec, before any output, still interrupts the op",
    "`cancel` asks the runner to interrupt the op named.",
    needs=("interrupt",),
)
async def cancel_at_once(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op("import time\ntime.sleep(60)")
    await peer.send({"kind": "cancel", "op": op})
    expect_status(await peer.collect(op), "cancelled")
    await still_works(peer)


@check(
    "6.7/cancel-caught",
    MUST,
    "code that catches the interruption and finishes gets the done of what really happened",
    "If the code finishes anyway (it caught the interruption, or it had already finished), the "
    "`done` reports what really happened.",
    needs=("interrupt",),
)
async def cancel_caught(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import time\n"
        "try:\n"
        "    print('started', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('caught')\n"
        "'finished'"
    )
    op = await peer.start_op(code)
    await peer.wait_output(op, b"started\n")
    await peer.send({"kind": "cancel", "op": op})
    result = await peer.collect(op)
    expect_value(result, "'finished'")


@check(
    "6.7/namespace-survives",
    MUST,
    "the namespace survives a cancel",
    "The namespace survives.",
    needs=("interrupt",),
)
async def namespace_survives(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run("kept = 41"), "ok")
    op = await peer.start_op("import time\nprint('started', flush=True)\ntime.sleep(60)")
    await peer.wait_output(op, b"started\n")
    await peer.send({"kind": "cancel", "op": op})
    expect_status(await peer.collect(op), "cancelled")
    expect_value(await peer.run("kept + 1"), "42")


@check(
    "6.7/cancel-after-done",
    MUST,
    "a cancel for an op that already ended is ignored",
    "A `cancel` for an op that already ended is ignored: it crossed with the `done` on the wire.",
)
async def cancel_after_done(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run("x = 1")
    expect_status(result, "ok")
    await peer.send({"kind": "cancel", "op": result.op})
    seen = await peer.barrier()
    require(not seen, "nothing in answer to the cancel", "; ".join(map(describe, seen)))
    await still_works(peer)


@check(
    "6.7/cancel-unknown-op",
    MUST,
    "a cancel for an op id greater than any opened gets a fatal unknown-op error",
    "A `cancel` for an op id greater than any op opened is invalid (`unknown-op`).",
)
async def cancel_unknown_op(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run("x = 1", op=1), "ok")
    await peer.send({"kind": "cancel", "op": 7}, track=False)
    await peer.expect_fatal("a fatal 'unknown-op' error", ("unknown-op",))
