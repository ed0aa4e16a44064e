"""The behaviour that spec/protocol.md 1.0.1 spells out (section "Changes in 1.0.1").

Each test drives a real runner through tests/runner_client.py and checks what the spec
now says the v1.0 runner does, so spec and runner cannot drift apart silently.
"""

from __future__ import annotations

import pytest

from execpy_trio.protocol import (
    Done,
    LocalProtocolError,
    Ping,
    Pong,
    RemoteProtocolError,
    Shutdown,
    frame,
    message_from_wire,
    pack_body,
)
from execpy_trio.runner import EXIT_CHANNEL_LOST, EXIT_OK, EXIT_PROTOCOL
from runner_client import RunnerClient


def _fatal(c: RunnerClient) -> dict[str, object]:
    """The runner's last frame before it closed the channel, which must be a fatal error."""
    values = c.recv_raw_values()
    assert values, c.diag()
    last = values[-1]
    assert last["kind"] == "error" and last["fatal"] is True, values
    assert not any(v["kind"] == "done" for v in values), values
    return last  # type: ignore[no-any-return]


def _running(c: RunnerClient, code: str = "import time\ntime.sleep(100)") -> int:
    """Start ``code`` and wait until the runner is serving it (a ping answered while BUSY)."""
    op = c.start_exec(code)
    c.send(Ping(1000 + op))
    assert c.recv(5) == Pong(1000 + op)
    return op


# -- 6.5: order of output ---------------------------------------------------------------


def test_output_order_is_the_order_bytes_reach_the_fd(client: RunnerClient) -> None:
    # print() is buffered by Python until the op ends; os.write reaches fd 1 at once.
    r = client.exec("import os\nprint('p1', end='')\nos.write(1, b'|w2\\n')")
    assert r.stdout == b"|w2\np1"
    r = client.exec("import os, sys\nprint('p1', end='', flush=True)\nos.write(1, b'|w2\\n')")
    assert r.stdout == b"p1|w2\n"


# -- 10 and 8: exit statuses, truncated-frame -------------------------------------------


def test_end_of_stream_before_hello_exits_5() -> None:
    c = RunnerClient(handshake=False)
    try:
        c.close_channel()
        assert c.wait() == EXIT_CHANNEL_LOST
    finally:
        c.close()


def test_end_of_stream_when_idle_exits_0(client: RunnerClient) -> None:
    client.exec("1")
    client.close_channel()
    assert client.wait() == EXIT_OK


@pytest.mark.parametrize("state", ["AWAIT_HELLO", "IDLE", "BUSY"])
def test_truncated_frame_is_sent_and_exits_3(state: str) -> None:
    c = RunnerClient(handshake=state != "AWAIT_HELLO")
    try:
        if state == "BUSY":
            _running(c)
        c.send_raw(b"\x00\x00\x00\x10\x81")  # 16 bytes announced, 1 sent
        assert c.sock is not None
        c.sock.shutdown(1)  # end of stream, but we can still read the runner's answer
        err = _fatal(c)
        assert err["code"] == "truncated-frame"
        assert f"state {state}" in str(err["message"])
        assert c.wait() == EXIT_PROTOCOL
    finally:
        c.close()


# -- 3.2 / 8: map keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "82a46b696e64a470696e670107",  # {"kind": "ping", 1: 7}
        # exec with variables {"x": {1: 2}}: an int key anywhere in the frame
        "84a46b696e64a465786563a26f7001a4636f6465a131a97661726961626c657381a178810102",
    ],
)
def test_int_map_key_anywhere_is_bad_frame(client: RunnerClient, body: str) -> None:
    client.send_raw(frame(bytes.fromhex(body)))
    assert _fatal(client)["code"] == "bad-frame"
    assert client.wait() == EXIT_PROTOCOL


def test_bin_key_in_the_message_map_is_an_ignored_unknown_field(client: RunnerClient) -> None:
    # {"kind": "ping", "token": 1, b"a": nil}
    client.send_raw(frame(bytes.fromhex("83a46b696e64a470696e67a5746f6b656e01c40161c0")))
    assert client.recv() == Pong(1)


