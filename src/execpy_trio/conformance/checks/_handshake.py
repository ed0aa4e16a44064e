"""Section 5: the handshake, version negotiation, preload and the limits in the welcome."""

from __future__ import annotations

from .._context import Context, require
from .._peer import CheckFailed, describe
from .._registry import MUST, SHOULD, check
from ._util import expect_value, still_works

UNEXPECTED = ("unexpected-message",)
_NO_SUCH_MODULE = "execpy_conformance_no_such_module"


@check(
    "5/welcome",
    MUST,
    "the runner sends nothing before the hello, then a welcome with every required field, "
    "protocol major version 1, the exec capability and a max_frame in range",
    "The runner MUST NOT send anything before it has received `hello`.",
)
async def welcome(ctx: Context) -> None:
    peer = await ctx.start()
    peer.state = "new"
    await peer.nothing_for(0.5, "nothing before the hello")
    msg = await peer.handshake()
    require(msg.version[0] == 1, "protocol major version 1", f"version {list(msg.version)}")
    require(
        "exec" in msg.capabilities,
        "the 'exec' capability, which every runner announces (section 4.2)",
        f"capabilities {list(msg.capabilities)}",
    )
    await still_works(peer)


@check(
    "5/version-mismatch",
    MUST,
    "a hello with another major version gets a fatal version-mismatch error naming both "
    "versions, then the runner closes",
    "it MUST answer with a fatal `error`, code `version-mismatch`, whose message names both "
    "versions, and close.",
)
async def version_mismatch(ctx: Context) -> None:
    peer = await ctx.start()
    await peer.hello(version=[7, 3])
    error = await peer.expect_fatal("a fatal 'version-mismatch' error", ("version-mismatch",))
    require(
        "7" in error.message and "1" in error.message,
        "a message naming both versions (the client's 7.3 and the runner's 1)",
        repr(error.message),
    )


@check(
    "5/newer-minor",
    MUST,
    "a hello with the same major and a newer minor version gets a welcome, and ops work",
    "Minor versions are compatible both ways",
)
async def newer_minor(ctx: Context) -> None:
    peer = await ctx.connect(version=[1, 99])
    await still_works(peer)


@check(
    "5/older-minor",
    MUST,
    "a hello of protocol 1.0 gets a welcome of major version 1, and ops work",
    "Minor versions are compatible both ways",
)
async def older_minor(ctx: Context) -> None:
    peer = await ctx.connect(version=[1, 0])
    await still_works(peer)


@check(
    "7.2/first-frame-not-hello",
    MUST,
    "a first frame other than hello gets a fatal unexpected-message error and a close",
    "Any (state, sender, key) not listed is invalid (`unexpected-message`).",
)
async def first_frame_not_hello(ctx: Context) -> None:
    peer = await ctx.start()
    peer.state = "hello-sent"
    await peer.send({"kind": "exec", "op": 1, "code": "x = 1"}, track=False)
    await peer.expect_fatal("a fatal 'unexpected-message' error", UNEXPECTED)


@check(
    "4.1/unknown-kind-first",
    MUST,
    "a message of unknown kind before the handshake is complete gets a fatal "
    "unexpected-message error",
    "Before the handshake is complete it is invalid (`unexpected-message`).",
)
async def unknown_kind_first(ctx: Context) -> None:
    peer = await ctx.start()
    peer.state = "hello-sent"
    await peer.send({"kind": "x_future_hello"}, track=False)
    await peer.expect_fatal("a fatal 'unexpected-message' error", UNEXPECTED)


@check(
    "7.2/second-hello",
    MUST,
    "a hello after the welcome gets a fatal unexpected-message error",
    "Any (state, sender, key) not listed is invalid (`unexpected-message`).",
)
async def second_hello(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.hello(track=False)
    await peer.expect_fatal("a fatal 'unexpected-message' error", UNEXPECTED)


@check(
    "5/hello-timeout",
    SHOULD,
    "a runner that gets no hello gives up (closes, exits) within 30 s",
    "A runner SHOULD give up (close, exit) if no `hello` arrives within a bound",
    slow=True,
    min_timeout=35.0,
)
async def hello_timeout(ctx: Context) -> None:
    peer = await ctx.start()
    peer.state = "hello-sent"  # whatever it sends now is judged as an answer to a hello
    await peer.expect_exit("the runner to exit with no hello", within=30.0)


@check(
    "5.1/preload",
    MUST,
    "a preload module is imported before the welcome, and not bound in the namespace",
    "**Preload.** It imports each module of `preload`, in order.",
    needs=("preload",),
    since=(1, 1),
)
async def preload(ctx: Context) -> None:
    peer = await ctx.connect(preload=["colorsys"])
    require(
        "preload" in (peer.welcome.capabilities if peer.welcome else ()),
        "a welcome with the 'preload' capability",
        describe(peer.welcome) if peer.welcome else "no welcome",
    )
    expect_value(await peer.run("import sys\n'colorsys' in sys.modules"), "True")
    expect_value(await peer.run("'colorsys' in globals()"), "False")


@check(
    "5.1/preload-failed",
    MUST,
    "a preload module that cannot be imported gets a fatal preload-failed error naming it",
    "it sends a fatal `error` with code `preload-failed` whose message names the module",
    needs=("preload",),
    since=(1, 1),
)
async def preload_failed(ctx: Context) -> None:
    peer = await ctx.start()
    await peer.hello(preload=[_NO_SUCH_MODULE])
    error = await peer.expect_fatal("a fatal 'preload-failed' error", ("preload-failed",))
    require(
        _NO_SUCH_MODULE in error.message, f"a message naming {_NO_SUCH_MODULE}", repr(error.message)
    )


@check(
    "5.1/limits-welcome",
    MUST,
    "a hello with limits gets a welcome with the limits capability and exactly those limits",
    "its `limits` field holds exactly the limits applied.",
    needs=("limits",),
    since=(1, 1),
)
async def limits_welcome(ctx: Context) -> None:
    limits = {"output_bytes": 100_000, "open_files": 64}
    peer = await ctx.connect(limits=limits)
    assert peer.welcome is not None
    require(
        "limits" in peer.welcome.capabilities,
        "the 'limits' capability",
        describe(peer.welcome) if peer.welcome else "no welcome",
    )
    require(peer.welcome.limits == limits, f"limits {limits}", f"limits {peer.welcome.limits}")
    await still_works(peer)


@check(
    "5.1/limits-unknown",
    MUST,
    "a hello with a limit the runner does not know gets a fatal limits-failed error naming it",
    "it sends a fatal `error` with code `limits-failed` naming it",
    needs=("limits",),
    since=(1, 1),
)
async def limits_unknown(ctx: Context) -> None:
    peer = await ctx.start()
    await peer.hello(limits={"x_no_such_limit": 1})
    error = await peer.expect_fatal("a fatal 'limits-failed' error", ("limits-failed",))
    if "x_no_such_limit" not in error.message:
        raise CheckFailed("a message naming x_no_such_limit", repr(error.message))
