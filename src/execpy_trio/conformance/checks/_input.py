"""Section 6.6: input: none allowed, canned stdin, input requests and replies."""

from __future__ import annotations

from typing import Any

from ...protocol import Done, InputRequest
from .._context import Context, require
from .._peer import describe
from .._registry import MUST, check
from ._util import expect_status, expect_value, still_works

_NEVER_WAITS = (
    "With `allow_stdin` false (and always for `eval`), code that reads input (`input()`, "
    "`sys.stdin.readline()`, `getpass.getpass()`) gets the canned `stdin` text, line by line, "
    "and then end of input (`EOFError`) at once: the runner never waits."
)


def _record(into: list[Any], what: Any, answer: str) -> str:
    into.append(what)
    return answer


@check(
    "6.6/no-stdin",
    MUST,
    "without allow_stdin, input() and getpass() raise EOFError and readline() returns '' at "
    "once, with no input request",
    _NEVER_WAITS,
)
async def no_stdin(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run("input('x? ')"), "error", "EOFError")
    expect_status(await peer.run("import getpass\ngetpass.getpass('pw? ')"), "error", "EOFError")
    expect_value(await peer.run("import sys\nsys.stdin.readline()"), "''")


@check(
    "6.6/canned-stdin",
    MUST,
    "canned stdin is returned line by line, to input() and readline(), then EOFError",
    _NEVER_WAITS,
)
async def canned_stdin(ctx: Context) -> None:
    peer = await ctx.connect()
    code = (
        "import sys\n"
        "got = [input(), sys.stdin.readline()]\n"
        "try:\n"
        "    input()\n"
        "except EOFError:\n"
        "    got.append('EOF')\n"
        "got"
    )
    expect_value(await peer.run(code, stdin="one\ntwo\n"), "['one', 'two\\n', 'EOF']")


@check(
    "6.6/canned-prompts",
    MUST,
    "with canned stdin, the prompt of input() goes to stdout and that of getpass() to stderr",
    "the prompt of `input()` to stdout, and the prompt of `getpass.getpass()` to **stderr**",
)
async def canned_prompts(ctx: Context) -> None:
    peer = await ctx.connect()
    code = "import getpass\na = input('p1> ')\nb = getpass.getpass('p2> ')\n(a, b)"
    result = await peer.run(code, stdin="x\ny\n")
    expect_value(result, "('x', 'y')")
    require(b"p1> " in result.stdout, "b'p1> ' on stdout", repr(result.stdout))
    require(b"p2> " in result.stderr, "b'p2> ' on stderr", repr(result.stderr))


@check(
    "6.6/input-request",
    MUST,
    "with allow_stdin, input(prompt) and readline() send an input_request with the prompt "
    "(not written to stdout) and return the reply",
    "With `allow_stdin` true, once the canned text (if any) is used up, a read sends an "
    "`input_request` with the prompt and waits for `input_reply`.",
    needs=("stdin",),
)
async def input_request(ctx: Context) -> None:
    peer = await ctx.connect()
    prompts: list[str] = []

    def answer(request: InputRequest) -> str:
        prompts.append(request.prompt)
        return f"reply{len(prompts)}"

    code = "import sys\na = input('name? ')\nb = sys.stdin.readline()\nprint('hi', a)\n(a, b)"
    result = await peer.run(code, allow_stdin=True, on_input=answer)
    expect_value(result, "('reply1', 'reply2\\n')")
    require(prompts[:1] == ["name? "], "the prompt 'name? '", repr(prompts))
    require(
        result.stdout == b"hi reply1\n", "stdout b'hi reply1\\n' (no prompt)", repr(result.stdout)
    )
    # Canned text first, then a request.
    asked: list[str] = []
    result = await peer.run(
        "(input('a? '), input('b? '))",
        allow_stdin=True,
        stdin="canned\n",
        on_input=lambda r: _record(asked, r.prompt, "asked"),
    )
    expect_value(result, "('canned', 'asked')")
    require(asked == ["b? "], "one input_request, for 'b? '", repr(asked))


@check(
    "4.2/password-flag",
    MUST,
    "getpass.getpass() sends an input_request with password true",
    "true for `getpass.getpass()`",
    needs=("stdin",),
)
async def password(ctx: Context) -> None:
    peer = await ctx.connect()
    flags: list[bool] = []
    result = await peer.run(
        "import getpass\ngetpass.getpass('secret? ')",
        allow_stdin=True,
        on_input=lambda r: _record(flags, r.password, "hunter2"),
    )
    expect_value(result, "'hunter2'")
    require(flags == [True], "an input_request with password true", f"password flags {flags}")
    flags.clear()
    await peer.run(
        "input('plain? ')", allow_stdin=True, on_input=lambda r: _record(flags, r.password, "x")
    )
    require(flags == [False], "password false for input()", f"password flags {flags}")


@check(
    "6.6/input-eof",
    MUST,
    "an input_reply with nil text raises EOFError in the waiting code",
    "The reply's `text` is the line without its newline; nil means end of input.",
    needs=("stdin",),
)
async def input_eof(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run("input('x? ')", allow_stdin=True, on_input=lambda r: None)
    expect_status(result, "error", "EOFError")
    await still_works(peer)


@check(
    "6.6/withdrawn-request",
    MUST,
    "an input_reply for a request withdrawn by the op's end is ignored",
    "the request is withdrawn: a later `input_reply` for it is ignored (section 7.3).",
    needs=("stdin", "interrupt"),
)
async def withdrawn_request(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op("input('x? ')", allow_stdin=True)
    await peer.expect("an input_request", "input_request")
    await peer.send({"kind": "cancel", "op": op})
    msg = await peer.expect("the cancelled done", "done")
    require(type(msg) is Done and msg.status == "cancelled", "done 'cancelled'", describe(msg))
    await peer.send({"kind": "input_reply", "op": op, "text": "too late"})
    await peer.barrier()
    await still_works(peer)
