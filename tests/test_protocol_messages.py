"""The message catalogue: round trips of every kind, validation, and decoding failures."""

from __future__ import annotations

import inspect
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from execpy_trio.protocol import (
    MESSAGE_TYPES,
    NEED_DATA,
    Cancel,
    Connection,
    Done,
    Error,
    Eval,
    Exec,
    FrameDecoder,
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
    message_from_wire,
    pack_body,
)
from execpy_trio.protocol._message_base import checked_wire, invalid_reason
from execpy_trio.protocol._output_reader import OutputReader

MAX_ID = 2**63 - 1
ids = st.integers(min_value=1, max_value=MAX_ID)
uints = st.integers(min_value=0, max_value=MAX_ID)
frame_limits = st.integers(min_value=65536, max_value=2**32 - 1)
text = st.text(max_size=30)
versions = st.tuples(st.just(1), st.integers(min_value=0, max_value=2**32))
capabilities = st.lists(text, max_size=4).map(tuple)
# Plain msgpack data: what survives a round trip unchanged (lists, str keys, no NaN).
data_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False),
        text,
        st.binary(max_size=20),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
variables = st.one_of(st.none(), st.dictionaries(text, data_values, max_size=4))
error_info = st.fixed_dictionaries({"type": text, "message": text, "traceback": text})

done = st.one_of(
    st.builds(Done, ids, st.just("ok"), data_values),
    st.builds(Done, ids, st.just("error"), st.none(), error_info),
    st.builds(Done, ids, st.just("cancelled"), st.none(), st.none()),
)

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, versions, text, text, frame_limits, capabilities),
    Welcome: st.builds(
        Welcome, versions, text, text, text, text, uints, frame_limits, capabilities
    ),
    Exec: st.builds(Exec, ids, text, st.booleans(), st.none() | text, variables),
    Eval: st.builds(Eval, ids, text, variables),
    InputReply: st.builds(InputReply, ids, st.none() | text),
    Cancel: st.builds(Cancel, ids),
    Ping: st.builds(Ping, uints),
    Shutdown: st.builds(Shutdown),
    # Both encoder paths: up to 256 bytes generic, above it assembled around the payload.
    Output: st.builds(
        Output,
        ids,
        st.sampled_from(["stdout", "stderr"]),
        st.one_of(
            st.binary(min_size=1, max_size=300),
            st.integers(min_value=250, max_value=70_000).map(lambda n: b"\xab" * n),
        ),
    ),
    InputRequest: st.builds(InputRequest, ids, text, st.booleans()),
    Done: done,
    Pong: st.builds(Pong, uints),
    Error: st.builds(Error, text, text, st.none() | ids, st.booleans()),
}
any_message = st.one_of(*MESSAGES.values())


def test_strategies_cover_the_catalogue() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES)


def encode(msg: Message) -> bytes:
    conn = Connection("client" if msg.SENDER != "runner" else "runner")
    conn.peer_max_frame = 2**32 - 1
    return conn._encode(msg)


def decode(data: bytes) -> Message:
    decoder = FrameDecoder(2**32 - 1)
    decoder.feed(data)
    value = decoder.next_value()
    assert decoder.next_value() is NEED_DATA and decoder.buffered == 0
    return message_from_wire(value)


@given(any_message)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert data == frame(pack_body(msg.to_wire()))  # both encoder paths agree
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg
    assert back.to_wire() == msg.to_wire()
    assert repr(back) == repr(msg)


@given(any_message)
def test_to_wire_leaves_out_defaults_and_keeps_kind_first(msg: Message) -> None:
    wire = msg.to_wire()
    assert next(iter(wire)) == "kind" and wire["kind"] == msg.KIND
    always = {"capabilities", "text"}
    for name, _check, default in msg.FIELDS:
        if name in wire and name not in always:
            assert wire[name] != default
    # Fields come in the catalogue's order.
    order = [n for n, _c, _d in msg.FIELDS]
    present = [k for k in wire if k != "kind"]
    assert present == sorted(present, key=order.index)


def test_messages_are_frozen_and_hashable() -> None:
    msg = Exec(1, "x")
    with pytest.raises(AttributeError):
        msg.code = "y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del msg.code  # type: ignore[misc]
    assert hash(Exec(1, "x", variables={"a": [1]})) == hash(Exec(1, "x", variables={"a": [1]}))
    assert Exec(1, "x") != Eval(1, "x")
    assert Ping(1) != Pong(1)


