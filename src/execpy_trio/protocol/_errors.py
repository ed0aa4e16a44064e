"""Protocol errors, shared by both roles.

These are plain exceptions so that the runner (which never imports Trio) can use them.
The public package re-exports them under :class:`execpy_trio.ExecpyError`.
"""

from __future__ import annotations


class ExecpyError(Exception):
    """Base class of every error this project raises."""


class ProtocolError(ExecpyError):
    """The protocol was violated.

    ``error_code`` is the machine-readable code that goes on the wire in an ``error``
    message (see spec/protocol.md, "Error codes").
    """

    error_code: str = "protocol"

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


class LocalProtocolError(ProtocolError):
    """This side tried to misuse the protocol. Nothing was sent; the state is unchanged."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid. The connection is now in the ERROR state for good."""
