"""The frame codec: bounded, linear, and "a value or RemoteProtocolError, nothing else"."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from execpy_trio.protocol import (
    HANDSHAKE_MAX_FRAME,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    frame,
    pack_body,
    unpack_body,
)


def framed(value: Any) -> bytes:
    return frame(pack_body(value))


def drain(decoder: FrameDecoder) -> list[Any]:
    out = []
    while (value := decoder.next_value()) is not NEED_DATA:
        out.append(value)
    return out


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- the invariant on arbitrary bytes ----------------------------------------------------

# Mostly small length headers, so that random bodies actually get decoded, plus raw noise.
small_frames = st.lists(
    st.binary(max_size=40).map(lambda b: struct.pack(">I", len(b)) + b), max_size=6
).map(b"".join)
garbage = st.one_of(
    st.binary(max_size=200),
    small_frames,
    st.tuples(small_frames, st.binary(max_size=20)).map(b"".join),
)


def run_decoder(pieces: list[bytes]) -> list[Any] | RemoteProtocolError:
    decoder = FrameDecoder()
    values: list[Any] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            values.extend(drain(decoder))
            # Never more than one frame (its header and at most the limit) is held.
            assert decoder.buffered <= 4 + HANDSHAKE_MAX_FRAME + len(piece)
    except RemoteProtocolError as exc:
        return exc
    return values


def _same_outcome(a: list[Any] | RemoteProtocolError, b: list[Any] | RemoteProtocolError) -> None:
    if isinstance(a, RemoteProtocolError):
        assert isinstance(b, RemoteProtocolError)
        assert a.error_code == b.error_code
    else:
        assert a == b


@given(garbage, st.lists(st.integers(min_value=0, max_value=10_000), max_size=10))
def test_decoder_yields_values_or_remote_error_in_any_chunking(
    data: bytes, cuts: list[int]
) -> None:
    whole = run_decoder([data])
    byte_by_byte = run_decoder([data[i : i + 1] for i in range(len(data))])
    random_chunks = run_decoder(chunked(data, cuts))
    _same_outcome(whole, byte_by_byte)
    _same_outcome(whole, random_chunks)
    # Feeding bytearray and memoryview (copied, not borrowed) gives the same result too.
    _same_outcome(whole, run_decoder([bytearray(p) for p in chunked(data, cuts)]))
    _same_outcome(whole, run_decoder([memoryview(p) for p in chunked(data, cuts)]))


class Source:
    """A readinto() over fixed bytes, returning at most the next read size each call."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.pos = 0
        self.sizes = itertools.cycle([s or 1 for s in sizes] or [7])

    def __call__(self, view: memoryview) -> int:
        n = min(len(view), next(self.sizes), len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def run_read_into(data: bytes, sizes: list[int], size: int) -> list[Any] | RemoteProtocolError:
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
    source = Source(data, sizes)
    values: list[Any] = []
    try:
        while source.pos < len(data):
            decoder.read_into(source, size)
            values.extend(drain(decoder))
            assert decoder.buffered <= 4 + HANDSHAKE_MAX_FRAME + size
    except RemoteProtocolError as exc:
        return exc
    return values


@given(
    garbage,
    st.lists(st.integers(min_value=0, max_value=300), max_size=8),
    st.sampled_from([1, 5, 64, 4096]),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=4),
)
def test_reading_into_the_buffer_decodes_as_feeding_does(
    data: bytes, sizes: list[int], size: int, cuts: list[int]
) -> None:
    _same_outcome(run_decoder([data]), run_read_into(data, sizes, size))
    # Mixed with feeding (borrowed chunks, then reads into the buffer behind them).
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
    mixed: list[Any] | RemoteProtocolError = []
    try:
        for i, piece in enumerate(chunked(data, cuts)):
            if i % 2:
                source = Source(piece, sizes)
                while source.pos < len(piece):
                    decoder.read_into(source, size)
                    mixed.extend(drain(decoder))
            else:
                decoder.feed(piece)
                mixed.extend(drain(decoder))
    except RemoteProtocolError as exc:
        mixed = exc
    _same_outcome(run_decoder([data]), mixed)


