"""The connection and op state machines: the whole table, a model-based machine, crossings."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from execpy_trio.protocol import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    NEED_DATA,
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    ConnectionClosed,
    Done,
    Error,
    Eval,
    Exec,
    Hello,
    InputReply,
    InputRequest,
    LocalProtocolError,
    Message,
    Output,
    Ping,
    Pong,
    RemoteProtocolError,
    Shutdown,
    UnknownMessage,
    Welcome,
    frame,
    pack_body,
)
from execpy_trio.protocol import _state as S

CLIENT, RUNNER = "client", "runner"
KEYS = (
    "hello",
    "welcome",
    "exec",
    "eval",
    "input_reply",
    "cancel",
    "ping",
    "shutdown",
    "output",
    "input_request",
    "done",
    "pong",
    S.ERROR_FATAL,
    S.ERROR_REJECT,
    S.ERROR_NOTICE,
)
OP_KEYS = {"input_reply", "cancel", "output", "input_request", "done", S.ERROR_REJECT}


def make(key: str, op: int = 1, max_frame: int = DEFAULT_MAX_FRAME) -> Message:
    makers: dict[str, Callable[[], Message]] = {
        "hello": lambda: Hello(PROTOCOL_VERSION, "t", "1", max_frame),
        "welcome": lambda: Welcome(PROTOCOL_VERSION, "t", "1", "python", "3", 9, max_frame),
        "exec": lambda: Exec(op, "x"),
        "eval": lambda: Eval(op, "x"),
        "input_reply": lambda: InputReply(op, "line"),
        "cancel": lambda: Cancel(op),
        "ping": lambda: Ping(3),
        "shutdown": lambda: Shutdown(),
        "output": lambda: Output(op, "stdout", b"out"),
        "input_request": lambda: InputRequest(op, "? "),
        "done": lambda: Done(op, "ok", "42"),
        "pong": lambda: Pong(3),
        S.ERROR_FATAL: lambda: Error("internal", "boom", fatal=True),
        S.ERROR_REJECT: lambda: Error("busy", "no", op=op),
        S.ERROR_NOTICE: lambda: Error("unknown-kind", "ignored"),
    }
    return makers[key]()


def kind_of(key: str) -> str:
    return key.split("/")[0]


def conn_of(client: Connection, runner: Connection, role: str) -> Connection:
    return client if role == CLIENT else runner


def deliver(sender: Connection, receiver: Connection, msg: Message) -> None:
    receiver.receive_data(sender.send(msg))
    event = receiver.next_event()
    assert event == msg
    assert receiver.next_event() is NEED_DATA


def snapshot(conn: Connection) -> dict[str, Any]:
    return {
        "state": conn.state,
        "current_op": conn.current_op,
        "op_state": conn.op_state,
        "last_op": conn.last_op,
        "rejecting": set(conn.rejecting),
        "peer_max_frame": conn.peer_max_frame,
        "decoder_max": conn._decoder.max_frame,
        "buffered": conn._decoder.buffered,
        "peer_hello": conn.peer_hello,
        "peer_welcome": conn.peer_welcome,
        "sent_fatal": conn._sent_fatal,
    }


def shared(conn: Connection) -> tuple[Any, ...]:
    return (conn.state, conn.current_op, conn.op_state, conn.last_op, frozenset(conn.rejecting))


def handshaken(max_frame: int = DEFAULT_MAX_FRAME) -> tuple[Connection, Connection]:
    client, runner = (
        Connection(CLIENT, max_frame=max_frame),
        Connection(RUNNER, max_frame=max_frame),
    )
    deliver(client, runner, make("hello", max_frame=max_frame))
    deliver(runner, client, make("welcome", max_frame=max_frame))
    return client, runner


# --- situations: a pair of connections driven into every reachable (state, op state) ----

SITUATIONS: dict[str, tuple[str, str | None]] = {
    "fresh": (S.AWAIT_HELLO, None),
    "hello-sent": (S.AWAIT_WELCOME, None),
    "idle": (S.IDLE, None),
    "idle-after-op": (S.IDLE, None),
    "busy-started": (S.BUSY, S.STARTED),
    "busy-running": (S.BUSY, S.RUNNING),
    "busy-awaiting": (S.BUSY, S.AWAITING_INPUT),
    "closing-idle": (S.CLOSING, None),
    "closing-started": (S.CLOSING, S.STARTED),
    "closing-running": (S.CLOSING, S.RUNNING),
    "closing-awaiting": (S.CLOSING, S.AWAITING_INPUT),
}


def situation(name: str) -> tuple[Connection, Connection]:
    client, runner = Connection(CLIENT), Connection(RUNNER)
    if name == "fresh":
        return client, runner
    deliver(client, runner, make("hello"))
    if name == "hello-sent":
        return client, runner
    deliver(runner, client, make("welcome"))
    if name == "idle":
        return client, runner
    if name == "idle-after-op":
        deliver(client, runner, Exec(1, "x"))
        deliver(runner, client, Done(1, "ok"))
        return client, runner
    if name == "closing-idle":
        deliver(client, runner, Shutdown())
        return client, runner
    deliver(client, runner, Exec(1, "x"))
    if name.endswith("running"):
        deliver(runner, client, Output(1, "stdout", b"x"))
    if name.endswith("awaiting"):
        deliver(runner, client, InputRequest(1))
    if name.startswith("closing"):
        deliver(client, runner, Shutdown())
    return client, runner


def expected_outcome(
    state: str, op_state: str | None, sender: str, key: str
) -> tuple[str, str | None] | None:
    """(next state, next op state) from the tables, or None if the step is illegal.

    Op-scoped messages name the op in flight when there is one, else a never-opened op.
    """
    entry = S.CONNECTION_TRANSITIONS.get((state, sender, key))
    if entry is None:
        return None
    next_state, action = entry
    if action == S.OPENS_OP:
        return next_state, S.STARTED
    if action == S.MUST_REJECT:
        return next_state, op_state
    if action == S.OP_STEP:
        if op_state is None:
            return None  # names an op that was never opened
        step = S.OP_TRANSITIONS.get((op_state, sender, key))
        if step is None:
            return None
        if step == S.DONE:
            return (S.IDLE if next_state == S.BUSY else next_state), None
        return next_state, step
    return next_state, op_state


CASES = [(name, sender, key) for name in SITUATIONS for sender in (CLIENT, RUNNER) for key in KEYS]


@pytest.mark.parametrize(("name", "sender", "key"), CASES, ids=["-".join(c) for c in CASES])
def test_transition_table_is_honoured_on_both_sides(name: str, sender: str, key: str) -> None:
    state, op_state = SITUATIONS[name]
    client, runner = situation(name)
    assert (client.state, client.op_state) == (state, op_state)
    assert shared(client) == shared(runner)
    src = conn_of(client, runner, sender)
    dst = conn_of(client, runner, CLIENT if sender == RUNNER else RUNNER)
    if key in ("exec", "eval") or src.current_op is None:
        op = src.last_op + 1
    else:
        op = src.current_op
    msg = make(key, op=op)
    wire = frame(pack_body(msg.to_wire()))
    outcome = expected_outcome(state, op_state, sender, key)
    if key == S.ERROR_FATAL:
        outcome = (S.ERROR, op_state)  # always sendable once, from any state
    # A kind sent by the wrong role is never legal, whatever the table says.
    if msg.SENDER not in (sender, "both"):
        assert outcome is None

    if outcome is None:
        before = snapshot(src)
        with pytest.raises(LocalProtocolError) as local:
            src.send(msg)
        assert snapshot(src) == before
        with pytest.raises(RemoteProtocolError) as remote:
            dst.receive_data(wire)
            dst.next_event()
        assert dst.state == S.ERROR
        for exc in (local.value, remote.value):
            text = str(exc)
            assert kind_of(key) in text, text
            assert sender in text, text
            assert state in text, text
        assert remote.value.error_code in ("unexpected-message", "unknown-op")
        return

    data = src.send(msg)
    assert data == wire
    dst.receive_data(data)
    event = dst.next_event()
    assert event == msg
    next_state, next_op_state = outcome
    for conn in (src, dst):
        assert conn.state == next_state
        if next_state != S.ERROR:
            assert conn.op_state == (next_op_state if key != S.ERROR_FATAL else op_state)
    if next_state != S.ERROR:
        assert shared(client) == shared(runner)
    if key in ("exec", "eval") and state == S.BUSY:
        assert client.rejecting == runner.rejecting == {op}


def test_every_table_entry_is_exercised() -> None:
    covered = {(SITUATIONS[n][0], s, k) for n, s, k in CASES}
    assert (
        set(S.CONNECTION_TRANSITIONS)
        - {(st_, s, k) for st_, s, k in S.CONNECTION_TRANSITIONS if st_ in (S.CLOSED, S.ERROR)}
        <= covered
    )
    op_covered = {(SITUATIONS[n][1], s, k) for n, s, k in CASES}
    assert set(S.OP_TRANSITIONS) <= op_covered


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("terminal", ["closed", "error"])
def test_nothing_but_one_fatal_error_is_sent_from_closed_or_error(key: str, terminal: str) -> None:
    client, _runner = handshaken()
    if terminal == "closed":
        client.receive_data(b"")
        closed = client.next_event()
        assert isinstance(closed, ConnectionClosed) and closed.clean
        assert client.state == S.CLOSED
    else:
        client.receive_data(b"\x00\x00\x00\x01\xc1")
        with pytest.raises(RemoteProtocolError):
            client.next_event()
        assert client.state == S.ERROR
    msg = make(key)
    if key == S.ERROR_FATAL:
        client.send(msg)
        assert client.state == S.ERROR
        with pytest.raises(LocalProtocolError):
            client.send(msg)  # only once
        return
    before = snapshot(client)
    with pytest.raises(LocalProtocolError) as info:
        client.send(msg)
    assert snapshot(client) == before
    assert repr(kind_of(key)) in str(info.value)
    assert client.state in str(info.value)
    assert "client" in str(info.value)


# --- stale and unknown ops -------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(OP_KEYS))
def test_messages_about_an_ended_op(key: str) -> None:
    client, runner = situation("idle-after-op")
    sender = CLIENT if key in ("cancel", "input_reply") else RUNNER
    src = conn_of(client, runner, sender)
    dst = conn_of(client, runner, CLIENT if sender == RUNNER else RUNNER)
    msg = make(key, op=1)
    if key in S.STALE_OK:
        # Crossed with the op's done: harmless, ignored by both sides.
        before = shared(src)
        deliver(src, dst, msg)
        assert shared(src) == shared(dst) == before
    else:
        with pytest.raises(LocalProtocolError) as info:
            src.send(msg)
        assert info.value.error_code == "unknown-op"
        dst.receive_data(frame(pack_body(msg.to_wire())))
        with pytest.raises(RemoteProtocolError) as remote:
            dst.next_event()
        assert remote.value.error_code == "unknown-op"


def test_cancel_of_a_future_op_is_refused() -> None:
    client, _runner = situation("busy-running")
    with pytest.raises(LocalProtocolError) as info:
        client.send(Cancel(2))
    assert info.value.error_code == "unknown-op"


# --- crossings ---------------------------------------------------------------------------------


def test_cancel_crossing_done_is_ignored() -> None:
    client, runner = situation("busy-running")
    done = runner.send(Done(1, "ok"))
    cancel = client.send(Cancel(1))  # the client has not seen done yet
    runner.receive_data(cancel)
    assert runner.next_event() == Cancel(1)
    client.receive_data(done)
    assert client.next_event() == Done(1, "ok")
    assert shared(client) == shared(runner) == (S.IDLE, None, None, 1, frozenset())


def test_input_reply_crossing_done_is_ignored() -> None:
    client, runner = situation("busy-awaiting")
    done = runner.send(Done(1, "cancelled"))  # request withdrawn: the op was interrupted
    reply = client.send(InputReply(1, None))
    runner.receive_data(reply)
    assert runner.next_event() == InputReply(1, None)
    client.receive_data(done)
    assert client.next_event() == Done(1, "cancelled")
    assert shared(client) == shared(runner) == (S.IDLE, None, None, 1, frozenset())


def test_exec_while_busy_is_rejected_and_dropped() -> None:
    client, runner = situation("busy-running")
    deliver(client, runner, Exec(2, "y"))
    assert client.rejecting == runner.rejecting == {2}
    assert client.current_op == runner.current_op == 1
    with pytest.raises(LocalProtocolError):
        runner.send(Output(2, "stdout", b"x"))  # the runner may not run it
    deliver(runner, client, Output(1, "stdout", b"still op 1"))
    deliver(runner, client, Error("busy", "op 1 is running", op=2))
    assert client.rejecting == runner.rejecting == set()
    with pytest.raises(LocalProtocolError):
        runner.send(Error("busy", "again", op=2))  # rejected once only
    deliver(runner, client, Done(1, "ok"))
    assert shared(client) == shared(runner) == (S.IDLE, None, None, 2, frozenset())
    deliver(client, runner, Exec(3, "z"))  # the next op id is above the rejected one
    assert client.current_op == 3


def test_rejection_may_come_after_the_running_op_ends() -> None:
    client, runner = situation("busy-running")
    deliver(client, runner, Eval(2, "y"))
    deliver(runner, client, Done(1, "ok"))
    assert client.state == S.IDLE and client.rejecting == {2}
    deliver(runner, client, Error("busy", "op 1 was running", op=2))
    assert shared(client) == shared(runner) == (S.IDLE, None, None, 2, frozenset())


def test_exec_crossing_done_may_be_accepted() -> None:
    # The client sends op 2 while it still sees op 1 running; the runner has already sent
    # op 1's done, so op 2 arrives while it is idle and it runs it. The client must take
    # op 2's output as the start of op 2, not as a protocol error.
    client, runner = situation("busy-running")
    done = runner.send(Done(1, "ok"))
    exec2 = client.send(Exec(2, "y"))
    assert client.rejecting == {2}
    runner.receive_data(exec2)
    assert runner.next_event() == Exec(2, "y")
    assert (runner.state, runner.current_op, runner.rejecting) == (S.BUSY, 2, set())
    out = runner.send(Output(2, "stdout", b"op 2"))
    client.receive_data(done + out)
    assert client.next_event() == Done(1, "ok")
    assert client.next_event() == Output(2, "stdout", b"op 2")
    assert shared(client) == shared(runner) == (S.BUSY, 2, S.RUNNING, 2, frozenset())
    deliver(runner, client, Done(2, "ok"))
    assert shared(client) == shared(runner) == (S.IDLE, None, None, 2, frozenset())


def test_op_ids_must_increase() -> None:
    client, runner = situation("idle-after-op")
    for op in (1, 0):
        before = snapshot(client)
        with pytest.raises(LocalProtocolError) as info:
            client.send(Exec(op, "x") if op else Exec(1, "x"))
        assert info.value.error_code == "bad-op-id"
        assert snapshot(client) == before
    runner.receive_data(frame(pack_body(Eval(1, "x").to_wire())))
    with pytest.raises(RemoteProtocolError) as remote:
        runner.next_event()
    assert remote.value.error_code == "bad-op-id"
    assert "op id 1" in str(remote.value)


# --- frame limits and the handshake ------------------------------------------------------------


def test_frame_too_large_on_send_changes_nothing() -> None:
    client, runner = situation("busy-running")
    big = Output(1, "stdout", b"x" * DEFAULT_MAX_FRAME)
    before = snapshot(runner)
    with pytest.raises(LocalProtocolError) as info:
        runner.send(big)
    assert info.value.error_code == "frame-too-large"
    assert "16777216" in str(info.value)
    assert snapshot(runner) == before
    deliver(runner, client, Output(1, "stdout", b"x" * (DEFAULT_MAX_FRAME - 100)))


def test_frame_too_large_on_receive() -> None:
    client, _runner = handshaken(max_frame=HANDSHAKE_MAX_FRAME * 2)
    client.receive_data(struct.pack(">I", HANDSHAKE_MAX_FRAME * 2 + 1))
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.error_code == "frame-too-large"
    assert client.state == S.ERROR


def test_limits_before_and_after_the_handshake() -> None:
    client = Connection(CLIENT, max_frame=HANDSHAKE_MAX_FRAME * 4)
    runner = Connection(RUNNER, max_frame=HANDSHAKE_MAX_FRAME * 2)
    for conn in (client, runner):
        assert conn._decoder.max_frame == HANDSHAKE_MAX_FRAME
        assert conn.peer_max_frame == HANDSHAKE_MAX_FRAME
    # A hello over 64 KiB cannot be sent before the handshake.
    with pytest.raises(LocalProtocolError) as info:
        client.send(Hello(PROTOCOL_VERSION, "t", "1", client.max_frame, ("c" * 70_000,)))
    assert info.value.error_code == "frame-too-large"
    deliver(client, runner, make("hello", max_frame=client.max_frame))
    # Nor a welcome: the client still accepts only 64 KiB until it has the welcome.
    with pytest.raises(LocalProtocolError) as info:
        runner.send(
            Welcome(PROTOCOL_VERSION, "t", "1", "py", "3", 1, runner.max_frame, ("c" * 70_000,))
        )
    assert info.value.error_code == "frame-too-large"
    assert runner.state == S.AWAIT_WELCOME
    deliver(runner, client, make("welcome", max_frame=runner.max_frame))
    assert client.peer_max_frame == runner.max_frame and runner.peer_max_frame == client.max_frame
    assert client._decoder.max_frame == client.max_frame
    assert runner._decoder.max_frame == runner.max_frame
    deliver(client, runner, Exec(1, "x" * (runner.max_frame - 100)))
    with pytest.raises(LocalProtocolError):
        client.send(Exec(2, "x" * (runner.max_frame + 1)))


def test_announced_max_frame_must_be_the_connections() -> None:
    client = Connection(CLIENT, max_frame=HANDSHAKE_MAX_FRAME)
    before = snapshot(client)
    with pytest.raises(LocalProtocolError) as info:
        client.send(make("hello", max_frame=DEFAULT_MAX_FRAME))
    assert "max_frame" in str(info.value)
    assert snapshot(client) == before


@pytest.mark.parametrize("max_frame", [HANDSHAKE_MAX_FRAME - 1, 2**32])
def test_peer_max_frame_out_of_range_is_refused(max_frame: int) -> None:
    runner = Connection(RUNNER)
    runner.receive_data(frame(pack_body(Hello(PROTOCOL_VERSION, "t", "1", max_frame).to_wire())))
    with pytest.raises(RemoteProtocolError) as info:
        runner.next_event()
    assert info.value.error_code == "bad-message"


def test_major_version_mismatch() -> None:
    client, runner = Connection(CLIENT), Connection(RUNNER)
    with pytest.raises(LocalProtocolError) as local:
        client.send(Hello((2, 0), "t", "1", DEFAULT_MAX_FRAME))
    assert local.value.error_code == "version-mismatch"
    runner.receive_data(frame(pack_body(Hello((2, 0), "t", "1", DEFAULT_MAX_FRAME).to_wire())))
    with pytest.raises(RemoteProtocolError) as remote:
        runner.next_event()
    assert remote.value.error_code == "version-mismatch"
    assert "2.0" in str(remote.value) and "1.1" in str(remote.value)
    deliver(client, Connection(RUNNER), Hello((1, 7), "t", "1", DEFAULT_MAX_FRAME))  # minor ok


def test_unknown_kind_after_the_handshake_only() -> None:
    data = frame(pack_body({"kind": "frobnicate", "x": 1}))
    client, runner = handshaken()
    runner.receive_data(data)
    event = runner.next_event()
    assert isinstance(event, UnknownMessage) and event.kind == "frobnicate"
    assert runner.state == S.IDLE
    deliver(runner, client, Error("unknown-kind", "ignored 'frobnicate'"))
    fresh = Connection(RUNNER)
    fresh.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        fresh.next_event()
    assert info.value.error_code == "unexpected-message"
    assert "frobnicate" in str(info.value) and S.AWAIT_HELLO in str(info.value)
    with pytest.raises(LocalProtocolError):
        client.send(event)


# --- end of stream -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("fresh", False),
        ("hello-sent", False),
        ("idle", True),
        ("busy-running", False),
        ("closing-idle", True),
        ("closing-running", False),
    ],
)
def test_end_of_stream(name: str, clean: bool) -> None:
    client, runner = situation(name)
    for conn in (client, runner):
        state = conn.state
        conn.receive_data(b"")
        closed = conn.next_event()
        assert isinstance(closed, ConnectionClosed)
        assert (closed.state, closed.clean) == (state, clean)
        assert conn.state == S.CLOSED
        again = conn.next_event()
        assert isinstance(again, ConnectionClosed) and (again.state, again.clean) == (state, clean)
        with pytest.raises(LocalProtocolError):
            conn.receive_data(b"more")


def test_end_of_stream_inside_a_frame() -> None:
    client, runner = handshaken()
    client.receive_data(runner.send(Pong(1))[:-1])
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.error_code == "truncated-frame"


def test_trace_sees_every_message_both_ways() -> None:
    seen: list[tuple[str, str]] = []
    client = Connection(CLIENT, trace=lambda d, m: seen.append((d, m.KIND)))
    runner = Connection(RUNNER)
    deliver(client, runner, make("hello"))
    deliver(runner, client, make("welcome"))
    assert seen == [("send", "hello"), ("recv", "welcome")]


def test_role_must_be_client_or_runner() -> None:
    with pytest.raises(ValueError, match="our_role"):
        Connection("server")
    with pytest.raises(ValueError, match="max_frame"):
        Connection(CLIENT, max_frame=1000)


# --- the model-based machine ---------------------------------------------------------------


class Model:
    """The protocol as spec/protocol.md section 7 states it, written independently."""

    def __init__(self) -> None:
        self.state = S.AWAIT_HELLO
        self.op: int | None = None
        self.op_state: str | None = None
        self.last = 0
        self.rejecting: set[int] = set()

    def view(self) -> tuple[Any, ...]:
        return (self.state, self.op, self.op_state, self.last, frozenset(self.rejecting))

    def step(self, sender: str, msg: Message) -> bool:
        """Apply ``msg`` if it is legal; say whether it was."""
        kind, state = msg.KIND, self.state
        live = state in (S.IDLE, S.BUSY, S.CLOSING)
        if isinstance(msg, Error):
            if msg.fatal:
                self.state = S.ERROR
                return True
            if msg.op is None:
                return live
            if sender != RUNNER or not live:
                return False
            if msg.op == self.op and self.op_state == S.STARTED:
                self._end()
                return True
            if msg.op in self.rejecting:
                self.rejecting.discard(msg.op)
                return True
            return False
        if msg.SENDER != sender:
            return False
        if kind == "hello":
            if state != S.AWAIT_HELLO:
                return False
            self.state = S.AWAIT_WELCOME
            return True
        if kind == "welcome":
            if state != S.AWAIT_WELCOME:
                return False
            self.state = S.IDLE
            return True
        if not live:
            return False
        op = getattr(msg, "op", None)
        if kind in ("exec", "eval"):
            if state == S.CLOSING or op <= self.last:
                return False
            if state == S.IDLE and self.rejecting:
                return False  # unanswered ops: the runner may be running one of them
            self.last = op
            if state == S.IDLE:
                self.state, self.op, self.op_state = S.BUSY, op, S.STARTED
            else:
                self.rejecting.add(op)
            return True
        if kind == "ping":
            return True  # CLOSING too, since 1.1
        if kind == "pong":
            return True
        if kind == "shutdown":
            if state == S.CLOSING:
                return False
            self.state = S.CLOSING
            return True
        # Op-scoped.
        if op != self.op:
            if kind == "input_reply" and op in self.rejecting:
                return False  # no input was asked for an op not yet answered
            return kind in ("cancel", "input_reply") and op <= self.last
        if kind == "cancel":
            return True
        if kind == "input_reply":
            if self.op_state != S.AWAITING_INPUT:
                return False
            self.op_state = S.RUNNING
            return True
        if kind == "output":
            if self.op_state != S.AWAITING_INPUT:
                self.op_state = S.RUNNING
            return True
        if kind == "input_request":
            if self.op_state == S.AWAITING_INPUT:
                return False
            self.op_state = S.AWAITING_INPUT
            return True
        if kind == "done":
            self._end()
            return True
        raise AssertionError(kind)

    def _end(self) -> None:
        self.op = self.op_state = None
        if self.state == S.BUSY:
            self.state = S.IDLE


corrupt_frames = st.one_of(
    st.binary(max_size=30).map(lambda b: struct.pack(">I", 2**32 - 1 - len(b)) + b),
    st.binary(max_size=30).map(lambda b: frame(b"\xc1" + b)),
    st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1), max_size=3).map(
        lambda v: frame(pack_body(v))
    ),
    st.just(frame(pack_body({"kind": 5}))),
)


class ProtocolPair(RuleBasedStateMachine):
    @initialize(handshake=st.booleans())
    def begin(self, handshake: bool) -> None:
        self.start(handshake)

    def start(self, handshake: bool) -> None:
        self.client = Connection(CLIENT)
        self.runner = Connection(RUNNER)
        self.model = Model()
        self.over = False
        if handshake:
            self.try_send(CLIENT, make("hello"))
            self.try_send(RUNNER, make("welcome"))

    def try_send(self, sender: str, msg: Message) -> None:
        src = conn_of(self.client, self.runner, sender)
        dst = conn_of(self.client, self.runner, CLIENT if sender == RUNNER else RUNNER)
        trial = Model()
        trial.__dict__.update(self.model.__dict__, rejecting=set(self.model.rejecting))
        legal = trial.step(sender, msg)
        if not legal:
            before = snapshot(src)
            with pytest.raises(LocalProtocolError):
                src.send(msg)
            assert snapshot(src) == before
            return
        data = src.send(msg)
        dst.receive_data(data)
        assert dst.next_event() == msg
        self.model = trial
        if self.model.state != S.ERROR:
            assert dst.next_event() is NEED_DATA
        if self.model.state == S.ERROR:
            assert src.state == dst.state == S.ERROR
            with pytest.raises(RemoteProtocolError):
                dst.next_event()
            self.over = True

    @precondition(lambda self: self.over)
    @rule(handshake=st.booleans())
    def restart(self, handshake: bool) -> None:
        self.start(handshake)

    @precondition(lambda self: not self.over)
    @rule(
        sender=st.sampled_from([CLIENT, RUNNER]),
        key=st.sampled_from(KEYS),
        which=st.sampled_from(["current", "last", "next", "rejecting", "far"]),
    )
    def send(self, sender: str, key: str, which: str) -> None:
        m = self.model
        op = {
            "current": m.op if m.op is not None else max(m.last, 1),
            "last": max(m.last, 1),
            "next": m.last + 1,
            "rejecting": min(m.rejecting, default=m.last + 1),
            "far": m.last + 10,
        }[which]
        self.try_send(sender, make(key, op=op))

    @precondition(lambda self: not self.over)
    @rule(receiver=st.sampled_from([CLIENT, RUNNER]), data=corrupt_frames)
    def corrupt(self, receiver: str, data: bytes) -> None:
        conn = conn_of(self.client, self.runner, receiver)
        conn.receive_data(data)
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.state == S.ERROR
        for _ in range(2):  # permanent
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
            with pytest.raises(LocalProtocolError):
                conn.send(Ping(1) if receiver == CLIENT else Pong(1))
        conn.send(Error("bad-frame", "garbage", fatal=True))  # it may still say why, once
        self.over = True

    @precondition(lambda self: not self.over)
    @rule(receiver=st.sampled_from([CLIENT, RUNNER]))
    def end_of_stream(self, receiver: str) -> None:
        conn = conn_of(self.client, self.runner, receiver)
        conn.receive_data(b"")
        closed = conn.next_event()
        assert isinstance(closed, ConnectionClosed)
        m = self.model
        assert closed.clean == (m.state in (S.IDLE, S.CLOSING) and m.op is None)
        self.over = True

    @invariant()
    def both_agree_with_the_model(self) -> None:
        if self.over or not hasattr(self, "model"):
            return
        assert shared(self.client) == shared(self.runner) == self.model.view()


TestProtocolPair = ProtocolPair.TestCase


@pytest.mark.parametrize(
    "msg",
    [
        InputReply(0, "x"),  # op ids start at 1: must not be "ignored as stale" and sent
        Cancel(-3),
        Exec("1", "x"),  # type: ignore[arg-type]
        Exec(5, b"code"),  # type: ignore[arg-type]
        Ping(2**63),
        Error("busy", "m", op=0),
    ],
    ids=repr,
)
def test_client_cannot_send_an_invalid_message(msg: Message) -> None:
    client, _runner = situation("idle-after-op")
    before = snapshot(client)
    with pytest.raises(LocalProtocolError) as info:
        client.send(msg)
    assert info.value.error_code == "bad-message"
    assert msg.KIND in str(info.value)
    assert snapshot(client) == before


@pytest.mark.parametrize(
    "msg",
    [
        Output(1, "stdout", "text" * 100),  # type: ignore[arg-type]
        Output(1, "stdout", "t"),  # type: ignore[arg-type]
        Output(1, "stdout", bytearray(b"x" * 300)),  # type: ignore[arg-type]
        Output(1, "stdin", b"x"),
        Output(1, "stdout", b""),
        Done(1, "bogus"),
        Done(1, "error"),
        InputRequest(1, None),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_runner_cannot_send_an_invalid_message(msg: Message) -> None:
    _client, runner = situation("busy-running")
    before = snapshot(runner)
    with pytest.raises(LocalProtocolError) as info:
        runner.send(msg)
    assert info.value.error_code == "bad-message"
    assert snapshot(runner) == before


def test_output_frames_for_several_ops_and_streams_on_one_connection() -> None:
    # The sender caches the encoded start of an output frame per (op, stream).
    client, runner = handshaken()
    for op in (1, 2, 300, 70_000):
        deliver(client, runner, Exec(op, "x"))
        for stream in ("stdout", "stderr", "stdout"):
            for size in (1, 300, 70_000):
                deliver(runner, client, Output(op, stream, stream.encode() * size))
        deliver(runner, client, Done(op, "ok"))


class CrossingPair(RuleBasedStateMachine):
    """Frames cross on the wire: each side sends whatever its own machine allows, and
    frames are delivered later, in order. Traffic that the sender's machine allows must
    never be refused by the receiver's: that is what makes crossings harmless."""

    @initialize()
    def begin(self) -> None:
        self.client, self.runner = handshaken()
        self.to_runner: list[tuple[bytes, Message]] = []
        self.to_client: list[tuple[bytes, Message]] = []

    def _send(self, sender: str, key: str, which: str) -> None:
        conn = conn_of(self.client, self.runner, sender)
        op = {
            "current": conn.current_op or conn.last_op or 1,
            "rejecting": min(conn.rejecting, default=conn.last_op or 1),
            "last": conn.last_op or 1,
            "next": conn.last_op + 1,
        }[which]
        msg = make(key, op=op)
        try:
            data = conn.send(msg)
        except LocalProtocolError:
            return
        (self.to_runner if sender == CLIENT else self.to_client).append((data, msg))

    @rule(
        key=st.sampled_from(["exec", "eval", "input_reply", "cancel", "ping", "shutdown"]),
        which=st.sampled_from(["current", "rejecting", "last", "next"]),
    )
    def client_sends(self, key: str, which: str) -> None:
        self._send(CLIENT, key, which)

    @rule(
        key=st.sampled_from(["output", "input_request", "done", "pong", S.ERROR_REJECT]),
        which=st.sampled_from(["current", "rejecting", "last", "next"]),
    )
    def runner_sends(self, key: str, which: str) -> None:
        self._send(RUNNER, key, which)

    def _deliver(self, queue: list[tuple[bytes, Message]], conn: Connection) -> None:
        data, msg = queue.pop(0)
        conn.receive_data(data)
        assert conn.next_event() == msg  # never a RemoteProtocolError
        assert conn.next_event() is NEED_DATA

    @precondition(lambda self: bool(self.to_runner))
    @rule()
    def deliver_to_runner(self) -> None:
        self._deliver(self.to_runner, self.runner)

    @precondition(lambda self: bool(self.to_client))
    @rule()
    def deliver_to_client(self) -> None:
        self._deliver(self.to_client, self.client)

    @invariant()
    def settled_sides_agree(self) -> None:
        if not hasattr(self, "client") or self.to_runner or self.to_client:
            return
        if self.client.rejecting:
            # The client cannot know yet whether the runner accepted these ops.
            return
        assert shared(self.client) == shared(self.runner)


