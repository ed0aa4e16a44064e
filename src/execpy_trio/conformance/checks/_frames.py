"""Section 3: frames, the msgpack subset, size limits; section 2: the byte stream."""

from __future__ import annotations

import msgpack
import trio

from .._context import Context, require
from .._peer import hello_of
from .._registry import MUST, SHOULD, check
from ._util import Raw, expect_status, expect_value, raw_frame, raw_map, still_works

BAD_FRAME = ("bad-frame",)
#: The largest object budget the kit tests by sending a frame over it (16 MiB of nils: a
#: runner announcing a max_frame of 256 MiB).
OBJECT_BUDGET_SENT = 16 * 1024 * 1024


@check(
    "2/byte-stream",
    MUST,
    "frames written a byte at a time, split inside a header or a body, or several in one "
    "write, are read alike",
    "It has no framing of its own beyond section 3",
)
async def byte_stream(ctx: Context) -> None:
    peer = await ctx.start()
    hello = msgpack.packb(hello_of())
    data = raw_frame(hello)
    peer.log.add("C", "hello, one byte per write")
    peer.track(msgpack.unpackb(hello))
    for i in range(len(data)):
        await peer._write(data[i : i + 1])
        await trio.sleep(0.001)
    await peer.expect("a welcome to a hello written one byte at a time", "welcome")
    # Two pings and an exec in one write, the exec split inside its header; then one
    # split inside its body. (Not two execs in one write: the second would be busy.)
    pings = [{"kind": "ping", "token": t} for t in (1, 2)]
    execs = [{"kind": "exec", "op": op, "code": f"{op} * 2"} for op in (1, 2)]
    for value in (*pings, *execs):
        peer.track(value)
    p1, p2, e1, e2 = (raw_frame(msgpack.packb(v)) for v in (*pings, *execs))
    await peer.send_raw(p1 + p2 + e1[:2], "two pings and the first 2 bytes of an exec")
    await trio.sleep(0.05)
    await peer.send_raw(e1[2:], "the rest of the exec")
    for token in (1, 2):
        await peer.expect(f"the pong for ping {token}", "pong")
    expect_value(await peer.collect(1), "2")
    await peer.send_raw(e2[:9], "the first 9 bytes of an exec")
    await trio.sleep(0.05)
    await peer.send_raw(e2[9:], "the rest of it")
    expect_value(await peer.collect(2), "4")


