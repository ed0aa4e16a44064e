"""The op channel: the bounded FIFO that carries one op's messages from the transport's
reader task to the op's consumer (see :mod:`execpy_trio._transport`, "Backpressure")."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

    from trio.lowlevel import Task

    from .protocol import Message

__all__ = ["OpChannel"]


class OpChannel:
    """The messages of one op, from the reader task to the op's consumer: a bounded FIFO.

    The reader :meth:`put`\\s (waiting while the buffer is full: that is the backpressure),
    then :meth:`end`\\s it after the op's completion or when the transport stops; the
    consumer :meth:`receive`\\s until ``trio.EndOfChannel``. The consumer's :meth:`close`
    says it is gone: what is buffered and what comes later is dropped, and a waiting reader
    goes on. At most one reader and one consumer wait on it at a time, as a transport has.
    Lighter than a memory channel, which matters at tens of microseconds per round trip.
    """

    __slots__ = (
        "_buffer",
        "_capacity",
        "_closed",
        "_ended",
        "_fill",
        "_getter",
        "_held",
        "_putter",
        "filled",
    )

    def __init__(self, capacity: int, fill: Callable[[], bool] | None = None) -> None:
        self._buffer: deque[Message] = deque()
        self._capacity = capacity
        #: Called by an empty :meth:`receive` before it waits: it may route what the
        #: peer already sent, in the consumer's task (see the transport's "Direct read").
        self._fill = fill
        #: Messages were handed out from a fill since the consumer last yielded.
        self.filled = False
        self._ended = False  # nothing more will be put
        self._closed = False  # the consumer is gone
        self._getter: Task | None = None  # the consumer, waiting for a message
        self._putter: Task | None = None  # the reader, waiting for room
        self._held: Message | None = None  # what the waiting reader wants to put

    def __repr__(self) -> str:
        return (
            f"<OpChannel {len(self._buffer)}/{self._capacity} buffered"
            f"{' ended' if self._ended else ''}{' closed' if self._closed else ''}>"
        )

    # -- the reader's side ---------------------------------------------------------------

    def put_nowait(self, msg: Message) -> bool:
        """Buffer ``msg`` (drop it if the channel ended or was closed) and wake the
        consumer; False if the buffer is full and nothing was done."""
        if self._ended or self._closed:
            return True
        if len(self._buffer) >= self._capacity:
            return False
        self._buffer.append(msg)
        self._wake_getter()
        return True

    def put_over(self, msg: Message) -> None:
        """Buffer ``msg`` even when the buffer is full, one past ``capacity`` at most:
        for a fill that has already taken ``msg`` off the stream (it then stops)."""
        if self._ended or self._closed:
            return
        assert len(self._buffer) <= self._capacity, "a fill put over twice"
        self._buffer.append(msg)
        self._wake_getter()

    async def put(self, msg: Message) -> None:
        """Like :meth:`put_nowait`, but wait for room while the buffer is full.

        Not a checkpoint when there is room (the reader checkpoints on every read).
        Cancellation: ``msg`` is then not delivered.
        """
        if self.put_nowait(msg):
            return
        self._putter = trio.lowlevel.current_task()
        self._held = msg

        def abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
            self._putter = None
            self._held = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def end(self) -> None:
        """No more messages: the consumer gets what is buffered, then EndOfChannel."""
        self._ended = True
        self._release_putter()
        self._wake_getter()

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None:
            self._getter = None
            trio.lowlevel.reschedule(getter)

    def _release_putter(self) -> None:
        # The waiting reader goes on; its message is dropped: nobody will read it.
        putter = self._putter
        if putter is not None:
            self._putter = None
            self._held = None
            trio.lowlevel.reschedule(putter)

    # -- the consumer's side -------------------------------------------------------------

    def _take(self) -> Message | None:
        buffer = self._buffer
        if not buffer:
            if self._closed:
                raise trio.ClosedResourceError("this op channel was closed by its consumer")
            if self._ended:
                raise trio.EndOfChannel
            return None
        msg = buffer.popleft()
        putter = self._putter
        if putter is not None:  # room now: take the waiting reader's message
            buffer.append(self._held)  # type: ignore[arg-type]
            self._putter = None
            self._held = None
            trio.lowlevel.reschedule(putter)
        return msg

    def receive_nowait(self) -> Message:
        """The next message; raises trio.WouldBlock if none is there yet, trio.EndOfChannel
        after the last one, trio.ClosedResourceError after :meth:`close`."""
        msg = self._take()
        if msg is None:
            raise trio.WouldBlock
        return msg

    async def receive(self) -> Message:
        """Wait for the next message. Raises trio.EndOfChannel after the last one.

        Always a cancel point; a schedule point when it has to wait, and before a second
        fill (so a consumer takes at most a buffer's and a fill's worth before it yields;
        :attr:`filled` says when it has not yielded since the last fill).
        Cancellation: no message is lost.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            fill = self._fill
            if fill is not None:
                if self.filled:
                    self.filled = False
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    continue  # the reader may have run meanwhile
                if fill():
                    self.filled = True
                    continue
            self.filled = False
            self._getter = trio.lowlevel.current_task()

            def abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
                self._getter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        """The consumer is done: drop what is buffered and whatever still comes."""
        self._closed = True
        self._buffer.clear()
        self._release_putter()
        self._wake_getter()  # closed from another task while it waited

    def __aiter__(self) -> OpChannel:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