def test_reading_into_the_buffer_completes_a_big_frame_and_then_lets_it_go() -> None:
    big = framed({"kind": "output", "data": b"\x01" * 3_000_000})
    decoder = FrameDecoder(2**32 - 1)
    source = Source(big + framed({"kind": "ping", "token": 1}), [1 << 30])
    decoder.read_into(source, 100)  # the header: the next read may be the whole frame
    assert decoder.next_value() is NEED_DATA
    decoder.read_into(source, 100)
    assert len(decoder.next_value()["data"]) == 3_000_000
    assert decoder.next_value() is NEED_DATA
    # Once empty, the decoder holds no more than a read's worth (the next read).
    assert len(decoder._buf) < 1 << 20
    decoder.read_into(source, 100)
    assert decoder.next_value() == {"kind": "ping", "token": 1}


def test_a_failed_read_into_the_buffer_changes_nothing() -> None:
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
    ping = framed({"kind": "ping", "token": 1})
    decoder.feed(ping[:3])

    def would_block(view: memoryview) -> int:
        raise BlockingIOError

    with pytest.raises(BlockingIOError):
        decoder.read_into(would_block, 64)
    assert decoder.buffered == 3
    decoder.feed(ping[3:])
    assert drain(decoder) == [{"kind": "ping", "token": 1}]


def test_connection_receive_into_reads_and_ends_like_receive_data() -> None:
    conn = Connection("runner")
    hello = {"kind": "hello", "version": [1, 1], "impl_name": "t", "impl_version": "0"}
    source = Source(framed({**hello, "max_frame": HANDSHAKE_MAX_FRAME}), [5])
    assert conn.receive_into(source, 1024) == 5
    assert conn.next_event() is NEED_DATA
    source.sizes = itertools.cycle([1000])
    assert conn.receive_into(source, 1024) > 0
    assert type(conn.next_event()) is Hello
    assert conn.receive_into(Source(b"", []), 1024) == 0  # the end of the stream
    assert isinstance(conn.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError, match="after end of stream"):
        conn.receive_into(Source(b"x", []), 1024)


@given(garbage, st.lists(st.integers(min_value=0, max_value=10_000), max_size=10))
def test_connection_yields_messages_or_remote_error(data: bytes, cuts: list[int]) -> None:
    for role in ("client", "runner"):
        for established in (False, True):
            conn = Connection(role)
            if established:
                # Straight into IDLE so that any message kind can be judged by the machine.
                conn.state = "IDLE"
            try:
                for piece in [*chunked(data, cuts), b""]:
                    conn.receive_data(piece)
                    for _ in range(len(data) + 2):  # bounded: never spins
                        event = conn.next_event()
                        if event is NEED_DATA or isinstance(event, ConnectionClosed):
                            break
                        assert isinstance(event, Message)
                    else:
                        pytest.fail("next_event produced more events than there are bytes")
            except RemoteProtocolError:
                assert conn.state == "ERROR"
                with pytest.raises(RemoteProtocolError):
                    conn.next_event()


# --- bounded memory ------------------------------------------------------------------------


def test_announced_4gib_frame_is_refused_after_its_header() -> None:
    decoder = FrameDecoder(2**32 - 1 - 1)
    decoder.feed(b"\xff\xff\xff")
    assert decoder.next_value() is NEED_DATA
    decoder.feed(b"\xff")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_value()
    assert info.value.error_code == "frame-too-large"
    assert decoder.buffered == 4


def test_body_of_an_oversized_frame_is_never_buffered() -> None:
    conn = Connection("runner")
    conn.receive_data(struct.pack(">I", HANDSHAKE_MAX_FRAME + 1))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.error_code == "frame-too-large"
    assert "65537" in str(info.value) and "65536" in str(info.value)
    assert conn.state == "ERROR"


def test_frame_at_the_limit_is_accepted() -> None:
    body = pack_body({"kind": "x", "pad": b"\x00" * (HANDSHAKE_MAX_FRAME - 30)})
    body = pack_body(
        {
            "kind": "x",
            "pad": b"\x00" * (HANDSHAKE_MAX_FRAME - 30 + (HANDSHAKE_MAX_FRAME - len(body))),
        }
    )
    assert len(body) == HANDSHAKE_MAX_FRAME
    decoder = FrameDecoder()
    decoder.feed(frame(body))
    assert drain(decoder)[0]["kind"] == "x"