TestCrossingPair = CrossingPair.TestCase


def test_client_may_not_open_an_op_while_earlier_ones_are_unanswered() -> None:
    # After op 1's done the client has op 2 unanswered: the runner may have accepted it
    # (if it arrived after the done) and be running it, so op 3 could be either.
    client, runner = situation("busy-running")
    deliver(client, runner, Exec(2, "y"))
    deliver(runner, client, Done(1, "ok"))
    before = snapshot(client)
    with pytest.raises(LocalProtocolError) as info:
        client.send(Exec(3, "z"))
    assert "[2]" in str(info.value) and "op 3" in str(info.value)
    assert snapshot(client) == before
    deliver(client, runner, Ping(1))  # everything else is still allowed
    deliver(runner, client, Error("busy", "op 1 was running", op=2))
    deliver(client, runner, Exec(3, "z"))
    assert shared(client) == shared(runner) == (S.BUSY, 3, S.STARTED, 3, frozenset())


def test_ops_sent_while_busy_are_resolved_in_any_order_of_answers() -> None:
    client, runner = situation("busy-running")
    deliver(client, runner, Exec(2, "y"))
    deliver(client, runner, Eval(3, "z"))  # still busy in the client's view: allowed
    assert client.rejecting == runner.rejecting == {2, 3}
    deliver(runner, client, Error("busy", "b", op=3))
    deliver(runner, client, Done(1, "ok"))
    deliver(runner, client, Error("busy", "b", op=2))
    assert shared(client) == shared(runner) == (S.IDLE, None, None, 3, frozenset())