@check(
    "3.1/frame-format",
    MUST,
    "every frame the runner sends has a 4-byte big-endian length and one msgpack map body "
    "(the kit holds every frame of every check to this)",
    "The body MUST be a single msgpack value that spans exactly `length` bytes",
)
async def frame_format(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.run("print('out'); import sys; print('err', file=sys.stderr)")
    await peer.run("1 / 0")
    await peer.run("'value'")
    await peer.barrier()


@check(
    "8/malformed-body",
    MUST,
    "a body that is not valid msgpack gets a fatal bad-frame error, then the runner closes",
    "it MUST: stop processing input, send one fatal `error` whose `code` names the problem",
)
async def malformed_body(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.send_raw(raw_frame(b"\xc1\xc1\xc1"), "a body of reserved bytes")
    await peer.expect_fatal("a fatal 'bad-frame' error", BAD_FRAME)


@check(
    "3.1/zero-length",
    MUST,
    "a frame of length 0 gets a fatal bad-frame error",
    "A zero `length` is invalid (an empty body holds no value).",
)
async def zero_length(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.send_raw(b"\0\0\0\0", "a frame of length 0")
    await peer.expect_fatal("a fatal 'bad-frame' error", BAD_FRAME)


@check(
    "3.1/length-mismatch",
    MUST,
    "a body with bytes after its value, or whose value needs more bytes than the length, "
    "gets a fatal bad-frame error",
    "a value that ends early (trailing bytes inside the frame) or needs more bytes than "
    "`length` is invalid.",
)
async def length_mismatch(ctx: Context) -> None:
    ping = msgpack.packb({"kind": "ping", "token": 1})
    peer = await ctx.connect()
    await peer.send_raw(raw_frame(ping + b"\xc0"), "a ping followed by a stray nil")
    await peer.expect_fatal("a fatal 'bad-frame' error for trailing bytes", BAD_FRAME)
    peer = await ctx.connect()
    await peer.send_raw(raw_frame(ping[:-1]), "a ping missing its last byte")
    await peer.expect_fatal("a fatal 'bad-frame' error for a value cut short", BAD_FRAME)


@check(
    "3.2/extension-type",
    MUST,
    "a frame holding a msgpack extension type (a timestamp included) gets a fatal bad-frame error",
    "a receiver MUST treat a frame containing one as invalid (`bad-frame`).",
)
async def extension_type(ctx: Context) -> None:
    for value, what in (
        (msgpack.ExtType(5, b"xyz"), "an extension of type 5"),
        (msgpack.Timestamp(1, 0), "a timestamp"),
    ):
        peer = await ctx.connect()
        await peer.send(
            {"kind": "exec", "op": 1, "code": "x = 1", "variables": {"t": value}}, track=False
        )
        await peer.expect_fatal(f"a fatal 'bad-frame' error for {what}", BAD_FRAME)


@check(
    "3.2/map-keys",
    MUST,
    "a map key that is not str or bin, in any map of the frame, gets a fatal bad-frame error",
    "A receiver MUST treat a map key of any other type (int, nil, bool, float, array, map), "
    "in any map of the frame, as invalid: `bad-frame`",
)
async def map_keys(ctx: Context) -> None:
    peer = await ctx.connect()
    body = raw_map([("kind", "ping"), ("token", 1), ("x_extra", {1: "int key"})])
    await peer.send_raw(raw_frame(body), "a ping with an int key in an ignored field")
    await peer.expect_fatal("a fatal 'bad-frame' error", BAD_FRAME)


@check(
    "3.2/bin-key-ignored",
    MUST,
    "a bin key in the message map is ignored as an unknown field",
    "A bin key in the message map can never name a field: it is ignored as an unknown field",
)
async def bin_key_ignored(ctx: Context) -> None:
    peer = await ctx.connect()
    body = raw_map([("kind", "exec"), ("op", 1), (b"code", "1 / 0"), ("code", "40 + 2")])
    peer.track({"kind": "exec", "op": 1, "code": "40 + 2"})
    await peer.send_raw(raw_frame(body), "an exec with an extra bin key b'code'")
    expect_value(await peer.collect(1), "42")


@check(
    "3.2/duplicate-keys",
    MUST,
    "a map with a key written twice is not invalid: the last occurrence wins",
    "A receiver that gets one MUST NOT treat it as invalid: the **last** occurrence wins",
)
async def duplicate_keys(ctx: Context) -> None:
    peer = await ctx.connect()
    body = raw_map([("kind", "exec"), ("op", 1), ("code", "1 / 0"), ("code", "40 + 2")])
    peer.track({"kind": "exec", "op": 1, "code": "40 + 2"})
    await peer.send_raw(raw_frame(body), "an exec whose 'code' is written twice")
    expect_value(await peer.collect(1), "42")


def _nested(levels: int) -> bytes:
    """An array nesting ``levels`` deep, holding nil."""
    return b"\x91" * (levels - 1) + b"\x90"


@check(
    "3.2/nesting-512",
    MUST,
    "a request nesting 512 levels deep is accepted",
    "A receiver MUST accept 512 levels",
    since=(1, 1),
)
async def nesting_512(ctx: Context) -> None:
    peer = await ctx.connect()
    # Level 1 is the message map, 2 the variables map: 510 levels of arrays inside.
    code = "n = 0\nwhile v:\n    v = v[0]; n += 1\nn"
    body = raw_map(
        [
            ("kind", "exec"),
            ("op", 1),
            ("code", code),
            ("variables", Raw(b"\x81\xa1v" + _nested(510))),
        ]
    )
    peer.track({"kind": "exec", "op": 1, "code": code})
    await peer.send_raw(raw_frame(body), "an exec whose variables nest 512 levels in all")
    expect_value(await peer.collect(1), "509")


@check(
    "3.2/nesting-over-1024",
    MUST,
    "a frame nesting deeper than 1024 levels, even inside an ignored field, gets a fatal "
    "bad-frame error",
    "MUST treat a frame that nests deeper than **1024** levels as invalid (`bad-frame`), even "
    "inside a field it would ignore",
    since=(1, 1),
)
async def nesting_over_1024(ctx: Context) -> None:
    peer = await ctx.connect()
    body = raw_map([("kind", "ping"), ("token", 1), ("x_extra", Raw(_nested(1030)))])
    await peer.send_raw(raw_frame(body), "a ping with 1030 levels of arrays in an unknown field")
    await peer.expect_fatal("a fatal 'bad-frame' error", BAD_FRAME)


@check(
    "3.2/invalid-utf8",
    MUST,
    "a str that is not valid UTF-8 gets a fatal bad-frame or bad-message error",
    "text; MUST be valid UTF-8",
)
async def invalid_utf8(ctx: Context) -> None:
    peer = await ctx.connect()
    body = raw_map([("kind", "exec"), ("op", 1), ("code", Raw(b"\xa2\xff\xfe"))])
    await peer.send_raw(
        raw_frame(body), "an exec whose code is the bytes ff fe as a str", refused_op=1
    )
    await peer.expect_fatal("a fatal 'bad-frame' error", ("bad-frame", "bad-message"))


@check(
    "3.3/frame-too-large",
    MUST,
    "a frame announced over the runner's max_frame gets a fatal frame-too-large error at once, "
    "without the body being sent",
    "If `length` is over its limit it MUST NOT read or buffer the body: it treats the frame as "
    "invalid (`frame-too-large`, section 8) at once.",
)
async def frame_too_large(ctx: Context) -> None:
    peer = await ctx.connect()
    size = peer.runner_max_frame + 1
    if size > 0xFFFFFFFF:
        peer.note("3.3: the runner accepts any length a header can say: nothing to refuse")
        return
    await peer.send_raw(size.to_bytes(4, "big"), f"the header of a {size}-byte frame, no body")
    await peer.expect_fatal("a fatal 'frame-too-large' error", ("frame-too-large",))


@check(
    "3.3/handshake-frame-limit",
    MUST,
    "before the welcome, a frame over 65536 bytes gets a fatal frame-too-large error",
    "Until the handshake is complete (section 5), every frame's body MUST be at most "
    "**65536** bytes.",
)
async def handshake_frame_limit(ctx: Context) -> None:
    peer = await ctx.start()
    peer.state = "hello-sent"
    await peer.send_raw((65537).to_bytes(4, "big"), "the header of a 65537-byte first frame")
    await peer.expect_fatal("a fatal 'frame-too-large' error", ("frame-too-large",))


@check(
    "3.3/output-split",
    MUST,
    "output is split so that no frame exceeds the client's max_frame (65536 here), and all "
    "of it arrives",
    "Output is split into several `output` messages to stay under it (section 6.5).",
)
async def output_split(ctx: Context) -> None:
    peer = await ctx.connect(max_frame=65536)
    result = await peer.run("import sys\nsys.stdout.write('x' * 1_000_000)\nsys.stdout.flush()")
    expect_status(result, "ok")
    require(
        result.stdout == b"x" * 1_000_000,
        "1000000 bytes of 'x' on stdout",
        f"{len(result.stdout)} bytes",
    )


@check(
    "6.5/done-within-limit",
    MUST,
    "a done whose value or error is larger than the client's max_frame is cut to fit",
    "The runner MUST NOT send a `done` over the client's `max_frame` (section 3.3).",
)
async def done_within_limit(ctx: Context) -> None:
    peer = await ctx.connect(max_frame=65536)
    expect_status(await peer.run("'v' * 300_000"), "ok")
    expect_status(await peer.run("raise ValueError('m' * 300_000)"), "error", "ValueError")
    await still_works(peer)


@check(
    "3.3/object-budget",
    MUST,
    "a frame holding more objects than max_frame / 16 of the runner's limit gets a fatal "
    "bad-frame error",
    "A receiver MUST treat a frame over the budget as invalid (`bad-frame`), whatever its length",
    since=(1, 1),
)
async def object_budget(ctx: Context) -> None:
    peer = await ctx.connect()
    budget = peer.runner_max_frame // 16
    if budget > OBJECT_BUDGET_SENT:
        peer.note(f"3.3: the runner's budget of {budget} objects is more than the kit sends")
        return
    # Built by hand (an array of nils, one byte each): no Python list of that size.
    nils = Raw(b"\xdd" + budget.to_bytes(4, "big") + b"\xc0" * budget)
    body = raw_map(
        [("kind", "exec"), ("op", 1), ("code", "x = 1"), ("variables", Raw(b"\x81\xa1v" + nils))]
    )
    await peer.send_raw(
        raw_frame(body), f"an exec whose variables hold {budget} nils", refused_op=1
    )
    await peer.expect_fatal(f"a fatal 'bad-frame' error (over the budget of {budget})", BAD_FRAME)


@check(
    "3.2/shortest-encoding",
    SHOULD,
    "the runner writes every integer, string and container header in its shortest form",
    "Encoders SHOULD use the shortest encoding of every integer, string, byte string and "
    "container header",
)
async def shortest_encoding(ctx: Context) -> None:
    await _encoding_session(ctx)
    _fail_on_notes(ctx, "3.2")


@check(
    "4.1/field-order",
    SHOULD,
    "the runner writes 'kind' first, then the fields in the catalogue's order, leaving out "
    "optional fields equal to their default",
    "Encoders SHOULD write `kind` first and then the fields in the order of the tables below",
)
async def field_order(ctx: Context) -> None:
    await _encoding_session(ctx)
    _fail_on_notes(ctx, "4.1")


async def _encoding_session(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.run("print('x' * 40)\n[1] * 300")
    await peer.run("raise ValueError('v')")
    if "eval" in ctx.capabilities:
        await peer.run(expr="[1, 200, 70000, 2**40, -1, -200, 'a' * 40, b'b' * 300, {'k': None}]")
    await peer.barrier()


def _fail_on_notes(ctx: Context, section: str) -> None:
    notes = [n for n in ctx.notes() if n.startswith(section)]
    require(not notes, f"no frame breaking the {section} SHOULD", "; ".join(notes))
