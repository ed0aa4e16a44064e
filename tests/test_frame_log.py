"""The frame log: the ``execpy_trio.frames`` logger at DEBUG logs every frame sent and
received; at any higher level it logs nothing, however many frames flow.

The client talks to a scripted runner over a memory stream (``connect_runner``), so the
test knows exactly which frames crossed the wire in each direction. A handler is attached
to the frames logger itself (level NOTSET), so any record the logger lets through is seen,
whatever the root logger's or pytest's capture handler's levels are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import execpy_trio as ex
import execpy_trio.protocol as P

FRAMES_LOGGER = "execpy_trio.frames"


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def frames_log() -> Iterator[tuple[logging.Logger, Recorder]]:
    logger = logging.getLogger(FRAMES_LOGGER)
    root = logging.getLogger()
    saved = (logger.level, logger.propagate, logger.disabled, root.level)
    recorder = Recorder()
    logger.addHandler(recorder)
    try:
        yield logger, recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(saved[0])
        logger.propagate, logger.disabled = saved[1], saved[2]
        root.setLevel(saved[3])


async def scripted_runner(
    stream: trio.abc.Stream, sent: list[P.Message], received: list[P.Message]
) -> None:
    """A runner that answers hello, ping, exec and eval, and ends at shutdown."""
    conn = P.Connection(P.RUNNER)

    async def send(msg: P.Message) -> None:
        sent.append(msg)
        await stream.send_all(conn.send(msg))

    try:
        while True:
            ev = conn.next_event()
            if ev is P.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if type(ev) is P.ConnectionClosed:
                return
            received.append(ev)
            if type(ev) is P.Hello:
                await send(P.Welcome((1, 0), "scripted", "0", "python", "3", 7, ev.max_frame))
            elif type(ev) is P.Ping:
                await send(P.Pong(ev.token))
            elif type(ev) is P.Exec:
                await send(P.Output(ev.op, "stdout", b"hi\n"))
                await send(P.Output(ev.op, "stderr", b"oops\n"))
                await send(P.Done(ev.op, "ok", "42", None))
            elif type(ev) is P.Eval:
                await send(P.Done(ev.op, "ok", [1, "two"], None))
            elif type(ev) is P.Shutdown:
                return
    finally:
        await stream.aclose()


async def session(sent: list[P.Message], received: list[P.Message]) -> None:
    """Some traffic in both directions: handshake, exec with output, eval, ping, close."""
    ours, theirs = trio.testing.memory_stream_pair()
    with trio.fail_after(10):  # a hang detector
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scripted_runner, theirs, sent, received)
            async with ex.connect_runner(ours) as runner:
                r = await runner.exec("print('hi')")
                assert (r.stdout, r.stderr, r.value) == ("hi\n", "oops\n", "42")
                assert await runner.eval("[1, 'two']") == [1, "two"]
                await runner.ping()


async def test_every_frame_is_logged_at_debug(
    frames_log: tuple[logging.Logger, Recorder],
) -> None:
    logger, recorder = frames_log
    logger.setLevel(logging.DEBUG)
    sent: list[P.Message] = []  # by the runner: received by the client
    received: list[P.Message] = []  # by the runner: sent by the client
    await session(sent, received)
    kinds = {type(m) for m in sent + received}
    assert {P.Hello, P.Welcome, P.Exec, P.Output, P.Done, P.Eval, P.Ping, P.Pong} <= kinds
    assert P.Shutdown in kinds
    assert all(r.name == FRAMES_LOGGER and r.levelno == logging.DEBUG for r in recorder.records)
    lines = [r.getMessage() for r in recorder.records]
    # Each direction in wire order, every frame once (the two directions interleave as
    # the tasks run, so they are compared separately).
    assert [x for x in lines if x.startswith("send ")] == [f"send {m!r}" for m in received]
    assert [x for x in lines if x.startswith("recv ")] == [f"recv {m!r}" for m in sent]
    assert len(lines) == len(sent) + len(received)


@pytest.mark.parametrize(
    "level", [logging.INFO, logging.WARNING, None], ids=["INFO", "WARNING", "default"]
)
async def test_nothing_is_logged_above_debug(
    frames_log: tuple[logging.Logger, Recorder], level: int | None
) -> None:
    logger, recorder = frames_log
    if level is None:  # the default: the logger inherits the root logger's WARNING
        logger.setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
    else:
        logger.setLevel(level)
    sent: list[P.Message] = []
    received: list[P.Message] = []
    await session(sent, received)
    assert len(sent) >= 5 and len(received) >= 5  # frames flowed
    assert recorder.records == []