def test_input_reply_for_an_unanswered_op_is_not_stale() -> None:
    client, runner = situation("busy-running")
    deliver(client, runner, Exec(2, "y"))
    with pytest.raises(LocalProtocolError) as info:
        client.send(InputReply(2, "x"))  # no input_request for op 2 was seen
    assert info.value.error_code == "unknown-op"
    runner.receive_data(frame(pack_body(InputReply(2, "x").to_wire())))
    with pytest.raises(RemoteProtocolError) as remote:
        runner.next_event()
    assert remote.value.error_code == "unknown-op"
    # A cancel for it is fine: the runner may be running it by the time it arrives.
    client2, runner2 = situation("busy-running")
    deliver(client2, runner2, Exec(2, "y"))
    deliver(client2, runner2, Cancel(2))


def test_big_output_frames_take_the_decoders_shortcut() -> None:
    client, runner = situation("busy-running")
    reader = client._decoder.fast_path
    assert reader is not None
    answers: list[object] = []

    def spy(buf: bytes | bytearray, start: int, stop: int) -> object:
        answers.append(reader(buf, start, stop))
        return answers[-1]

    client._decoder.fast_path = spy
    deliver(runner, client, Output(1, "stderr", b"e" * 3000))
    deliver(runner, client, Output(1, "stderr", b"e" * 100))  # small: not offered
    assert len(answers) == 1 and answers[0] == Output(1, "stderr", b"e" * 3000)


