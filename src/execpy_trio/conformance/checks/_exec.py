"""Sections 6.1-6.5: op ids, one op at a time, exec and eval."""

from __future__ import annotations

import re

from .._context import Context, require
from .._peer import describe
from .._registry import MUST, SHOULD, check
from ._util import expect_in, expect_status, expect_value, still_works


@check(
    "6.1/op-id-reuse",
    MUST,
    "an exec whose op id is not greater than every earlier one gets a fatal bad-op-id error",
    "A receiver MUST treat an `exec` or `eval` whose op id is not greater than every op id seen "
    "before on the connection as invalid (`bad-op-id`).",
)
async def op_id_reuse(ctx: Context) -> None:
    for second in (5, 3):
        peer = await ctx.connect()
        expect_status(await peer.run("x = 1", op=5), "ok")
        await peer.send({"kind": "exec", "op": second, "code": "x = 2"}, track=False)
        await peer.expect_fatal(
            f"a fatal 'bad-op-id' error for op {second} after op 5", ("bad-op-id",)
        )


@check(
    "6.1/stale-id-while-busy",
    MUST,
    "a stale op id while an op runs is a fatal bad-op-id error, not a busy rejection",
    "an `exec` or `eval` with a stale id that arrives while BUSY is `bad-op-id` (fatal), not a "
    "`busy` rejection.",
)
async def stale_id_while_busy(ctx: Context) -> None:
    peer = await ctx.connect()
    await peer.start_op("import time\nprint('go', flush=True)\ntime.sleep(30)", op=5)
    await peer.wait_output(5, b"go\n")
    await peer.send({"kind": "exec", "op": 4, "code": "x = 1"}, track=False)
    await peer.expect_fatal("a fatal 'bad-op-id' error", ("bad-op-id",))