def test_duplicate_keys_the_last_one_wins(client: RunnerClient) -> None:
    # {"kind": "ping", "token": 1, "token": 2}
    client.send_raw(frame(bytes.fromhex("83a46b696e64a470696e67a5746f6b656e01a5746f6b656e02")))
    assert client.recv() == Pong(2)
    # {"kind": "frob", "token": 1, "kind": "ping"}: a ping, not an unknown kind
    client.send_raw(
        frame(bytes.fromhex("83a46b696e64a466726f62a5746f6b656e01a46b696e64a470696e67"))
    )
    assert client.recv() == Pong(1)


# -- 4.2: done fields by status (what the protocol package enforces) --------------------

_INFO = {"type": "E", "message": "m", "traceback": "t"}


@pytest.mark.parametrize(
    "status, value, error, valid",
    [
        ("ok", "1", None, True),
        ("ok", None, _INFO, False),
        ("error", None, _INFO, True),
        ("error", None, None, False),
        ("error", "ignored", _INFO, True),  # a value is not invalid; it is ignored
        ("cancelled", None, None, True),
        ("cancelled", None, _INFO, True),
        ("cancelled", "ignored", None, True),
    ],
)
def test_done_fields_by_status(status: str, value: object, error: object, valid: bool) -> None:
    wire: dict[str, object] = {"kind": "done", "op": 1, "status": status}
    if value is not None:
        wire["value"] = value
    if error is not None:
        wire["error"] = error
    if valid:
        assert isinstance(message_from_wire(wire), Done)
    else:
        with pytest.raises(RemoteProtocolError) as info:
            message_from_wire(wire)
        assert info.value.error_code == "bad-message"


# -- variables and eval values ----------------------------------------------------------


def test_variables_map_to_python_values(client: RunnerClient) -> None:
    r = client.exec(
        "[type(v).__name__ for v in (t, b, m, big, small)], t",
        variables={"t": (1, 2), "b": b"x", "m": {"k": [1]}, "big": 2**64 - 1, "small": -(2**63)},
    )
    assert r.value == "(['list', 'bytes', 'dict', 'int', 'int'], [1, 2])"
    assert client.eval("(1, 2)").value == [1, 2]  # a tuple goes out as an array too
    assert client.eval("{b'k': 1}").value == {b"k": 1}  # bin keys are data


def test_a_variable_beyond_64_bits_cannot_be_sent(client: RunnerClient) -> None:
    with pytest.raises(LocalProtocolError):
        client.start_exec("x", variables={"x": 2**64})


@pytest.mark.parametrize(
    "expr, named", [("2**64", "int"), ("-2**63 - 1", "int"), ("[1, 2**70]", "list")]
)
def test_eval_of_an_int_beyond_msgpack_is_a_type_error(
    client: RunnerClient, expr: str, named: str
) -> None:
    r = client.eval(expr)
    assert r.status == "error" and r.error["type"] == "TypeError"
    # The message names the whole result's type and what inside it failed.
    message = r.error["message"]
    assert message.startswith(
        f"eval result of type {named!r} cannot be sent as msgpack: an int does not fit in 64 bits"
    )
    assert client.eval("2**64 - 1").value == 2**64 - 1


# -- 6.6: getpass with canned stdin -----------------------------------------------------


def test_canned_getpass_prompts_on_stderr_and_input_on_stdout(client: RunnerClient) -> None:
    r = client.exec(
        "import getpass\nprint(repr(getpass.getpass('pw? ')))\nprint(repr(input('in? ')))",
        stdin="s3cret\nhi\n",
    )
    assert r.status == "ok"
    assert r.stderr == b"pw? "
    assert r.stdout == b"'s3cret'\nin? 'hi'\n"


# -- 6.9 / 7.2: shutdown ----------------------------------------------------------------


