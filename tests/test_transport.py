"""Unit tests of the transport: states, routing, backpressure, frame log, failures."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import execpy_trio.protocol as P
from execpy_trio._transport import (
    BROKEN,
    CLOSED,
    OPEN,
    OpChannel,
    PeerClosed,
    Transport,
    TransportBroken,
)

WELCOME = P.Welcome((1, 0), "fake", "0", "python", "3.11", 7, P.DEFAULT_MAX_FRAME)
HELLO = P.Hello((1, 0), "test", "0", P.DEFAULT_MAX_FRAME)


class Peer:
    """The runner end: a real runner-role Connection over the other stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = P.Connection("runner")

    async def receive(self) -> P.Message | P.ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if event is not P.NEED_DATA:
                return event  # type: ignore[no-any-return]
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def send(self, msg: P.Message) -> None:
        await self.stream.send_all(self.conn.send(msg))


@asynccontextmanager
async def connected(
    *, lockstep: bool = False, sockets: bool = False, **options: float
) -> AsyncIterator[tuple[Transport, Peer, trio.Nursery]]:
    a: trio.abc.Stream
    b: trio.abc.Stream
    if sockets:  # a real socketpair: the transport's fd fast path
        sa, sb = trio.socket.socketpair()
        a, b = trio.SocketStream(sa), trio.SocketStream(sb)
    elif lockstep:
        a, b = trio.testing.lockstep_stream_pair()
    else:
        a, b = trio.testing.memory_stream_pair()
    transport = Transport(a, **options)  # type: ignore[arg-type]
    peer = Peer(b)
    async with trio.open_nursery() as nursery:

        async def peer_handshake() -> None:
            assert type(await peer.receive()) is P.Hello
            await peer.send(WELCOME)

        nursery.start_soon(peer_handshake)
        assert await transport.handshake(HELLO) == WELCOME
        nursery.start_soon(transport.run_reader)
        try:
            yield transport, peer, nursery
        finally:
            await transport.aclose()
            await b.aclose()


async def test_routes_op_messages_to_their_channel() -> None:
    async with connected() as (t, peer, _):
        channel = t.open_op(1)
        await t.send(P.Exec(1, "print(1)"))
        assert type(await peer.receive()) is P.Exec
        await peer.send(P.Output(1, "stdout", b"1\n"))
        await peer.send(P.Done(1, "ok"))
        got = [msg async for msg in channel]  # the channel ends after done
        assert got == [P.Output(1, "stdout", b"1\n"), P.Done(1, "ok")]
        stats = t.statistics()
        assert stats.state == OPEN and stats.ops_open == 0
        assert stats.frames_sent == 2 and stats.frames_received == 3  # welcome too


async def test_close_is_closed_resource_error() -> None:
    async with connected() as (t, _peer, _):
        channel = t.open_op(1)
        await t.aclose()
        await t.aclose()  # idempotent
        assert t.state == CLOSED and t.failure is None
        with pytest.raises(trio.EndOfChannel):
            await channel.receive()
        with pytest.raises(trio.ClosedResourceError, match="this side closed"):
            await t.send(P.Ping(1))
        with pytest.raises(trio.ClosedResourceError):
            t.open_op(2)
        with trio.fail_after(1):
            await t.reader_done.wait()


async def test_peer_eof_breaks_it() -> None:
    async with connected() as (t, peer, _):
        channel = t.open_op(1)
        await t.send(P.Exec(1, "x"))
        await peer.stream.aclose()
        with pytest.raises(trio.EndOfChannel):
            await channel.receive()
        assert t.state == BROKEN
        assert isinstance(t.failure, PeerClosed) and not t.failure.clean
        with pytest.raises(TransportBroken, match="broken") as info:
            await t.send(P.Ping(1))
        assert info.value.cause is t.failure


async def test_garbage_breaks_it_and_tells_the_peer() -> None:
    async with connected() as (t, peer, _):
        await peer.stream.send_all(b"\x00\x00\x00\x02\x91\xc1")
        with trio.fail_after(1):
            await t.reader_done.wait()
        assert t.state == BROKEN
        assert isinstance(t.failure, P.RemoteProtocolError)
        msg = await peer.receive()
        assert type(msg) is P.Error and msg.fatal and msg.code == "bad-frame"