def test_raising_the_limit_applies_to_the_next_header() -> None:
    data = framed({"kind": "x", "pad": b"\x00" * 70_000})
    decoder = FrameDecoder()
    decoder.max_frame = 100_000
    decoder.feed(data)
    assert len(drain(decoder)) == 1


# --- linear work, deterministically ------------------------------------------------------


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes it moves: appended, and shifted by deletions."""

    moved = 0

    def __iadd__(self, other: Any) -> CountingBuffer:  # type: ignore[override]
        self.moved += len(other)
        return super().__iadd__(other)  # type: ignore[return-value]

    def __delitem__(self, key: Any) -> None:
        if isinstance(key, slice):
            _start, stop, _ = key.indices(len(self))
            self.moved += len(self) - stop  # the tail is shifted down
        super().__delitem__(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, slice):
            self.moved += len(value)  # copied in
        super().__setitem__(key, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, _ = key.indices(len(self))
            self.moved += max(0, stop - start)
        return super().__getitem__(key)


def _feed_counting(pieces: list[bytes]) -> tuple[int, int]:
    decoder = FrameDecoder(2**32 - 1)
    buf = CountingBuffer()
    decoder._buf = buf  # white box: count the decoder's own copies
    values = 0
    total = 0
    for piece in pieces:
        total += len(piece)
        decoder.feed(piece)
        values += len(drain(decoder))
    assert decoder.buffered == 0
    return buf.moved, values


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_one_big_frame_in_small_pieces_is_linear(piece: int) -> None:
    data = framed({"kind": "output", "data": b"\x01" * 300_000})
    moved, values = _feed_counting([data[i : i + piece] for i in range(0, len(data), piece)])
    assert values == 1
    assert moved <= 2 * len(data)  # each byte is appended once, plus at most one compaction


@pytest.mark.parametrize("piece", [1, 7, 4093])
def test_many_small_frames_in_pieces_is_linear(piece: int) -> None:
    data = b"".join(framed({"kind": "ping", "token": i}) for i in range(30_000))
    moved, values = _feed_counting([data[i : i + piece] for i in range(0, len(data), piece)])
    assert values == 30_000
    assert moved <= 3 * len(data)


def test_frames_in_one_chunk_are_decoded_without_copying() -> None:
    data = b"".join(framed({"kind": "ping", "token": i}) for i in range(1000))
    moved, values = _feed_counting([data])
    assert values == 1000
    assert moved == 0


def test_a_frame_split_across_chunks_copies_only_its_tail() -> None:
    one = framed({"kind": "ping", "token": 1})
    moved, values = _feed_counting([one * 100 + one[:5], one[5:] + one * 100])
    assert values == 201
    # Only the split frame is copied: the rest of the second chunk is decoded in place.
    assert moved <= 2 * len(one)


def test_a_stream_of_big_frames_across_reads_copies_only_the_straddling_parts() -> None:
    # 64 KiB output frames read 256 KiB at a time, as the client reads them: only the
    # frames that straddle two reads are copied, never a whole read.
    data = b"".join(framed({"kind": "output", "data": bytes([i]) * 65536}) for i in range(64))
    reads = [data[i : i + 262144] for i in range(0, len(data), 262144)]
    moved, values = _feed_counting(reads)
    assert values == 64
    assert moved <= len(reads) * (65536 + 64)


# --- encoding --------------------------------------------------------------------------------


def test_pack_body_refuses_what_msgpack_cannot_carry() -> None:
    for bad in (object(), 2**64, {1.5j}):
        with pytest.raises(LocalProtocolError):
            pack_body(bad)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "it ends in the middle of a value"),
        (b"\xc1", "a byte that starts no msgpack type (0xc1 is reserved)"),
        (b"\x80\xc0", "it holds more than one value (1 bytes follow the first)"),
        (b"\x81\xa1k", "it ends in the middle of a value"),
        (b"\xd4\x05\x00", "msgpack extension type 5 is not allowed"),
        (b"\x91" * 5000 + b"\x01", "it nests containers deeper than 1024 levels"),
        (b"\x81\x01\x02", "a map key is not a str or bin (int)"),
        (b"\xa2\xff\xfe", "a str is not valid UTF-8 (invalid start byte at byte 0"),
    ],
)
def test_unpack_body_errors_say_what_was_wrong(body: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        unpack_body(body)
    assert info.value.error_code == "bad-frame"
    message = str(info.value)
    assert message.startswith(f"frame body of {len(body)} bytes (starting {body[:16].hex(' ')})")
    assert why in message


def test_connection_errors_name_the_sender_and_state() -> None:
    conn = Connection("runner")
    conn.receive_data(frame(b"\xc1"))
    with pytest.raises(RemoteProtocolError, match=r"\(from the client, connection state "):
        conn.next_event()


MIB = 1024 * 1024


def _array(n: int, element: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + element * n


def _peak_while(fn: Any) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "body",
    [
        # One frame of 16 million empty lists: 1.3 GB when decoded without a budget.
        _array(16 * MIB - 16, b"\x90"),
        # Fifteen arrays just under the per-container limit: the total is what counts.
        b"\x9f" + _array(MIB - 2, b"\x80") * 15,
        # Deep rather than wide.
        b"\x92" * 200 + _array(MIB // 2, b"\x90") * 2,
    ],
    ids=["one-wide-array", "many-arrays", "nested"],
)
def test_a_frame_cannot_expand_past_its_object_budget(body: bytes) -> None:
    decoder = FrameDecoder(16 * MIB)
    decoder.feed(frame(body))
    raised: list[RemoteProtocolError] = []

    def decode() -> None:
        with pytest.raises(RemoteProtocolError) as info:
            decoder.next_value()
        raised.append(info.value)

    peak = _peak_while(decode)
    assert raised[0].error_code == "bad-frame"
    assert (
        "it expands to more than 1048576 objects, the limit for a receiver whose "
        "max_frame is 16777216 bytes" in str(raised[0])
    )
    assert peak < 100 * MIB, f"decoding took {peak / MIB:.0f} MiB on the way to refusing"


@pytest.mark.parametrize("pad", [0, 100])
def test_the_budget_counts_short_bodies_too(pad: int) -> None:
    # About 8,100 counts in about 4,100 bytes (an empty list is an element and a list):
    # refused at a budget of 4,096 whatever the padding, so a sender cannot tell.
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
    decoder.feed(framed({"kind": "ping", "token": 1, "x": [[]] * 4056, "pad": "p" * pad}))
    with pytest.raises(RemoteProtocolError, match="more than 4096 objects"):
        decoder.next_value()


def test_a_decoder_below_the_smallest_frame_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 65536"):
        FrameDecoder(1024)


def test_a_frame_within_its_object_budget_is_accepted() -> None:
    decoder = FrameDecoder(16 * MIB)
    values = list(range(1_000_000))
    decoder.feed(framed({"kind": "x", "value": values}))
    assert decoder.next_value() == {"kind": "x", "value": values}
    # The budget scales with the receiver's limit, not the sender's.
    small = FrameDecoder(HANDSHAKE_MAX_FRAME)
    small.feed(framed(list(range(5000))))
    with pytest.raises(RemoteProtocolError, match="more than 4096 objects"):
        small.next_value()


def test_decoding_an_ordinary_stream_keeps_order_and_types() -> None:
    values = [{"kind": "a", "n": i, "b": bytes([i % 256]) * i, "s": "é" * i} for i in range(300)]
    data = b"".join(framed(v) for v in values)
    for cuts in ([], list(range(0, len(data), 97)), list(range(0, len(data), 65_537))):
        decoder = FrameDecoder(2**32 - 1)
        out: list[Any] = []
        for piece in chunked(data, cuts):
            decoder.feed(piece)
            out.extend(drain(decoder))
        assert out == values
    assert msgpack.unpackb(data[4 : 4 + struct.unpack(">I", data[:4])[0]]) == values[0]


def test_a_failed_read_that_is_kept_does_not_stop_the_buffer_growing() -> None:
    # The exception of a read that would block may be kept (a handler awaiting inside
    # its except clause keeps the traceback, and the view in its frames) while another
    # read grows the buffer for a big frame.
    decoder = FrameDecoder(2**32 - 1)

    def would_block(view: memoryview) -> int:
        raise BlockingIOError

    try:
        decoder.read_into(would_block, 64)
    except BlockingIOError as exc:
        kept = exc
    big = framed({"kind": "output", "data": b"\x02" * 1_000_000})
    source = Source(big, [1 << 30])
    while source.pos < len(big):
        decoder.read_into(source, 4096)
    assert len(decoder.next_value()["data"]) == 1_000_000
    assert kept.__traceback__ is not None