@check(
    "6.1/sparse-ids",
    MUST,
    "op ids may start anywhere from 1 and skip values, up to 2**63 - 1",
    "Ids MUST strictly increase over the life of a connection (the first may be any id from 1).",
)
async def sparse_ids(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_value(await peer.run("1 + 1", op=2**62), "2")
    expect_value(await peer.run("2 + 2", op=2**63 - 1), "4")


@check(
    "6.2/busy",
    MUST,
    "an exec while an op runs gets a non-fatal busy rejection naming it, and the running op "
    "completes normally",
    "the runner MUST reject it (section 6.3) with code `busy`, without disturbing the running op.",
)
async def busy(ctx: Context) -> None:
    peer = await ctx.connect()
    first = await peer.start_op("import time\nprint('go', flush=True)\ntime.sleep(2)\n'first'")
    await peer.wait_output(first, b"go\n")
    second = await peer.start_op("'second'")
    msg = await peer.expect(f"a 'busy' rejection of op {second}", "error/reject")
    require(
        msg.KIND == "error" and msg.code == "busy" and msg.op == second,  # type: ignore[attr-defined]
        f"a non-fatal 'busy' error naming op {second}",
        describe(msg),
    )
    expect_value(await peer.collect(first), "'first'")
    await still_works(peer)


@check(
    "4.2/exec-value-nil",
    MUST,
    "an exec of statements ends with exactly one done 'ok' whose value is nil",
    "`exec`: the `repr()` (a str) of the last expression statement's value, or nil when the "
    "code does not end in an expression or its value is None.",
)
async def statements(ctx: Context) -> None:
    peer = await ctx.connect()
    for code in ("x = 1", "def f():\n    return 1\n", "None", "for i in range(3):\n    pass"):
        result = await peer.run(code)
        expect_status(result, "ok")
        require(result.done and result.done.value is None, "value nil", result.describe())
    await peer.barrier()  # a second done would arrive before the pong


@check(
    "6.4/value",
    MUST,
    "the value of a trailing expression statement is its repr(), and is stored as _",
    "if it is not None, `done.value` is its `repr()` and it is stored as `_` in the builtins, "
    "as the interactive interpreter does",
)
async def value(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_value(await peer.run("x = 40\nx + 2"), "42")
    expect_value(await peer.run("'text'"), "'text'")
    expect_value(await peer.run("_ * 2"), "'texttext'")
    expect_value(await peer.run("[1, (2, 3)]"), "[1, (2, 3)]")


@check(
    "1/namespace",
    MUST,
    "names bound by one exec (variables, functions, imports) are visible to the next",
    "It keeps one **namespace** across ops on the same connection: names bound by one `exec` "
    "are visible to the next.",
)
async def namespace(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run("import math\ndef f(x):\n    return x * 2\ny = 20"), "ok")
    expect_value(await peer.run("f(y) + math.floor(2.5)"), "42")


@check(
    "6.4/main-module",
    MUST,
    "the code runs in a module named __main__",
    'The namespace is a module named `__main__` (`__name__ == "__main__"`).',
)
async def main_module(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_value(await peer.run("__name__"), "'__main__'")
    expect_value(
        await peer.run("import sys\nsys.modules['__main__'].__dict__ is globals()"), "True"
    )


@check(
    "4.2/done-error",
    MUST,
    "an exception gives done 'error' with its type, its str() and its traceback; the runner "
    "goes on",
    '`{"type": str, "message": str, "traceback": str}` (all three required; other keys '
    'ignored): the exception\'s class name (e.g. `"ZeroDivisionError"`), its `str()`, and the '
    "traceback as Python prints it.",
)
async def exception(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run("x = 1\ndef g():\n    return 1 / 0\ng()")
    expect_status(result, "error", "ZeroDivisionError")
    assert result.done is not None and result.done.error is not None
    error = result.done.error
    require(error["message"] == "division by zero", "message 'division by zero'", repr(error))
    tb = error["traceback"]
    for needle in ("Traceback (most recent call last):", "ZeroDivisionError: division by zero"):
        expect_in(needle, tb, "a traceback")
    await still_works(peer)


@check(
    "6.4/traceback-user-frames",
    SHOULD,
    "a traceback shows the user's source lines and only the user's own frames, none of the "
    "runner's",
    "Tracebacks SHOULD show the user's source lines and SHOULD NOT show the runner's own frames.",
)
async def traceback_user_frames(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run("def f():\n    raise ValueError('v')\nf()")
    expect_status(result, "error", "ValueError")
    assert result.done is not None and result.done.error is not None
    tb = result.done.error["traceback"]
    files = set(re.findall(r'File "([^"]*)"', tb))
    require(len(files) == 1, "frames of the op's own code only", f"frames in files {sorted(files)}")
    expect_in("raise ValueError('v')", tb, "a traceback showing the source line")


@check(
    "6.4/syntax-error",
    MUST,
    "a syntax error gives done 'error' of type SyntaxError; the runner goes on",
    'compiles `code` as a module; a `SyntaxError` ends the op with `status: "error"`',
)
async def syntax_error(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run("def (:\n"), "error", "SyntaxError")
    await still_works(peer)


@check(
    "6.4/exit-and-interrupt",
    MUST,
    "SystemExit, sys.exit() and a KeyboardInterrupt the code raises itself give done 'error'; "
    "the runner goes on",
    '`"error"` for any exception the code raises (including `SystemExit` and '
    "`KeyboardInterrupt` that did not come from a `cancel`)",
)
async def exit_and_interrupt(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run("raise SystemExit(3)"), "error", "SystemExit")
    expect_status(await peer.run("import sys\nsys.exit()"), "error", "SystemExit")
    expect_status(await peer.run("raise KeyboardInterrupt"), "error", "KeyboardInterrupt")
    await still_works(peer)


@check(
    "6.4/variables",
    MUST,
    "variables are bound before the code runs, with msgpack types mapped to Python's",
    "binds `variables` (if any) as names in the namespace",
)
async def variables(ctx: Context) -> None:
    peer = await ctx.connect()
    bound = {
        "a": 1,
        "b": b"x",
        "c": [1, [2]],
        "d": {"k": None},
        "e": 1.5,
        "f": True,
        "g": "s",
        "h": -(2**63),
        "i": 2**64 - 1,
    }
    expect_value(
        await peer.run("(a, b, c, d, e, f, g, h, i)", variables=bound),
        "(1, b'x', [1, [2]], {'k': None}, 1.5, True, 's', -9223372036854775808, "
        "18446744073709551615)",
    )
    expect_value(await peer.run("a + 1"), "2")


@check(
    "6.4/filename",
    MUST,
    "an exec with a filename shows that name, with the code's lines, in tracebacks and in "
    "co_filename",
    "Tracebacks and the code objects (`co_filename`) show that name, and their source lines "
    "come from `code`, never from a file of that name on disk.",
    since=(1, 1),
)
async def filename(ctx: Context) -> None:
    peer = await ctx.connect()
    code = "def f():\n    return 1 / 0\n"
    expect_status(await peer.run(code, filename="kit_module.py"), "ok")
    expect_value(await peer.run("f.__code__.co_filename"), "'kit_module.py'")
    result = await peer.run("f()")
    expect_status(result, "error", "ZeroDivisionError")
    assert result.done is not None and result.done.error is not None
    expect_in('File "kit_module.py", line 2', result.done.error["traceback"], "a traceback")
    expect_in("return 1 / 0", result.done.error["traceback"], "a traceback")


@check(
    "6.3/eval-unsupported",
    SHOULD,
    "a runner that does not announce eval rejects an eval with a non-fatal unsupported error "
    "naming it",
    "A runner that does not announce `eval` SHOULD reject every `eval` with `unsupported`",
    absent=("eval",),
)
async def eval_unsupported(ctx: Context) -> None:
    peer = await ctx.connect()
    op = await peer.start_op(expr="1 + 1")
    msg = await peer.expect(f"an 'unsupported' rejection of op {op}", "error/reject")
    require(
        msg.KIND == "error" and msg.code == "unsupported",  # type: ignore[attr-defined]
        f"a non-fatal 'unsupported' error naming op {op}",
        describe(msg),
    )
    await still_works(peer)


@check(
    "6.5/eval-data",
    MUST,
    "eval returns the value as msgpack data: nil, bool, int, float, str, bin, arrays, maps",
    "`eval` compiles `expr` as a single expression, evaluates it, and ends with `done` whose "
    "`value` is the result as msgpack data",
    needs=("eval",),
)
async def eval_data(ctx: Context) -> None:
    peer = await ctx.connect()
    result = await peer.run(
        expr="[None, True, 1, -2, 2**63, 1.5, 's', b'b', (1, 2), {'k': [1]}, {b'bk': 1}]"
    )
    expect_status(result, "ok")
    want = [None, True, 1, -2, 2**63, 1.5, "s", b"b", [1, 2], {"k": [1]}, {b"bk": 1}]
    assert result.done is not None
    require(result.done.value == want, f"value {want!r}", repr(result.done.value))
    expect_value(await peer.run(expr="'str'"), "str")


@check(
    "6.5/eval-unsendable",
    MUST,
    "an eval value that msgpack cannot carry (an object, a set, 2**64) gives done 'error', "
    "TypeError, naming the type",
    'A value that cannot be represented ends the op with `status: "error"`, error type '
    "`TypeError`, and a message that names the type that could not be sent.",
    needs=("eval",),
)
async def eval_unsendable(ctx: Context) -> None:
    peer = await ctx.connect()
    for expr, name in (("object()", "object"), ("{1, 2}", "set"), ("2**64", "int")):
        result = await peer.run(expr=expr)
        expect_status(result, "error", "TypeError")
        assert result.done is not None and result.done.error is not None
        expect_in(name, result.done.error["message"], f"the message for {expr}")
    await still_works(peer)


@check(
    "4.2/eval-no-input",
    MUST,
    "input() inside an eval raises EOFError",
    "`eval` never reads input: `input()` inside it raises `EOFError`.",
    needs=("eval",),
)
async def eval_no_input(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run(expr="input('x? ')"), "error", "EOFError")


@check(
    "6.5/eval-statement",
    MUST,
    "an eval of a statement gives done 'error', SyntaxError",
    "`eval` compiles `expr` as a single expression",
    needs=("eval",),
)
async def eval_statement(ctx: Context) -> None:
    peer = await ctx.connect()
    expect_status(await peer.run(expr="x = 1"), "error", "SyntaxError")
    await still_works(peer)
