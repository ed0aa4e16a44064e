"""The connected-stream launcher: the runner is whatever is at the other end of a stream
that is already connected (a test's memory stream, a Unix socket to a runner started
elsewhere). There is no process: the runner has ended when its stream has, "killing" it
means closing the stream (the session does that), and nothing has an exit status."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio

from ._base import Launcher, RunnerHandle

if TYPE_CHECKING:
    from trio.abc import Stream

    from .._options import RunnerOptions

__all__ = ["StreamHandle", "StreamLauncher"]


class StreamHandle(RunnerHandle):
    """A runner known only by its stream."""

    def __init__(self, stream: Stream, description: str) -> None:
        self.stream = stream
        self.description = description
        self._ended = trio.Event()

    async def wait(self) -> None:
        await self._ended.wait()

    def kill(self) -> None:
        self._ended.set()

    def stream_ended(self) -> None:
        self._ended.set()

    async def close(self, *, wait: float) -> None:
        self._ended.set()
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class StreamLauncher(Launcher):
    """Hands out one already connected stream, once."""

    def __init__(self, stream: Stream, description: str = "a connected stream") -> None:
        self._stream: Stream | None = stream
        self._description = description

    def __repr__(self) -> str:
        return f"StreamLauncher({self._description!r})"

    @contextlib.asynccontextmanager
    async def launch(self, options: RunnerOptions) -> AsyncIterator[RunnerHandle]:
        stream = self._stream
        if stream is None:
            raise RuntimeError(
                "this StreamLauncher's stream was already used: a connected stream carries "
                "one runner; make a new StreamLauncher for each stream"
            )
        self._stream = None
        handle = StreamHandle(stream, self._description)
        try:
            yield handle
        finally:
            await handle.close(wait=0)