async def test_oversized_frame_before_handshake_is_refused_unread() -> None:
    a, b = trio.testing.memory_stream_pair()
    t = Transport(a)
    async with b:
        await b.send_all(b"\x7f\xff\xff\xff")  # announces a 2 GiB frame, sends nothing more
        with pytest.raises(P.RemoteProtocolError, match="over the limit"):
            await t.handshake(HELLO)
        assert t.state == BROKEN
        await t.aclose()


async def answer_one_ping(peer: Peer) -> None:
    ping = await peer.receive()
    assert type(ping) is P.Ping
    await peer.send(P.Pong(ping.token))


async def test_ping_pong_and_ping_woken_by_break() -> None:
    async with connected() as (t, peer, nursery):
        nursery.start_soon(answer_one_ping, peer)
        with trio.fail_after(1):
            assert await t.ping() >= 0

        async def break_it() -> None:
            assert type(await peer.receive()) is P.Ping
            await peer.stream.aclose()

        nursery.start_soon(break_it)
        with pytest.raises(TransportBroken), trio.fail_after(1):
            await t.ping()


async def test_backpressure_stops_the_reader(autojump_clock: trio.abc.Clock) -> None:
    async with connected(op_buffer=2) as (t, peer, nursery):
        channel = t.open_op(1)

        async def flood() -> None:
            assert type(await peer.receive()) is P.Exec
            for _ in range(50):
                await peer.send(P.Output(1, "stdout", b"x"))
            await peer.send(P.Done(1, "ok"))

        nursery.start_soon(flood)
        await t.send(P.Exec(1, "flood"))
        await trio.sleep(10)
        # The welcome, 2 in the channel, 1 held by the blocked reader: it stopped reading.
        assert t.statistics().frames_received == 4
        # Writes do not depend on the reader: a cancel still goes out.
        with trio.fail_after(1):
            await t.send(P.Cancel(1))
        assert type(await peer.receive()) is P.Cancel
        got = [msg async for msg in channel]
        assert len(got) == 51 and type(got[-1]) is P.Done


async def test_send_timeout_breaks_it(autojump_clock: trio.abc.Clock) -> None:
    async with connected(lockstep=True, write_timeout=3) as (t, _peer, _):
        start = trio.current_time()
        with pytest.raises(TransportBroken, match="not reading"):
            await t.send(P.Ping(1))  # the peer never reads
        assert trio.current_time() - start == pytest.approx(3)
        assert t.state == BROKEN


async def test_send_is_not_interrupted_by_cancel() -> None:
    async with connected(lockstep=True) as (t, peer, nursery):
        got: list[object] = []

        async def slow_reader() -> None:
            await trio.sleep(0.05)
            got.append(await peer.receive())

        nursery.start_soon(slow_reader)
        with trio.move_on_after(0.01):
            await t.send(P.Ping(5))
        # The frame went out whole although the scope expired during the write.
        await trio.sleep(0.1)
        assert got == [P.Ping(5)]
        assert t.state == OPEN


async def test_local_protocol_error_sends_nothing() -> None:
    async with connected() as (t, _peer, _):
        with pytest.raises(P.LocalProtocolError):
            await t.send(P.Cancel(99))  # no such op
        assert t.state == OPEN


# --- the fd fast path (real sockets) -----------------------------------------------------

BIG = "x" * (4 * 1024 * 1024)  # far more than a socket buffer holds: a partial write


async def test_socket_frames_round_trip() -> None:
    async with connected(sockets=True) as (t, peer, _):
        channel = t.open_op(1)
        with trio.testing.assert_checkpoints():
            await t.send(P.Exec(1, "x = 1"))
        assert await peer.receive() == P.Exec(1, "x = 1")
        await peer.send(P.Done(1, "ok"))
        assert [msg async for msg in channel] == [P.Done(1, "ok")]
        assert t.statistics().frames_sent == 2


