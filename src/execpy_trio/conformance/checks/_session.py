"""Sections 2, 6.8, 6.9, 7.3, 7.4 and 10: ping, shutdown, the end of the stream, replies
that cross, the runner's descriptors and exit statuses."""

from __future__ import annotations

import trio

from ...protocol import Done, Pong
from .._context import Context, require
from .._peer import EXIT_BOUND, CheckFailed, Peer, describe
from .._registry import MUST, SHOULD, check
from ._util import SLEEPS, SPINS, expect_status, expect_value, raw_frame, still_works

_EOF = "a runner that reads end-of-stream MUST interrupt any running op and exit (section 10)."
_PROMPTLY = (
    "The runner answers every `ping` with a `pong` carrying the same token, promptly, even "
    "while an op runs."
)
_SHUTDOWN = (
    "The runner interrupts the op in flight, if any (as for `cancel`), sends its `done`, and "
    "then closes the connection and exits (status 0)."
)
#: How long a pong may take while the runner is busy.
PONG_BOUND = 2.0


async def _eof_exits(peer: Peer) -> None:
    await peer.close_input()
    with trio.move_on_after(EXIT_BOUND) as scope:
        while await peer.receive("the end of the stream") is not None:
            pass
    if scope.cancelled_caught:
        raise CheckFailed(
            "the runner to close the stream once the kit closed its side",
            f"the stream still open {EXIT_BOUND:g} s later",
        )
    await peer.expect_exit("the runner to exit after the end of the stream")


@check("2/eof-idle", MUST, "closing the stream when idle makes the runner exit", _EOF)
async def eof_idle(ctx: Context) -> None:
    peer = await ctx.connect()
    await _eof_exits(peer)


@check(
    "2/eof-busy",
    MUST,
    "closing the stream while an op sleeps or spins makes the runner exit",
    _EOF,
)
async def eof_busy(ctx: Context) -> None:
    for code in (SLEEPS, SPINS):
        peer = await ctx.connect()
        op = await peer.start_op(code)
        await peer.wait_output(op, b"go\n")
        await _eof_exits(peer)


