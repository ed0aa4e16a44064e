"""Section 4: message conventions (unknown fields and kinds, invalid messages); section 8:
errors from the client."""

from __future__ import annotations

from .._context import Context, require
from .._peer import describe
from .._registry import MUST, check
from ._util import expect_value, raw_frame, raw_map, still_works

BAD_MESSAGE = ("bad-message",)


@check(
    "4.1/unknown-fields",
    MUST,
    "unknown fields in the hello and in requests are ignored",
    "**Unknown fields MUST be ignored.**",
)
async def unknown_fields(ctx: Context) -> None:
    peer = await ctx.connect(x_future={"nested": [1, 2]})
    await peer.send({"kind": "ping", "token": 99, "x_future": "ignored"})
    await peer.barrier()
    op = peer.new_op()
    expect_value(await peer.run("40 + 2", op=op, x_future=True, x_other=None), "42")


@check(
    "4.1/keys-any-order",
    MUST,
    "a request whose keys come in another order (kind last) is read alike",
    "decoders MUST accept the keys in any order.",
)
async def keys_any_order(ctx: Context) -> None:
    peer = await ctx.connect()
    body = raw_map([("code", "40 + 2"), ("op", 1), ("kind", "exec")])
    peer.track({"kind": "exec", "op": 1, "code": "40 + 2"})
    await peer.send_raw(raw_frame(body), "an exec with 'kind' last")
    expect_value(await peer.collect(1), "42")


@check(
    "4.1/unknown-kind",
    MUST,
    "a message of unknown kind gets a non-fatal unknown-kind error without op, when idle and "
    "while an op runs, and the connection goes on",
    "After the handshake, the receiver MUST answer it with a non-fatal `error` (code "
    "`unknown-kind`, no `op`) and otherwise ignore it; its state does not change.",
)
async def unknown_kind(ctx: Context) -> None:
    peer = await ctx.connect()
    for busy in (False, True):
        op = None
        if busy:
            op = await peer.start_op("import time\ntime.sleep(0.5)\n'slept'")
        await peer.send({"kind": "x_future", "op": 1000, "data": b"x"}, track=False)
        msg = await peer.expect("a non-fatal 'unknown-kind' error without op", "error")
        require(
            msg.code == "unknown-kind" and not msg.fatal and msg.op is None,  # type: ignore[attr-defined]
            "a non-fatal 'unknown-kind' error without op",
            describe(msg),
        )
        if op is not None:
            expect_value(await peer.collect(op), "'slept'")
    await still_works(peer)


@check(
    "4.1/missing-field",
    MUST,
    "a request lacking a required field gets a fatal bad-message error",
    "A required field that is missing, or any field whose value does not have the listed type "
    "or is outside the listed values, makes the message invalid (`bad-message`).",
)
async def missing_field(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.send({"kind": "exec", "op": 1}, track=False)
    await peer.expect_fatal("a fatal 'bad-message' error for an exec without code", BAD_MESSAGE)


@check(
    "4.1/invalid-field",
    MUST,
    "a field of the wrong type (a str op id, an int for a bool, a negative token) gets a fatal "
    "bad-message error",
    "A required field that is missing, or any field whose value does not have the listed type "
    "or is outside the listed values, makes the message invalid (`bad-message`).",
)
async def invalid_field(ctx: Context) -> None:
    for request, what in (
        ({"kind": "exec", "op": "one", "code": "x = 1"}, "an exec whose op is a str"),
        ({"kind": "exec", "op": 1, "code": "x = 1", "allow_stdin": 1}, "allow_stdin 1 (an int)"),
        ({"kind": "ping", "token": -1}, "a ping with token -1"),
    ):
        peer = await ctx.connect()
        await peer.send(request, track=False)
        await peer.expect_fatal(f"a fatal 'bad-message' error for {what}", BAD_MESSAGE)


@check(
    "4.1/not-a-message",
    MUST,
    "a body that is not a map, or a map without a str kind, gets a fatal bad-message error",
    "Every message is a msgpack map. It MUST have a `kind` key whose value is a str naming the "
    "message.",
)
async def not_a_message(ctx: Context) -> None:
    for request, what in (
        ([1, 2], "an array"),
        ({"op": 1}, "a map without kind"),
        ({"kind": 5}, "a map whose kind is an int"),
    ):
        peer = await ctx.connect()
        await peer.send(request, track=False)  # type: ignore[arg-type]
        await peer.expect_fatal(f"a fatal 'bad-message' error for {what}", BAD_MESSAGE)


@check(
    "7.2/wrong-role",
    MUST,
    "a message only a runner sends (done, welcome), sent by the client, gets a fatal "
    "unexpected-message error",
    "A message kind sent by the wrong role (e.g. a `done` from the client) is invalid "
    "(`unexpected-message`).",
)
async def wrong_role(ctx: Context) -> None:
    for request in (
        {"kind": "done", "op": 1, "status": "ok"},
        {"kind": "pong", "token": 1},
    ):
        peer = await ctx.connect()
        await peer.send(request, track=False)
        await peer.expect_fatal(
            f"a fatal 'unexpected-message' error for a {request['kind']} from the client",
            ("unexpected-message",),
        )


@check(
    "8/client-fatal-error",
    MUST,
    "a fatal error from the client makes the runner close, sending nothing more",
    "A side that receives a fatal `error` moves to ERROR, reports it to its user, and closes.",
)
async def client_fatal_error(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.send(
        {"kind": "error", "code": "internal", "message": "the kit gives up", "fatal": True},
        track=False,
    )
    await peer.expect_end("the runner to close the stream")
    await peer.expect_exit("the runner to exit")


@check(
    "8/unknown-error-code",
    MUST,
    "a non-fatal error with a code the runner does not know is taken as a notice",
    "a receiver MUST treat an unknown code as fatal if `fatal` is true and as a notice (or a "
    "rejection, with `op`) otherwise.",
)
async def unknown_error_code(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.send({"kind": "error", "code": "x-future-notice", "message": "just so you know"})
    await peer.barrier()
    await still_works(peer)