async def test_socket_partial_write_goes_out_whole_despite_cancel() -> None:
    async with connected(sockets=True) as (t, peer, nursery):
        got: list[object] = []
        arrived = trio.Event()

        async def slow_reader() -> None:
            await trio.sleep(0.05)
            got.append(await peer.receive())
            arrived.set()

        nursery.start_soon(slow_reader)
        with trio.move_on_after(0.01) as scope:
            await t.send(P.Exec(1, BIG))
        assert scope.cancel_called  # the deadline passed during the (shielded) write
        with trio.fail_after(5):
            await arrived.wait()
        assert got == [P.Exec(1, BIG)]
        assert t.state == OPEN


async def test_socket_send_timeout_breaks_it(autojump_clock: trio.abc.Clock) -> None:
    async with connected(sockets=True, write_timeout=3) as (t, _peer, _):
        start = trio.current_time()
        with pytest.raises(TransportBroken, match="not reading"):
            await t.send(P.Exec(1, BIG))  # the peer never reads
        assert trio.current_time() - start == pytest.approx(3)
        assert t.state == BROKEN


async def test_socket_peer_gone_breaks_it() -> None:
    async with connected(sockets=True) as (t, peer, _):
        await peer.stream.aclose()
        with pytest.raises(TransportBroken, match="broke") as info:
            for _ in range(10):  # the first write after the peer closed may still succeed
                await t.send(P.Ping(1))
        assert isinstance(info.value.cause, OSError)
        assert t.state == BROKEN


async def test_cancelled_send_sends_nothing() -> None:
    async with connected() as (t, peer, _):
        with trio.CancelScope() as scope:
            scope.cancel()
            await t.send(P.Ping(1))
        assert scope.cancelled_caught
        await t.send(P.Ping(2))
        assert await peer.receive() == P.Ping(2)


# --- op channels -------------------------------------------------------------------------


async def test_consumer_closing_releases_a_reader_held_by_backpressure() -> None:
    async with connected(op_buffer=2) as (t, peer, nursery):
        t.open_op(1)

        async def flood() -> None:
            assert type(await peer.receive()) is P.Exec
            for _ in range(20):
                await peer.send(P.Output(1, "stdout", b"x"))
            await peer.send(P.Done(1, "ok"))
            ping = await peer.receive()
            assert type(ping) is P.Ping
            await peer.send(P.Pong(ping.token))

        nursery.start_soon(flood)
        await t.send(P.Exec(1, "flood"))
        await trio.testing.wait_all_tasks_blocked()
        assert t.statistics().ops_open == 1  # the reader waits with the done unread
        t.close_op(1)  # the consumer goes away: the rest is dropped, the reader goes on
        with trio.fail_after(1):
            await t.ping()  # the pong got through the reader
        assert t.statistics().frames_received == 1 + 21 + 1


async def test_op_channel_semantics() -> None:
    channel = OpChannel(2)
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    assert channel.put_nowait(P.Done(1, "ok"))
    assert channel.put_nowait(P.Done(2, "ok"))
    assert not channel.put_nowait(P.Done(3, "ok"))  # full
    assert "2/2" in repr(channel)
    assert channel.receive_nowait() == P.Done(1, "ok")
    channel.end()
    assert channel.put_nowait(P.Done(4, "ok"))  # dropped: it ended
    assert await channel.receive() == P.Done(2, "ok")
    with pytest.raises(trio.EndOfChannel):
        await channel.receive()

    channel = OpChannel(1)
    async with trio.open_nursery() as nursery:
        errors: list[BaseException] = []

        async def consume() -> None:
            try:
                await channel.receive()
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        channel.close()  # from another task, while it waits
    assert len(errors) == 1
    assert channel.put_nowait(P.Done(1, "ok"))  # dropped: the consumer is gone
    with pytest.raises(trio.ClosedResourceError):
        channel.receive_nowait()


async def test_op_channel_waiting_put_and_cancelled_receive() -> None:
    channel = OpChannel(1)
    async with trio.open_nursery() as nursery:
        done: list[str] = []

        async def producer() -> None:
            for i in range(3):
                await channel.put(P.Done(i + 1, "ok"))
            done.append("put all")

        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done  # held by backpressure
        got = [await channel.receive() for _ in range(3)]
        assert [m.op for m in got] == [1, 2, 3]  # type: ignore[attr-defined]
    assert done == ["put all"]
    with trio.move_on_after(0.01):
        await channel.receive()
    assert channel.put_nowait(P.Done(9, "ok"))  # the cancelled receive left no waiter
    assert channel.receive_nowait() == P.Done(9, "ok")


