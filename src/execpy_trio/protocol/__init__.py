"""execpy-trio protocol version 1, sans-IO: frames, messages and state machines.

Imports neither Trio nor anything above it (nor attrs, dataclasses, typing or logging, to
keep the runner's start-up fast). See spec/protocol.md for the normative description.
"""

from __future__ import annotations

from ._connection import PROTOCOL_VERSION, Connection, ConnectionClosed
from ._errors import ExecpyError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._fields import (
    CLIENT,
    RUNNER,
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_OK,
    STDERR,
    STDOUT,
)
from ._frame import (
    ABSOLUTE_MAX_FRAME,
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    MAX_NESTING,
    MIN_MAX_FRAME,
    NEED_DATA,
    FrameDecoder,
    frame,
    max_objects,
    pack_body,
    undecodable_reason,
    unpack_body,
)
from ._message_base import Message
from ._messages import (
    MESSAGE_TYPES,
    Cancel,
    Done,
    Error,
    Eval,
    Exec,
    Hello,
    InputReply,
    InputRequest,
    Output,
    Ping,
    Pong,
    Shutdown,
    UnknownMessage,
    Welcome,
    message_from_wire,
)

__all__ = [
    "ABSOLUTE_MAX_FRAME",
    "CLIENT",
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_MAX_FRAME",
    "MAX_NESTING",
    "MESSAGE_TYPES",
    "MIN_MAX_FRAME",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "RUNNER",
    "STATUS_CANCELLED",
    "STATUS_ERROR",
    "STATUS_OK",
    "STDERR",
    "STDOUT",
    "Cancel",
    "Connection",
    "ConnectionClosed",
    "Done",
    "Error",
    "Eval",
    "Exec",
    "ExecpyError",
    "FrameDecoder",
    "Hello",
    "InputReply",
    "InputRequest",
    "LocalProtocolError",
    "Message",
    "Output",
    "Ping",
    "Pong",
    "ProtocolError",
    "RemoteProtocolError",
    "Shutdown",
    "UnknownMessage",
    "Welcome",
    "frame",
    "max_objects",
    "message_from_wire",
    "pack_body",
    "undecodable_reason",
    "unpack_body",
]