# --- decoding failures ---------------------------------------------------------------------


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def refuse(data: bytes) -> RemoteProtocolError:
    conn = Connection("runner")
    conn.state = "IDLE"  # past the handshake, so every kind is judged on its fields
    conn._decoder.max_frame = 2**32 - 1
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert conn.state == "ERROR"
    return info.value


@pytest.mark.parametrize("depth", [900, 1000, 1020])
def test_deeply_nested_invalid_field_is_a_remote_error(depth: int) -> None:
    # msgpack decodes nesting up to about 1024 levels; an error message that repr()s such a
    # value hits Python's recursion limit, and a RecursionError must not escape.
    nested = b"\x91" * depth + b"\x01"
    exc = refuse(raw_frame(b"\x83\xa4kind\xa4exec\xa2op\x01\xa4code" + nested))
    assert exc.error_code == "bad-message"
    assert "'code'" in str(exc)
    exc = refuse(raw_frame(b"\x81\xa4kind" + nested))
    assert exc.error_code == "bad-message"


@pytest.mark.parametrize(
    "body",
    [
        # The timestamp extension (-1) is decoded by msgpack itself, not by the ext hook.
        b"\x84\xa4kind\xa4done\xa2op\x01\xa6status\xa2ok\xa5value\xd6\xff\x00\x00\x00\x01",
        b"\x84\xa4kind\xa4done\xa2op\x01\xa6status\xa2ok\xa5value\x91\x81\xa1a\xd6\xff\x00\x00\x00\x01",
        b"\x83\xa4kind\xa4exec\xa2op\x01\xa4code\xd6\xff\x00\x00\x00\x01",
        b"\x83\xa4kind\xa4ping\xa5token\x07\xa1x\xd7\xff" + b"\x00" * 8,
        b"\x82\xa4kind\xa9frobnicat\xa1x\xd6\xff\x00\x00\x00\x01",
        b"\x81\xa4kind\xd6\xff\x00\x00\x00\x01",
        b"\xd6\xff\x00\x00\x00\x01",
        b"\x84\xa4kind\xa4eval\xa2op\x01\xa4expr\xa1x\xa9variables\x81\xa1v\xd6\xff\x00\x00\x00\x01",
    ],
)
def test_timestamp_extension_is_refused_anywhere(body: bytes) -> None:
    assert "Timestamp" in repr(msgpack.unpackb(body, strict_map_key=False))
    exc = refuse(raw_frame(body))
    assert exc.error_code == "bad-frame", str(exc)
    assert "extension" in str(exc)


def test_unknown_kind_is_an_event_not_an_error() -> None:
    msg = message_from_wire({"kind": "frobnicate", "op": 1, "x": [1]})
    assert isinstance(msg, UnknownMessage)
    assert msg.kind == "frobnicate" and msg.fields == {"op": 1, "x": [1]}