def test_ping_after_shutdown_is_answered_while_the_op_finishes(client: RunnerClient) -> None:
    # Since 1.1 (it was fatal in 1.0): a keep-alive pinger may race the shutdown.
    _running(client, "import time\ntry:\n    time.sleep(100)\nfinally:\n    time.sleep(0.3)")
    client.send(Shutdown())
    client.send(Ping(2))
    values = client.recv_raw_values()
    assert [v["kind"] for v in values] == ["pong", "done"], values
    assert values[0]["token"] == 2 and values[1]["status"] == "cancelled"
    assert client.wait() == EXIT_OK


def test_end_of_stream_after_shutdown_with_an_op_running_exits_5(client: RunnerClient) -> None:
    _running(client, "import time\ntry:\n    time.sleep(100)\nfinally:\n    time.sleep(0.3)")
    client.send(Shutdown())
    assert client.sock is not None
    client.sock.shutdown(1)
    assert client.recv_raw_values() == []  # no done: the runner treats it as a lost channel
    assert client.wait() == EXIT_CHANNEL_LOST


# -- silent points ----------------------------------------------------------------------


def test_stale_op_id_while_busy_is_bad_op_id_not_busy(client: RunnerClient) -> None:
    client.exec("1")
    _running(client)
    client.send_raw(frame(pack_body({"kind": "exec", "op": 1, "code": "2"})))
    assert _fatal(client)["code"] == "bad-op-id"
    assert client.wait() == EXIT_PROTOCOL


def test_done_that_would_exceed_the_clients_max_frame() -> None:
    c = RunnerClient(max_frame=64 * 1024)
    limit = 64 * 1024 // 4
    try:
        r = c.eval("b'x' * 100_000")
        assert (r.status, r.error["type"]) == ("error", "ValueError")
        assert "over the client's frame limit of 65536 bytes" in r.error["message"]
        r = c.exec("'y' * 100_000")
        assert r.status == "ok" and r.value.endswith("... [repr cut: 100002 characters in all]")
        assert r.value.startswith("'" + "y" * (limit - 1))
        r = c.exec("raise ValueError('x' * 200_000)")
        message = r.error["message"]
        assert r.status == "error" and f"\n... [{200_000 - limit} characters cut] ...\n" in message
        assert len(message) < limit + 100 and len(r.error["traceback"]) < limit + 100
        # The cut counts UTF-8 bytes: 3-byte characters are cut as short, and the error
        # keeps its own type, message and traceback.
        r = c.exec("raise ValueError('\\u20ac' * 200_000)")
        assert r.status == "error" and r.error["type"] == "ValueError"
        message, tb = r.error["message"], r.error["traceback"]
        assert message.startswith("\u20ac" * 100) and " characters cut] ...\n" in message
        assert len(message.encode()) < limit + 100 and len(tb.encode()) < limit + 100
        assert tb.startswith("Traceback (most recent call last):")
        r = c.exec("'\\u20ac' * 100_000")
        assert r.status == "ok" and r.value.endswith("... [repr cut: 100002 characters in all]")
        assert len(r.value.encode()) <= limit + 100
        assert c.exec("1").value == "1"
    finally:
        c.close()


def test_an_error_message_with_a_lone_surrogate_is_sent_escaped(client: RunnerClient) -> None:
    r = client.exec("raise ValueError('bad \\udc80 byte')")
    assert (r.status, r.error["type"]) == ("error", "ValueError")
    assert r.error["message"] == "bad \\udc80 byte"
    assert r.error["traceback"].endswith("ValueError: bad \\udc80 byte\n")
    r = client.exec("class R:\n    def __repr__(self): return '\\udc80'\nR()")
    assert (r.status, r.value) == ("ok", "\\udc80")


def test_bad_frame_message_names_the_problem(client: RunnerClient) -> None:
    client.send_raw(frame(b"\xc1\xc1\xc1"))
    err = _fatal(client)
    assert err["code"] == "bad-frame"
    assert str(err["message"]) == (
        "frame body of 3 bytes (starting c1 c1 c1) is not one valid msgpack value: it "
        "contains a byte that starts no msgpack type (0xc1 is reserved) (from the client, "
        "connection state IDLE)"
    )