@pytest.mark.parametrize("size", [1, 255, 256, 65535, 65536])
def test_send_pieces_is_send_split_around_the_output_payload(size: int) -> None:
    # Two identical pairs: one sends with send(), the other with send_pieces().
    (c1, r1), (c2, r2) = handshaken(), handshaken()
    deliver(c1, r1, Exec(1, "x"))
    deliver(c2, r2, Exec(1, "x"))
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    whole = r1.send(Output(1, "stdout", payload))
    pieces = r2.send_pieces(Output(1, "stdout", payload))
    assert len(pieces) == 2 and pieces[1] is payload  # the payload itself, not a copy
    assert b"".join(pieces) == whole
    assert shared(r1) == shared(r2)
    # Other messages come whole, as one piece, and step the machines the same way.
    assert r2.send_pieces(Done(1, "ok")) == (r1.send(Done(1, "ok")),)
    assert shared(r1) == shared(r2)
    # An illegal message is refused by both, with nothing changed.
    for conn, send in ((r1, r1.send), (r2, r2.send_pieces)):
        before = shared(conn)
        with pytest.raises(LocalProtocolError):
            send(Output(1, "stdout", b"late"))
        assert shared(conn) == before


def test_ping_after_shutdown_is_allowed_since_1_1_but_not_sent_to_a_1_0_runner() -> None:
    from execpy_trio.protocol import Ping, Pong, Shutdown

    for minor, allowed in ((1, True), (0, False)):
        client, runner = Connection(CLIENT), Connection(RUNNER)
        runner.receive_data(client.send(Hello((1, 1), "c", "1", DEFAULT_MAX_FRAME)))
        runner.next_event()
        client.receive_data(
            runner.send(Welcome((1, minor), "r", "1", "python", "3", 1, DEFAULT_MAX_FRAME))
        )
        client.next_event()
        runner.receive_data(client.send(Exec(1, "x")))
        runner.next_event()
        runner.receive_data(client.send(Shutdown()))
        runner.next_event()
        if allowed:
            runner.receive_data(client.send(Ping(5)))
            assert runner.next_event() == Ping(5)
            client.receive_data(runner.send(Pong(5)))
            assert client.next_event() == Pong(5)
            assert client.state == runner.state == "CLOSING"
        else:
            with pytest.raises(LocalProtocolError, match=r"speaks protocol 1\.0"):
                client.send(Ping(5))
            assert client.state == "CLOSING"