@check(
    "2/eof-input-wait",
    MUST,
    "closing the stream while the code waits for input makes the runner exit",
    _EOF,
    needs=("stdin",),
)
async def eof_input_wait(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.start_op("input('x? ')", allow_stdin=True)
    await peer.expect("an input_request", "input_request")
    await _eof_exits(peer)


@check(
    "7.4/truncated-frame",
    MUST,
    "the end of the stream inside a frame gets a fatal truncated-frame error; the runner exits",
    "End of stream in the middle of a frame is invalid (`truncated-frame`), in any state, even "
    "during an op: the receiver sends a fatal `truncated-frame` error",
)
async def truncated_frame(ctx: Context) -> None:
    peer = await ctx.connect()
    frame = raw_frame(b"\x82\xa4kind\xa4ping\xa5token\x01")
    await peer.send_raw(frame[:9], "the first 9 bytes of a ping frame")
    await peer.close_input()
    await peer.expect_fatal("a fatal 'truncated-frame' error", ("truncated-frame",))


@check("6.8/ping-idle", MUST, "a ping when idle gets a pong with its token", _PROMPTLY)
async def ping_idle(ctx: Context) -> None:
    peer = await ctx.connect()
    for token in (1, 2**63 - 1, 0):
        await peer.send({"kind": "ping", "token": token})
        msg = await peer.expect(f"a pong with token {token}", "pong")
        require(type(msg) is Pong and msg.token == token, f"token {token}", describe(msg))


@check(
    "6.8/ping-busy",
    MUST,
    f"pings while an op sleeps or spins get their pongs within {PONG_BOUND:g} s each",
    _PROMPTLY,
)
async def ping_busy(ctx: Context) -> None:
    for code in (SLEEPS, SPINS):
        peer = await ctx.connect()
        op = await peer.start_op(code)
        await peer.wait_output(op, b"go\n")
        for _ in range(3):
            token = peer.new_token()
            await peer.send({"kind": "ping", "token": token})
            with trio.move_on_after(PONG_BOUND) as scope:
                await peer.expect(f"a pong for ping {token}", "pong")
            if scope.cancelled_caught:
                raise CheckFailed(
                    f"a pong for ping {token} while the op runs", f"none within {PONG_BOUND:g} s"
                )


@check(
    "6.9/shutdown-idle", MUST, "shutdown when idle closes the stream; the runner exits", _SHUTDOWN
)
async def shutdown_idle(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.send({"kind": "shutdown"})
    await peer.expect_end("the runner to close the stream")
    await peer.expect_exit("the runner to exit")


# An op that is still running when the shutdown comes, and then takes a while to end: it
# catches the interruption (a runner with `interrupt`), or just runs on for 1.5 s.
_SLOW_TO_STOP = (
    "import time\n"
    "try:\n"
    "    print('go', flush=True)\n"
    "    time.sleep(60)\n"
    "except KeyboardInterrupt:\n"
    "    time.sleep(1.5)\n"
    "'stopped'"
)
_STOPS_BY_ITSELF = "import time\nprint('go', flush=True)\ntime.sleep(1.5)\n'stopped'"


def _slow_to_stop(ctx: Context) -> str:
    return _SLOW_TO_STOP if "interrupt" in ctx.capabilities else _STOPS_BY_ITSELF


@check(
    "6.9/shutdown-busy",
    MUST,
    "shutdown during an op interrupts it (or, without interrupt, waits for it), sends its "
    "done, then closes; the runner exits",
    _SHUTDOWN,
)
async def shutdown_busy(ctx: Context) -> None:
    peer = await ctx.connect()
    interrupt = "interrupt" in ctx.capabilities
    code = SLEEPS if interrupt else _STOPS_BY_ITSELF
    op = await peer.start_op(code)
    await peer.wait_output(op, b"go\n")
    await peer.send({"kind": "shutdown"})
    result = await peer.collect(op)
    if interrupt:
        expect_status(result, "cancelled")
    elif result.status != "cancelled":  # it may interrupt all the same
        expect_value(result, "'stopped'")
    await peer.expect_end("the runner to close the stream after the done")
    await peer.expect_exit("the runner to exit")


@check(
    "6.9/ping-while-closing",
    MUST,
    "a ping after shutdown, while the op finishes, gets its pong; the op gets its done; the "
    "runner exits",
    "A `ping` in CLOSING (since 1.1; in 1.0 it was invalid) is answered while the op is still "
    "finishing.",
    since=(1, 1),
)
async def ping_while_closing(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op(_slow_to_stop(ctx))
    await peer.wait_output(op, b"go\n")
    await peer.send({"kind": "shutdown"})
    await peer.send({"kind": "ping", "token": 77})
    msg = await peer.expect("a pong for ping 77 before the done", "pong")
    require(type(msg) is Pong and msg.token == 77, "token 77", describe(msg))
    result = await peer.collect(op)
    if "interrupt" in ctx.capabilities or result.status != "cancelled":
        expect_value(result, "'stopped'")
    await peer.expect_end("the runner to close the stream after the done")
    await peer.expect_exit("the runner to exit")


@check(
    "6.9/request-after-shutdown",
    MUST,
    "an exec after shutdown gets a fatal unexpected-message error and no done for the op in "
    "flight; the runner exits",
    "Anything else is invalid (`unexpected-message`): the runner sends a fatal `error`, sends "
    "no `done` for the op in flight, and exits with status 3.",
)
async def request_after_shutdown(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op(_slow_to_stop(ctx))
    await peer.wait_output(op, b"go\n")
    await peer.send({"kind": "shutdown"})
    await peer.send({"kind": "exec", "op": op + 1, "code": "x = 1"}, track=False)
    await peer.expect_fatal("a fatal 'unexpected-message' error", ("unexpected-message",))


@check(
    "6.9/eof-after-shutdown",
    MUST,
    "the end of the stream after shutdown, while the op finishes, makes the runner exit with "
    "no done",
    "it interrupts the op, sends nothing more (no `done`), and exits with status 5.",
)
async def eof_after_shutdown(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op(_slow_to_stop(ctx))
    await peer.wait_output(op, b"go\n")
    await peer.send({"kind": "shutdown"})
    await peer.close_input()
    while True:
        msg = await peer.receive("the end of the stream, with no done")
        if msg is None:
            break
        if type(msg) is Done:
            raise CheckFailed("no done after the client closed its side", describe(msg))
    await peer.expect_exit("the runner to exit")


@check(
    "7.3/reply-without-request",
    MUST,
    "an input_reply for the op in flight with no request pending gets a fatal "
    "unexpected-message error",
    "Any other combination is invalid (`unexpected-message`): for example `input_reply` with no "
    "request pending",
)
async def reply_without_request(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op(SLEEPS)
    await peer.wait_output(op, b"go\n")
    await peer.send({"kind": "input_reply", "op": op, "text": "unasked"}, track=False)
    await peer.expect_fatal("a fatal 'unexpected-message' error", ("unexpected-message",))


@check(
    "7.3/crossed-replies",
    MUST,
    "an input_reply or a cancel naming an op that already ended is ignored",
    "`cancel` or `input_reply` from the client naming an op id not greater than the last op "
    "opened: ignored (it crossed with the op's end)",
)
async def crossed_replies(ctx: Context) -> None:
    peer = await ctx.connect()
    first = await peer.run("x = 1")
    expect_status(first, "ok")
    expect_status(await peer.run("y = 2"), "ok")
    await peer.send({"kind": "input_reply", "op": first.op, "text": "late"})
    await peer.send({"kind": "cancel", "op": first.op})
    seen = await peer.barrier()
    require(not seen, "nothing in answer", "; ".join(map(describe, seen)))
    await still_works(peer)


@check(
    "10/fd-safety",
    MUST,
    "user code writing frame-like bytes to fds 1 and 2, or closing fds 0, 1 and 2, does not "
    "disturb the protocol",
    "User code may write to, read from or close 0, 1 and 2 without disturbing the protocol.",
)
async def fd_safety(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import os\n"
        "os.write(1, b'\\x00\\x00\\x00\\x05\\x81\\xa4kind\\xc0 not a frame\\n')\n"
        "os.write(2, b'\\x00\\x00\\x00\\x01\\xc1')"
    )
    expect_status(await peer.run(code), "ok")
    expect_status(await peer.run("import os\nfor fd in (0, 1, 2):\n    os.close(fd)"), "ok")
    await peer.barrier()
    await still_works(peer)


@check(
    "10/stdin-eof",
    SHOULD,
    "file descriptor 0 of the code reads end of file",
    "Descriptors 1 and 2 are pipes read by the runner (section 6.5); descriptor 0 reads end of "
    "file.",
)
async def stdin_eof(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_value(await peer.run("import os\nos.read(0, 100)"), "b''")


@check(
    "10/exit-status",
    SHOULD,
    "the runner exits 0 after shutdown or a clean end of stream, 3 after a protocol error (a "
    "truncated frame too), 5 when the stream ends while an op runs",
    "Exit status (this implementation; others SHOULD follow it): 0 after `shutdown`",
)
async def exit_status(ctx: Context) -> None:
    async def expect_code(peer: Peer, code: int, after: str) -> None:
        got = await peer.expect_exit(f"the runner to exit after {after}")
        require(got == code, f"exit status {code} after {after}", f"exit status {got}")

    peer = await ctx.connect()
    await peer.send({"kind": "shutdown"})
    await expect_code(peer, 0, "a shutdown")
    peer = await ctx.connect()
    await peer.close_input()
    await expect_code(peer, 0, "a clean end of stream")
    peer = await ctx.connect()
    await peer.send_raw(raw_frame(b"\xc1"), "a body of one reserved byte")
    await expect_code(peer, 3, "a protocol error")
    peer = await ctx.connect()
    await peer.send_raw(b"\x00\x00\x00\x09\x82", "2 bytes of a 9-byte frame")
    await peer.close_input()
    await expect_code(peer, 3, "a truncated frame")
    peer = await ctx.connect()
    op = await peer.start_op(SLEEPS)
    await peer.wait_output(op, b"go\n")
    await peer.close_input()
    await expect_code(peer, 5, "the stream ended mid-op")
