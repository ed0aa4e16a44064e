"""Background tasks that must outlive a cancellation of their owner's scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

__all__ = ["ShieldedServices"]


class ShieldedServices:
    """Background tasks shielded from their nursery's cancellation, and stopped on purpose
    by :meth:`cancel` once the owner no longer needs them (run each with
    ``nursery.start_soon(services.run, fn, *args)``)."""

    def __init__(self) -> None:
        self._scopes: list[trio.CancelScope] = []
        self._cancelled = False

    async def run(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        with trio.CancelScope(shield=True) as scope:
            self._scopes.append(scope)
            if self._cancelled:
                scope.cancel()
            await fn(*args)

    def cancel(self) -> None:
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()