# --- direct read: the consumer's task routes what the runner already sent ---------------


def _write_now(peer: Peer, *msgs: P.Message) -> None:
    """Write frames from the peer without a checkpoint: the reader cannot run meanwhile."""
    os.write(peer.stream.socket.fileno(), b"".join(peer.conn.send(m) for m in msgs))  # type: ignore[attr-defined]


async def _exec_sent(t: Transport, peer: Peer, op: int = 1) -> OpChannel:
    channel = t.open_op(op)
    await t.send(P.Exec(op, "x = 1"))
    assert type(await peer.receive()) is P.Exec
    await trio.testing.wait_all_tasks_blocked()  # the reader waits for bytes
    return channel


async def test_direct_read_delivers_in_order_and_yields_before_a_second_fill() -> None:
    async with connected(sockets=True) as (t, peer, _):
        channel = await _exec_sent(t, peer)
        outputs = [P.Output(1, "stdout", b"%d" % i) for i in range(3)]
        _write_now(peer, *outputs, P.Done(1, "ok"))
        assert await channel.receive() == outputs[0]  # routed in this task, by a fill
        assert channel.filled
        assert [m async for m in channel] == [*outputs[1:], P.Done(1, "ok")]
        assert t.conn.state == "IDLE"


async def test_direct_read_stops_at_a_full_channel_and_closing_routes_the_rest() -> None:
    async with connected(sockets=True, op_buffer=2) as (t, peer, nursery):
        channel = await _exec_sent(t, peer)
        _write_now(peer, *[P.Output(1, "stdout", b"%d" % i) for i in range(5)], P.Done(1, "ok"))
        assert (await channel.receive()).data == b"0"  # type: ignore[attr-defined]
        # Two buffered and one over the capacity, then the fill stopped: the rest waits
        # in the connection, and the reader waits for bytes that will not come.
        assert t.statistics().frames_received == 1 + 3
        assert t.conn.state == "BUSY"
        t.close_op(1)  # the consumer goes away: closing routes (drops) what was left
        assert t.statistics().frames_received == 1 + 6
        assert t.conn.state == "IDLE"
        nursery.start_soon(answer_one_ping, peer)
        with trio.fail_after(5):
            await t.ping()  # the reader goes on


async def test_direct_read_of_garbage_is_the_readers_to_report() -> None:
    async with connected(sockets=True) as (t, peer, _):
        channel = await _exec_sent(t, peer)
        os.write(peer.stream.socket.fileno(), b"\x00\x00\x00\x02\x91\xc1")  # type: ignore[attr-defined]
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await channel.receive()
        assert t.state == BROKEN
        assert isinstance(t.failure, P.RemoteProtocolError)
        msg = await peer.receive()
        assert type(msg) is P.Error and msg.fatal and msg.code == "bad-frame"


async def test_direct_read_leaves_the_end_of_the_stream_to_the_reader() -> None:
    async with connected(sockets=True) as (t, peer, _):
        channel = await _exec_sent(t, peer)
        _write_now(peer, P.Output(1, "stdout", b"last"))
        peer.stream.socket.shutdown(socket.SHUT_WR)  # type: ignore[attr-defined]
        with trio.fail_after(5):
            assert (await channel.receive()).data == b"last"  # type: ignore[attr-defined]
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
            await t.reader_done.wait()
        assert t.state == BROKEN and isinstance(t.failure, PeerClosed)


async def test_a_frame_sent_during_a_partial_write_waits_its_turn() -> None:
    # The first frame does not fit the socket buffer: its writer holds the write lock
    # while the rest goes out; a small frame sent meanwhile must come after it, whole.
    async with connected(sockets=True) as (t, peer, nursery):
        t.open_op(1)
        nursery.start_soon(t.send, P.Exec(1, BIG))
        await trio.testing.wait_all_tasks_blocked()
        assert t._write_lock.locked()
        nursery.start_soon(t.send, P.Ping(7))
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            assert await peer.receive() == P.Exec(1, BIG)
            assert await peer.receive() == P.Ping(7)
        assert t.statistics().frames_sent == 3
