"""The runner program: command line, handshake, exec/eval semantics, errors, protocol edges.

Every test drives a real ``python -m execpy_trio.runner`` process through the synchronous
client in tests/runner_client.py; every receive there has a timeout.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest

from execpy_trio.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Done,
    Error,
    Exec,
    Hello,
    InputReply,
    Ping,
    Pong,
    Shutdown,
    Welcome,
    frame,
    pack_body,
)
from execpy_trio.runner import (
    EXIT_HANDSHAKE_TIMEOUT,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_USAGE,
)
from runner_client import RUNNER_CMD, RunnerClient

# -- command line and handshake ---------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "exactly one of --fd N and --stdio"),
        (["--fd"], "--fd needs a value"),
        (["--fd", "x"], "invalid value for --fd"),
        (["--fd", "3", "--stdio"], "exactly one"),
        (["--bogus"], "unknown argument '--bogus'"),
        (["--fd", "97"], "not usable"),
        (["--stdio", "--hello-timeout", "0"], "invalid value for --hello-timeout"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [*RUNNER_CMD, *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == EXIT_USAGE
    assert needle in proc.stderr


def test_help_lists_exit_codes() -> None:
    proc = subprocess.run([*RUNNER_CMD, "--help"], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0
    assert "--stdio" in proc.stdout and "3 protocol error" in proc.stdout


def test_welcome_describes_the_runner(client: RunnerClient) -> None:
    w = client.welcome
    assert isinstance(w, Welcome)
    assert w.version == PROTOCOL_VERSION
    assert w.pid == client.pid
    assert (w.language, w.impl_name) == ("python", "execpy-trio")
    assert w.language_version == "{}.{}.{}".format(*sys.version_info[:3])
    assert {"exec", "eval", "stdin", "interrupt", "fd-capture"} <= set(w.capabilities)
    assert w.max_frame >= 64 * 1024


def test_no_hello_times_out_with_a_diagnostic() -> None:
    c = RunnerClient(handshake=False, args=("--hello-timeout", "0.3"))
    try:
        assert c.wait(5) == EXIT_HANDSHAKE_TIMEOUT
        assert "no hello from the client within 0.3 s" in c.diag()
    finally:
        c.close()


def test_hello_timeout_is_a_deadline_even_for_a_trickled_frame() -> None:
    # A byte every 0.15 s never lets a 0.5 s wait pass without data: the bound must be on
    # the whole hello, not on each read.
    c = RunnerClient(handshake=False, args=("--hello-timeout", "0.5"))
    try:
        data = frame(pack_body(Hello(PROTOCOL_VERSION, "t", "0", 1 << 20).to_wire()))
        sent = 0
        for byte in data[:-1]:
            if c.proc.poll() is not None:
                break
            try:
                c.send_raw(bytes((byte,)))
            except OSError:
                break  # the runner went away between poll() and the write
            sent += 1
            time.sleep(0.15)
        assert c.wait(5) == EXIT_HANDSHAKE_TIMEOUT
        # Counted in bytes, not seconds: with a bound per read the trickle would have gone
        # on to the end (dozens of bytes); with one deadline it ends after a handful.
        assert sent < len(data) // 2, (sent, len(data))
    finally:
        c.close()


def test_major_version_mismatch_is_fatal() -> None:
    c = RunnerClient(handshake=False)
    try:
        body = Hello((1, 0), "t", "0", 1 << 20).to_wire()
        body["version"] = [PROTOCOL_VERSION[0] + 1, 0]
        c.send_raw(frame(pack_body(body)))
        values = c.recv_raw_values()
        assert values[-1]["kind"] == "error" and values[-1]["fatal"] is True
        assert values[-1]["code"] == "version-mismatch"
        assert c.wait() == EXIT_PROTOCOL
        assert "version-mismatch" in c.diag()
    finally:
        c.close()


def test_stdio_mode() -> None:
    c = RunnerClient(stdio=True)
    try:
        r = c.exec("import os, sys\nprint('out')\nos.write(2, b'err')\nsys.stdin.read()")
        assert (r.status, r.stdout, r.stderr, r.value) == ("ok", b"out\n", b"err", "''")
        c.send(Shutdown())
        assert c.wait() == EXIT_OK
    finally:
        c.close()


def test_trace_logs_frames_to_the_diagnostic_stream() -> None:
    c = RunnerClient(env={"EXECPY_TRACE": "1"})
    try:
        c.exec("print('x')")
        log = c.diag()
        assert "recv Hello(" in log and "send Welcome(" in log
        assert "recv Exec(op=1" in log and "send Output(op=1" in log and "send Done(op=1" in log
    finally:
        c.close()
    quiet = RunnerClient()
    try:
        quiet.exec("x = 1")
        assert quiet.diag() == ""
    finally:
        quiet.close()


# -- exec and eval ----------------------------------------------------------------------


def test_exec_value_namespace_and_underscore(client: RunnerClient) -> None:
    assert client.exec("x = 40\nx + 2").value == "42"
    assert client.exec("x").value == "40"
    assert client.exec("None").value is None
    assert client.exec("'a'").value == "'a'"
    assert client.exec("_").value == "'a'"  # builtins._ keeps the last non-None value
    r = client.exec(
        "__name__, type(__builtins__).__name__, __import__('sys').modules['__main__'].x"
    )
    assert r.value == "('__main__', 'module', 40)"
    assert client.exec("def f():\n    return x * 2").value is None
    assert client.exec("f()").value == "80"


def test_exec_does_not_inherit_the_runners_future_imports(client: RunnerClient) -> None:
    r = client.exec("def f(a: int): pass\nf.__annotations__['a']")
    assert r.value == "<class 'int'>"


def test_variables_are_bound_first(client: RunnerClient) -> None:
    r = client.exec("data + [n]", variables={"data": [1, 2], "n": 3})
    assert r.value == "[1, 2, 3]"
    assert client.eval("{'d': data, 'n': n * 2}", variables={"n": 5}).value == {
        "d": [1, 2],
        "n": 10,
    }


def test_eval_returns_plain_data(client: RunnerClient) -> None:
    client.exec("x = 40")
    r = client.eval("[x, 'a', b'b', 1.5, None, True, {'k': (1, 2)}]")
    assert r.status == "ok"
    assert r.value == [40, "a", b"b", 1.5, None, True, {"k": [1, 2]}]


@pytest.mark.parametrize(
    "expr, type_name",
    [("{1, 2}", "set"), ("object()", "object"), ("{1: 'a'}", "dict"), ("2**70", "int")],
)
def test_eval_of_unsendable_value_is_an_error(
    client: RunnerClient, expr: str, type_name: str
) -> None:
    r = client.eval(expr)
    assert r.status == "error"
    assert r.error["type"] == "TypeError"
    assert f"eval result of type {type_name!r} cannot be sent as msgpack" in r.error["message"]
    assert client.eval("1 + 1").value == 2  # the runner lives on


def test_eval_too_large_for_the_client_is_an_error() -> None:
    c = RunnerClient(max_frame=64 * 1024)
    try:
        r = c.eval("b'x' * 100_000")
        assert r.status == "error" and "over the client's frame limit" in r.error["message"]
        r = c.exec("'y' * 100_000")  # a long repr is cut, not refused
        assert r.status == "ok" and "repr cut" in r.value and len(r.value) < 64 * 1024
    finally:
        c.close()


def test_eval_rejects_statements(client: RunnerClient) -> None:
    r = client.eval("x = 1")
    assert r.status == "error" and r.error["type"] == "SyntaxError"
    assert '"<eval-1>", line 1' in r.error["traceback"]


# -- errors -----------------------------------------------------------------------------


def test_traceback_shows_source_lines_and_no_runner_frames(client: RunnerClient) -> None:
    client.exec("def inner(n):\n    return 10 // n\n")
    r = client.exec("a = 1\ninner(a - 1)")
    assert r.status == "error"
    assert r.error["type"] == "ZeroDivisionError"
    assert r.error["message"] == "integer division or modulo by zero"
    tb = r.error["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    assert 'File "<exec-2>", line 2, in <module>\n    inner(a - 1)' in tb
    assert 'File "<exec-1>", line 2, in inner\n    return 10 // n' in tb
    assert "execpy_trio" not in tb and "runner" not in tb
    assert tb.endswith("ZeroDivisionError: integer division or modulo by zero\n")


def test_traceback_of_chained_exception(client: RunnerClient) -> None:
    r = client.exec("try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('v') from e")
    tb = r.error["traceback"]
    assert "KeyError: 'k'" in tb and "direct cause" in tb and "ValueError: v" in tb
    assert "execpy_trio" not in tb


def test_syntax_error_is_formatted_as_python_does(client: RunnerClient) -> None:
    r = client.exec("x = 1\ny = (")
    assert r.status == "error" and r.error["type"] == "SyntaxError"
    assert r.error["traceback"] == (
        "  File \"<exec-1>\", line 2\n    y = (\n        ^\nSyntaxError: '(' was never closed\n"
    )
    r = client.exec("return 5")  # found by the compiler, not the parser
    assert r.error["type"] == "SyntaxError" and "'return' outside function" in r.error["message"]


def test_system_exit_and_user_keyboard_interrupt_are_errors(client: RunnerClient) -> None:
    r = client.exec("import sys\nsys.exit(3)")
    assert (r.status, r.error["type"], r.error["message"]) == ("error", "SystemExit", "3")
    r = client.exec("raise KeyboardInterrupt('mine')")
    assert (r.status, r.error["type"]) == ("error", "KeyboardInterrupt")
    r = client.exec("class MyError(Exception): pass\nraise MyError('m')")
    assert r.error["type"] == "MyError"
    r = client.exec("import json\njson.loads('{')")
    assert r.error["type"] == "json.decoder.JSONDecodeError"
    assert client.exec("1").value == "1"


def test_hostile_str_and_repr(client: RunnerClient) -> None:
    client.exec(
        "class Bad(Exception):\n    def __str__(self): raise RuntimeError('no')\n"
        "class R:\n    def __repr__(self): raise RuntimeError('no repr')"
    )
    r = client.exec("raise Bad()")
    assert r.status == "error" and r.error["type"] == "Bad"
    r = client.exec("R()")
    assert r.status == "error" and r.error["message"] == "no repr"


def test_same_code_again_gets_its_own_filename(client: RunnerClient) -> None:
    # The compile cache must not reuse the first op's filename.
    for op in (1, 2, 3):
        r = client.exec("1/0")
        assert f'File "<exec-{op}>", line 1' in r.error["traceback"]
    r = client.exec("1/0 if False else 'ok'")
    assert r.value == "'ok'"


def test_traceback_print_exc_in_user_code_shows_lines(client: RunnerClient) -> None:
    r = client.exec(
        "import traceback\ntry:\n    1/0\nexcept ZeroDivisionError:\n    traceback.print_exc()"
    )
    assert r.status == "ok"
    assert b"    1/0\n" in r.stderr


def test_errors_do_not_leak_into_later_ops(client: RunnerClient) -> None:
    assert client.exec("1/0").status == "error"
    assert client.exec("x = 5\nx").value == "5"


# -- protocol edges ---------------------------------------------------------------------


def test_busy_rejection(client: RunnerClient) -> None:
    op = client.start_exec("import time\ntime.sleep(0.5)\n'first'")
    second = client.start_exec("'second'")
    ev = client.recv(5)
    assert isinstance(ev, Error) and ev.op == second and ev.code == "busy" and not ev.fatal
    assert client.collect(op).value == "'first'"
    assert client.exec("'third'").value == "'third'"


def test_unknown_kind_gets_a_non_fatal_error(client: RunnerClient) -> None:
    client.send_raw(frame(pack_body({"kind": "frobnicate", "x": 1})))
    ev = client.recv()
    assert isinstance(ev, Error) and ev.code == "unknown-kind" and not ev.fatal
    assert "frobnicate" in ev.message
    assert client.exec("2").value == "2"


def test_ping_is_answered_while_idle_and_while_code_runs(client: RunnerClient) -> None:
    client.send(Ping(1))
    assert client.recv() == Pong(1)
    op = client.start_exec("while True: pass")
    client.send(Ping(2))  # arrives with the exec: must not wait for the op
    assert client.recv(5) == Pong(2)  # the op never ends by itself: the pong came first
    client.send(Cancel(op))
    assert client.collect(op).status == "cancelled"


def test_stale_cancel_and_input_reply_are_harmless(client: RunnerClient) -> None:
    op = client.start_exec("1")
    assert client.collect(op).value == "1"
    client.send(Cancel(op))
    client.send(InputReply(op, "late"))
    client.send(Ping(9))
    assert client.recv() == Pong(9)
    assert client.exec("2").value == "2"


def test_shutdown_when_idle_exits_0(client: RunnerClient) -> None:
    client.send(Shutdown())
    assert client.wait() == EXIT_OK


def test_shutdown_interrupts_the_running_op(client: RunnerClient) -> None:
    op = client.start_exec("import time\ntime.sleep(100)")
    client.send(Ping(1))
    assert client.recv(5) == Pong(1)  # the op is running (its I/O thread answers)
    client.send(Shutdown())
    done = client.recv(5)
    assert isinstance(done, Done) and done.op == op and done.status == "cancelled"
    assert client.wait() == EXIT_OK


def test_exec_frame_not_at_op_order_is_fatal(client: RunnerClient) -> None:
    client.exec("1")
    client.send_raw(frame(pack_body(Exec(1, "2").to_wire())))  # op id reused
    values = client.recv_raw_values()
    assert values[-1]["kind"] == "error" and values[-1]["fatal"] is True
    assert values[-1]["code"] == "bad-op-id"
    assert client.wait() == EXIT_PROTOCOL


# -- the fast path that skips the AST ---------------------------------------------------

SNIPPETS = [
    "x = 1",
    "x = 1\n42",
    "x = 1; 42",
    "'doc'",
    "'doc'\nx = 2",
    "...",
    "None",
    "-1",
    "f()",
    "import os",
    "import os.path as p",
    "def f():\n    return 1",
    "class C:\n    'doc'",
    "if x:\n    y = 1\nelse:\n    'a'",
    "for i in range(3):\n    i",
    "with open(p) as f:\n    f.read()",
    "x = (\n    1\n)\n# trailing comment\n",
    "x = 1\n(\n  2\n)",
    "try:\n    pass\nexcept E:\n    0",
    "x: int = 3",
    "del x",
    "assert x",
    "x\n\n\n",
    "",
    "# only a comment",
    "lambda: 0",
    "[i for i in x]",
    "global g\ng = 1",
]


@pytest.mark.parametrize("source", SNIPPETS)
def test_value_is_that_of_a_final_expression_statement(client: RunnerClient, source: str) -> None:
    import ast

    body = ast.parse(source).body
    expected = None
    if body and isinstance(body[-1], ast.Expr):
        ns: dict[str, object] = {"x": [3], "p": __file__, "E": Exception, "f": lambda: 9}
        exec(compile(ast.Module(body[:-1], []), "<t>", "exec"), ns)
        value = eval(compile(ast.Expression(body[-1].value), "<t>", "eval"), ns)
        expected = None if value is None else repr(value)
    r = client.exec(source, variables={"x": [3], "p": __file__})
    if r.status == "ok" and expected is not None and " at 0x" in expected:
        assert r.value is not None and r.value.split(" at 0x")[0] == expected.split(" at 0x")[0]
    elif r.status == "ok":
        assert r.value == expected, source
    else:  # E and f are not defined in the runner: the error must come from the code
        assert r.error is not None and r.error["type"] == "NameError", (source, r.error)


def test_constant_and_docstring_last_statements_have_values(client: RunnerClient) -> None:
    assert client.exec("x = 1\n42").value == "42"
    assert client.exec("x = 1; 7").value == "7"
    assert client.exec("'doc'").value == "'doc'"
    assert client.exec("...").value == "Ellipsis"
    assert client.exec("x = 5").value is None
    # Constant expressions are folded away by the compiler: only the AST sees them.
    assert client.exec("1 + 1").value == "2"
    assert client.exec("x = 1\n'a' 'b'").value == "'ab'"
    assert client.exec("-(2 ** 3)").value == "-8"
    assert client.exec("(1, 2)").value == "(1, 2)"


def test_channel_write_pieces_finishes_a_short_writev(monkeypatch: pytest.MonkeyPatch) -> None:
    # writev may write less than asked (a signal, a full socket buffer): the rest must
    # follow in order, or the frame stream is corrupt.
    import os
    import socket

    from execpy_trio.protocol import Connection
    from execpy_trio.runner import _channel

    a, b = socket.socketpair()
    b.settimeout(5)  # a lost tail must fail the test, not hang it
    try:
        chan = _channel.Channel(a.fileno(), a.fileno(), Connection("runner"), lambda _t: None)
        real_writev = os.writev
        monkeypatch.setattr(
            _channel, "_writev", lambda fd, pieces: real_writev(fd, [pieces[0][:3]])
        )
        pieces = (b"head-bytes", b"payload" * 1000)
        chan.write_pieces(pieces)
        expected = b"".join(pieces)
        got = b""
        while len(got) < len(expected):
            got += b.recv(65536)
        assert got == expected
    finally:
        a.close()
        b.close()


def test_exec_filename_names_the_code_in_tracebacks(client: RunnerClient) -> None:
    r = client.exec("def f():\n    return 1 / 0\n", filename="/work/cell.py")
    assert r.status == "ok"
    r = client.exec("f()", filename="cell-2")
    tb = r.error["traceback"]
    assert 'File "cell-2", line 1, in <module>\n    f()\n' in tb, tb
    # The lines come from the code sent, not from a file of that name on disk.
    assert 'File "/work/cell.py", line 2, in f\n    return 1 / 0\n' in tb, tb
    assert client.eval("f.__code__.co_filename").value == "/work/cell.py"
    # Without it (or empty) the runner names the code itself.
    assert 'File "<exec-' in client.exec("1 / 0", filename="").error["traceback"]
    assert 'File "<exec-' in client.exec("1 / 0").error["traceback"]


def test_exec_filename_never_reads_the_file_of_that_name(
    client: RunnerClient, tmp_path: pathlib.Path
) -> None:
    disk = tmp_path / "cell.py"
    disk.write_text("# line 1 on disk\n# line 2 on disk\n")
    assert client.exec("def f():\n    return 1 / 0\n", filename=str(disk)).status == "ok"
    # The same name again, for code that defines nothing: its source replaces the
    # first, and nothing falls back to the file on disk.
    assert client.exec("x = 1\ny = 2\n", filename=str(disk)).status == "ok"
    tb = client.exec("f()").error["traceback"]
    assert f'File "{disk}", line 2, in f\n    y = 2\n' in tb, tb
    assert "on disk" not in tb


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ({"gpu": 1}, "unknown limit(s) gpu"),
        ({"memory": 1.5}, "the memory limit must be an int"),
    ],
)
def test_limits_the_runner_cannot_apply_are_refused_not_ignored(
    limits: dict[str, object], needle: str
) -> None:
    from execpy_trio.protocol import Hello
    from execpy_trio.runner import EXIT_SETUP_FAILED

    c = RunnerClient(handshake=False)
    try:
        c.send(Hello(PROTOCOL_VERSION, "t", "0", c.max_frame, [], limits))  # type: ignore[arg-type]
        fatal = c.recv_raw_values()[-1]
        assert fatal["kind"] == "error" and fatal["code"] == "limits-failed", fatal
        assert needle in fatal["message"]
        assert c.wait() == EXIT_SETUP_FAILED
    finally:
        c.close()