@pytest.mark.parametrize(
    ("wire", "needle"),
    [
        ({"kind": "exec", "op": 1}, "'exec' message lacks the required field 'code'"),
        (
            {"kind": "exec", "op": 1, "code": 3},
            "'exec' message has an invalid 'code' field: 3 (int)",
        ),
        ({"kind": "cancel", "op": True}, "invalid 'op' field: True (bool)"),
        # The shapes the round trip's fast paths take, with one field out of range.
        ({"kind": "exec", "op": 0, "code": "x"}, "'exec' message has an invalid 'op' field"),
        ({"kind": "exec", "op": True, "code": "x"}, "invalid 'op' field: True (bool)"),
        ({"kind": "exec", "op": 2**63, "code": "x"}, "invalid 'op' field"),
        ({"kind": "done", "op": 0, "status": "ok"}, "'done' message has an invalid 'op' field"),
        ({"kind": "done", "op": "1", "status": "ok"}, "invalid 'op' field: '1' (str)"),
        ({"kind": "output", "op": 1, "stream": "stdout", "data": b""}, "'data'"),
        ({"kind": "done", "op": 1, "status": "error"}, "no error info"),
        ({"kind": 7}, "string 'kind'"),
    ],
)
def test_field_errors_name_the_kind_and_the_field(wire: dict[str, Any], needle: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        message_from_wire(wire)
    assert needle in str(info.value)
    assert info.value.error_code == "bad-message"


def test_long_invalid_values_are_cut_in_error_messages() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        message_from_wire({"kind": "exec", "op": 1, "code": b"x" * 100_000})
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_constructor_takes_the_fields_in_wire_order(cls: type[Message]) -> None:
    # from_wire builds messages positionally (or straight into the slots), in FIELDS order.
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params == [name for name, _check, _default in cls.FIELDS]
    assert set(cls.__slots__) == set(params)


@given(any_message)
def test_sender_checks_build_the_same_map_as_to_wire(msg: Message) -> None:
    wire = checked_wire(msg)
    assert list(wire.items()) == list(msg.to_wire().items())
    assert invalid_reason(msg) is None


@pytest.mark.parametrize(
    "msg",
    [Exec(0, "x"), Exec(2**63, "x"), Exec(1, b"x"), Done(0, "ok"), Done(True, "ok")],  # type: ignore[arg-type]
    ids=repr,
)
def test_sender_fast_paths_refuse_what_the_generic_checks_refuse(msg: Message) -> None:
    with pytest.raises(LocalProtocolError, match="field is invalid"):
        checked_wire(msg)


@pytest.mark.parametrize("size", [1, 255, 256, 2030, 2040, 2050, 2060, 65535, 65536, 70000])
def test_body_sizes_around_the_copy_and_view_paths(size: int) -> None:
    msgs = [Output(i + 1, "stdout", bytes([i]) * size) for i in range(3)]
    data = b"".join(encode(m) for m in msgs)
    for pieces in ([data], [data[: len(data) // 2], data[len(data) // 2 :]], [bytearray(data)]):
        decoder = FrameDecoder(2**32 - 1)
        out = []
        for piece in pieces:
            decoder.feed(piece)
            while (value := decoder.next_value()) is not NEED_DATA:
                out.append(message_from_wire(value))
        assert out == msgs


def _general(body: bytes) -> Message | None:
    try:
        return message_from_wire(msgpack.unpackb(body, ext_hook=lambda c, d: 1 / 0))
    except Exception:
        return None


canonical_outputs = st.builds(
    lambda op, stream, n: encode(Output(op, stream, b"\x5a" * n))[4:],
    st.sampled_from([1, 127, 128, 255, 256, 65535, 65536, 2**32, MAX_ID]),
    st.sampled_from(["stdout", "stderr"]),
    st.sampled_from([2100, 65535, 65536, 70_000]),
)


@st.composite
def output_like_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(canonical_outputs))
    # Corrupt a few bytes of the head or the bin header, or cut or extend the body.
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        i = draw(st.integers(min_value=0, max_value=45))
        body[i] = draw(st.integers(min_value=0, max_value=255))
    tail = draw(st.sampled_from(["keep", "cut", "extend"]))
    if tail == "cut":
        del body[-1]
    elif tail == "extend":
        body += b"\xc0"
    return bytes(body)


@given(st.lists(st.one_of(canonical_outputs, output_like_bodies()), min_size=1, max_size=4))
def test_output_reader_agrees_with_the_general_decoder(bodies: list[bytes]) -> None:
    # The connection's shortcut for big output frames (OutputReader) must give the
    # general decoder's message or step aside (None): never another answer, never raise.
    reader = OutputReader()  # one reader: its remembered head must not leak between frames
    for body in bodies:
        for buf, start in ((body, 0), (b"junk" + body + b"more", 4), (bytearray(body), 0)):
            got = reader(buf, start, start + len(body))
            if got is not None:
                assert got == _general(body)
                assert type(got.data) is bytes  # type: ignore[attr-defined]


def test_output_reader_reads_canonical_frames_and_switches_streams() -> None:
    reader = OutputReader()
    for op, stream in ((1, "stdout"), (1, "stderr"), (300, "stderr"), (300, "stdout")):
        body = encode(Output(op, stream, b"\x01" * 3000))[4:]
        assert reader(body, 0, len(body)) == Output(op, stream, b"\x01" * 3000)
        assert reader(body, 0, len(body)) == Output(op, stream, b"\x01" * 3000)  # cached head
