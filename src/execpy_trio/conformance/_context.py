"""What a check works with: fresh runners, the runner's announced capabilities, notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from ..protocol import Welcome
from ._peer import CheckFailed, FrameLog, Peer


class Context:
    """One check's view of the runner under test.

    Every runner it starts is ended when the check ends, whatever happens.
    """

    def __init__(
        self, command: Sequence[str], probe: Welcome | None, nursery: trio.Nursery
    ) -> None:
        self.command = list(command)
        #: The welcome the runner gave the kit's first, plain hello (None if it gave none).
        self.probe = probe
        self.log = FrameLog()
        self.peers: list[Peer] = []
        self._nursery = nursery

    @property
    def capabilities(self) -> tuple[str, ...]:
        return () if self.probe is None else tuple(self.probe.capabilities)

    async def start(self) -> Peer:
        """A fresh runner, before any hello."""
        name = f"#{len(self.peers) + 1} " if self.peers else ""
        peer = Peer(self.command, self.log, name)
        self.peers.append(peer)
        try:
            await peer.start(self._nursery)
        except OSError as exc:
            raise CheckFailed(
                "the runner command to start", f"{type(exc).__name__}: {exc}"
            ) from None
        return peer

    async def connect(self, **hello: Any) -> Peer:
        """A fresh runner after a completed handshake (``hello`` fields over the kit's)."""
        peer = await self.start()
        await peer.handshake(**hello)
        return peer

    @property
    def current(self) -> Peer | None:
        return self.peers[-1] if self.peers else None

    async def drain(self) -> None:
        """Hold what every runner sends after the check's last read to the rules."""
        for peer in self.peers:
            await peer.drain()

    def notes(self) -> list[str]:
        return [note for peer in self.peers for note in peer.notes]

    async def aclose(self) -> None:
        for peer in self.peers:
            await peer.aclose()


def require(condition: object, expected: str, got: str) -> None:
    """Fail the check unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(expected, got)
