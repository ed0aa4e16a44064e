"""The golden vectors in spec/vectors/v1.json: committed bytes, exact encoding and decoding."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from execpy_trio.protocol import (
    HANDSHAKE_MAX_FRAME,
    MESSAGE_TYPES,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    FrameDecoder,
    Output,
    RemoteProtocolError,
    UnknownMessage,
    frame,
    message_from_wire,
    pack_body,
)
from execpy_trio.protocol._output_reader import OutputReader

VECTORS_DIR = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS_DIR / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
DOC = json.loads((VECTORS_DIR / "v1.json").read_text(encoding="utf-8"))
VALID = DOC["valid"]
INVALID = DOC["invalid"]


def test_committed_file_is_what_the_generator_writes() -> None:
    committed = (VECTORS_DIR / "v1.json").read_text(encoding="utf-8")
    assert committed == gen.build(), "run spec/vectors/make_vectors.py to regenerate v1.json"


def test_every_message_kind_has_a_vector() -> None:
    kinds = {v["message"]["kind"] for v in VALID if not v["receive_only"]}
    assert kinds == {cls.KIND for cls in MESSAGE_TYPES}
    codes = {v["error_code"] for v in INVALID}
    assert codes == {"frame-too-large", "truncated-frame", "bad-frame", "bad-message"}


def test_output_vectors_cover_every_bin_width_and_both_encoder_paths() -> None:
    sizes = {
        len(gen.from_json(v["message"])["data"]) for v in VALID if v["message"]["kind"] == "output"
    }
    # bin8 edges, bin16 edges (generic and assembled encoder paths), bin32.
    assert {255, 256, 257, 65535, 65536} <= sizes
    for v in VALID:
        if v["message"]["kind"] == "output":
            data = bytes.fromhex(v["hex"])
            n = len(gen.from_json(v["message"])["data"])
            marker = 0xC4 if n < 256 else 0xC5 if n < 65536 else 0xC6
            width = 1 if n < 256 else 2 if n < 65536 else 4
            assert data[-n - width - 1] == marker, v["name"]


def _decode_all(data: bytes, chunk: int | None) -> list[Any]:
    decoder = FrameDecoder(2**32 - 1)
    values = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(len(data))][::chunk]
    for piece in pieces:
        decoder.feed(piece)
        while (value := decoder.next_value()) is not NEED_DATA:
            values.append(value)
    assert decoder.buffered == 0
    return values


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_decodes_exactly(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    expected_map = gen.from_json(vector["message"])
    for chunk in (None, 1, 7):
        if chunk == 1 and len(data) > 5000:
            chunk = 997  # byte-by-byte is covered by the small vectors; keep this fast
        values = _decode_all(data, chunk)
        assert values == [expected_map]
        assert list(values[0]) == list(expected_map)  # wire key order survives
    msg = message_from_wire(expected_map)
    if msg.KIND == "":
        assert isinstance(msg, UnknownMessage)
        assert vector["receive_only"]
        return
    if not vector["receive_only"]:
        # What the message class writes is what the vector holds, key order included.
        assert msg.to_wire() == expected_map
        assert list(msg.to_wire()) == list(expected_map)


@pytest.mark.parametrize(
    "vector", [v for v in VALID if not v["receive_only"]], ids=lambda v: v["name"]
)
def test_valid_vector_encodes_exactly(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    msg = message_from_wire(gen.from_json(vector["message"]))
    # The generic encoder and the connection's encoder (with its output fast path) agree.
    assert frame(pack_body(msg.to_wire())) == data
    conn = Connection(msg.SENDER if msg.SENDER != "both" else "runner")
    conn.peer_max_frame = 2**32 - 1
    assert conn._encode(msg) == data


def test_receive_only_vectors_decode_to_the_canonical_message() -> None:
    by_name = {v["name"]: v for v in VALID}
    reordered = message_from_wire(gen.from_json(by_name["exec-reordered-extra-field"]["message"]))
    assert reordered.to_wire() == {"kind": "exec", "op": 1, "code": "1"}
    wide = message_from_wire(gen.from_json(by_name["cancel-non-shortest-int"]["message"]))
    assert wide == message_from_wire({"kind": "cancel", "op": 5})
    assert bytes.fromhex(by_name["cancel-non-shortest-int"]["hex"]) != frame(
        pack_body(wide.to_wire())
    )


def _refuse(data: bytes, max_frame: int) -> RemoteProtocolError:
    """Feed ``data`` and then end of stream to a fresh runner-side connection."""
    conn = Connection("runner")
    assert conn._decoder.max_frame == max_frame
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        for _ in range(3):
            event = conn.next_event()
            assert event is NEED_DATA, event
            conn.receive_data(b"")
    assert conn.state == "ERROR"
    with pytest.raises(RemoteProtocolError):
        conn.next_event()  # the error is permanent
    return info.value


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert vector["max_frame"] == HANDSHAKE_MAX_FRAME
    exc = _refuse(data, vector["max_frame"])
    assert exc.error_code == vector["error_code"], str(exc)
    # Byte by byte gives the same verdict, and never more than one frame is buffered.
    conn = Connection("runner")
    with pytest.raises(RemoteProtocolError) as info:
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1])
            assert conn.next_event() is NEED_DATA
            assert conn._decoder.buffered <= HANDSHAKE_MAX_FRAME + 4
        conn.receive_data(b"")
        conn.next_event()
    assert info.value.error_code == vector["error_code"]


def test_oversized_frame_is_refused_from_the_header_alone() -> None:
    conn = Connection("runner")
    conn.receive_data(b"\xff\xff\xff\xff")  # no body byte, no end of stream
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.error_code == "frame-too-large"
    assert "4294967295" in str(info.value)


def test_valid_vectors_through_the_connections_decoder() -> None:
    # The connection's decoder reads big output frames without msgpack (OutputReader).
    stream = b"".join(bytes.fromhex(v["hex"]) for v in VALID)
    expected = [message_from_wire(gen.from_json(v["message"])) for v in VALID]
    for chunk in (None, 4093):
        decoder = FrameDecoder(2**32 - 1, OutputReader())
        got = []
        pieces = (
            [stream]
            if chunk is None
            else [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
        )
        for piece in pieces:
            decoder.feed(piece)
            while (value := decoder.next_value()) is not NEED_DATA:
                got.append(value if isinstance(value, Output) else message_from_wire(value))
        assert got == expected


def test_valid_vectors_back_to_back_in_one_stream() -> None:
    stream = b"".join(bytes.fromhex(v["hex"]) for v in VALID)
    expected = [gen.from_json(v["message"]) for v in VALID]
    for chunk in (None, 4093):
        assert _decode_all(stream, chunk) == expected


def test_a_valid_frame_then_end_of_stream_is_clean() -> None:
    # The frame codec's "nothing left over" at end of stream, via the connection.
    client = Connection("client")
    runner = Connection("runner")
    runner.receive_data(bytes.fromhex(next(v for v in VALID if v["name"] == "hello")["hex"]))
    assert runner.next_event().KIND == "hello"
    runner.receive_data(b"")
    closed = runner.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert not closed.clean  # the client left in the middle of the handshake
    del client
