"""One end of a protocol connection, sans-IO (in the style of h11).

``send(message)`` checks the message against the state machines for this role and returns
the frame's bytes (the caller writes them); ``receive_data(bytes)`` takes what arrived (``b""``
for end of stream) and ``next_event()`` returns messages one by one, :data:`NEED_DATA`, or
:class:`ConnectionClosed`. Misuse on our side raises :class:`LocalProtocolError` and changes
nothing; anything invalid from the peer raises :class:`RemoteProtocolError` and moves the
connection to ERROR for good.
"""

from __future__ import annotations

import struct

import msgpack

from . import _state as S
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._fields import CLIENT, MAX_ID, RUNNER, STDERR, STDOUT
from ._frame import (
    ABSOLUTE_MAX_FRAME,
    BYTES_PER_OBJECT,
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    HEADER,
    MIN_MAX_FRAME,
    NEED_DATA,
    FrameDecoder,
    max_objects,
    unpack_body,
)
from ._message_base import Message, checked_wire, invalid_reason
from ._messages import (
    Error,
    Hello,
    Output,
    Ping,
    UnknownMessage,
    Welcome,
    message_from_wire,
)
from ._output_reader import OutputReader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: The protocol version this package implements.
PROTOCOL_VERSION = (1, 1)


_OTHER = {CLIENT: RUNNER, RUNNER: CLIENT}


class ConnectionClosed:
    """Returned by ``next_event`` once the peer's byte stream has ended.

    ``clean`` is True when the stream ended where the protocol allows it: after the
    handshake with no op running, or after a shutdown.
    """

    __slots__ = ("clean", "state")

    def __init__(self, state: str, clean: bool) -> None:
        self.state = state
        self.clean = clean

    def __repr__(self) -> str:
        return f"ConnectionClosed(state={self.state!r}, clean={self.clean})"


def error_key(msg: Message) -> str:
    """The transition key of a message (see _state's theory of operation)."""
    if type(msg) is Error:
        if msg.fatal:
            return S.ERROR_FATAL
        return S.ERROR_REJECT if msg.op is not None else S.ERROR_NOTICE
    return msg.KIND


class Connection:
    """The protocol state of one side of one connection.

    ``our_role`` is "client" or "runner". ``max_frame`` is the largest frame we accept
    (announced in our hello/welcome). ``trace``, if given, is called as
    ``trace(direction, message)`` with "send" or "recv" for every message: the frame log.
    """

    def __init__(
        self,
        our_role: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        trace: Callable[[str, Message], None] | None = None,
    ) -> None:
        if our_role not in (CLIENT, RUNNER):
            raise ValueError(f"our_role must be 'client' or 'runner', not {our_role!r}")
        if not MIN_MAX_FRAME <= max_frame <= ABSOLUTE_MAX_FRAME:
            raise ValueError(
                f"max_frame must be between {MIN_MAX_FRAME} and {ABSOLUTE_MAX_FRAME}, "
                f"not {max_frame}"
            )
        self.our_role = our_role
        self.their_role = _OTHER[our_role]
        self.max_frame = max_frame
        #: The largest frame the peer accepts (known after the handshake).
        self.peer_max_frame = HANDSHAKE_MAX_FRAME
        self.state = S.AWAIT_HELLO
        #: The op in flight (None when idle), its op state, and the last op id opened.
        self.current_op: int | None = None
        self.op_state: str | None = None
        self.last_op = 0
        #: Ops opened while busy, which the runner must reject with a non-fatal error.
        self.rejecting: set[int] = set()
        self.peer_hello: Hello | None = None
        self.peer_welcome: Welcome | None = None
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME, OutputReader())
        # One packer per connection (not per frame: creating one costs more than packing a
        # small message). Sends are serialised by the caller, as the state requires anyway.
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._output_key: tuple[int, str] | None = None
        self._output_head = b""
        self._eof = False
        self._closed_event: ConnectionClosed | None = None
        self._sent_fatal = False
        self.trace = trace

    # -- sending --------------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """Check ``msg`` is legal now, apply it, and return its frame's bytes."""
        data = self._send(msg)
        if type(data) is tuple:
            return b"".join(data)
        return data  # type: ignore[return-value]

    def send_pieces(self, msg: Message, objects_checked: bool = False) -> tuple[bytes, ...]:
        """As :meth:`send`, but return the frame as pieces to write in order (``writev``).

        An output frame comes as (everything before the payload, the payload), so a writer
        that writes the pieces with one ``os.writev`` never copies the payload itself.
        ``objects_checked``: the caller has checked the body against the peer's object
        budget already (decoding a big value twice is what it saves).
        """
        data = self._send(msg, objects_checked)
        if type(data) is tuple:
            return data
        return (data,)  # type: ignore[return-value]

    def _send(self, msg: Message, objects_checked: bool = False) -> bytes | tuple[bytes, bytes]:
        if type(msg) is Error and msg.fatal and not self._sent_fatal:
            # A failing side may always report why, once, even from ERROR.
            fatal = self._encode_wire(msg, checked_wire(msg))
            self._sent_fatal = True
            self.state = S.ERROR
            if self.trace is not None:
                self.trace("send", msg)
            return fatal
        cls = type(msg)
        if cls is UnknownMessage:
            raise LocalProtocolError("UnknownMessage is a received event; it cannot be sent")
        if self.state == S.CLOSED or self.state == S.ERROR:
            raise LocalProtocolError(
                f"the {self.our_role} cannot send {msg.KIND!r}: the connection is {self.state} "
                f"({S.EXPECTED[self.state]}); open a new connection"
            )
        if type(msg) is Output:
            # The hot path of a runner streaming output: invalid_reason's checks, inline.
            op = msg.op
            payload = msg.data
            stream = msg.stream
            if not (
                type(op) is int
                and 0 < op <= MAX_ID
                and type(payload) is bytes
                and payload
                and (stream == STDOUT or stream == STDERR)
            ):
                raise LocalProtocolError(str(invalid_reason(msg)), error_code="bad-message")
            problem = msg.problem()
            if problem is not None:
                raise LocalProtocolError(problem, error_code="bad-message")
            # Before any state change: a frame too large raises here.
            data: bytes | tuple[bytes, bytes] = self._encode_output(msg)
        else:
            if cls is Ping and self.state == S.CLOSING and self._peer_minor() < 1:
                raise LocalProtocolError(
                    "the runner speaks protocol 1.0, where a 'ping' after 'shutdown' is "
                    "fatal (allowed since 1.1); wait for the op's done instead",
                    error_code="unexpected-message",
                )
            data = self._encode_wire(msg, checked_wire(msg), objects_checked)
        try:
            self._apply(msg, self.our_role)
        except ProtocolError as exc:
            raise LocalProtocolError(str(exc), error_code=exc.error_code) from None
        if self.trace is not None:
            self.trace("send", msg)
        return data

    def _encode(self, msg: Message) -> bytes:
        """The frame of ``msg``; checks only its size against the peer's limit."""
        if type(msg) is Output:
            return b"".join(self._encode_output(msg))
        return self._encode_wire(msg, msg.to_wire())

    def _encode_output(self, msg: Output) -> tuple[bytes, bytes]:
        # Assemble an output frame around its payload so the payload is copied once;
        # the bytes are those msgpack would write (the golden vectors check it).
        payload = msg.data
        n = len(payload)
        key = (msg.op, msg.stream)
        if key != self._output_key:
            self._output_key = key
            self._output_head = _output_head(msg)
        if n < 256:
            bin_header = bytes((0xC4, n))
        elif n < 65536:
            bin_header = _BIN16.pack(0xC5, n)
        else:
            bin_header = _BIN32.pack(0xC6, n)
        size = len(self._output_head) + len(bin_header) + n
        if size > self.peer_max_frame:
            self._check_size(msg, size)
        return b"".join((HEADER.pack(size), self._output_head, bin_header)), payload

    def _encode_wire(
        self, msg: Message, wire: dict[str, Any], objects_checked: bool = False
    ) -> bytes:
        try:
            body: bytes = self._pack(wire)
        except (TypeError, ValueError, OverflowError) as exc:
            raise LocalProtocolError(f"cannot encode {msg.KIND!r} as msgpack: {exc}") from exc
        # max_objects(), inline: a body of up to half the budget is always within it.
        if len(body) * 2 > self.peer_max_frame // BYTES_PER_OBJECT:
            if len(body) > self.peer_max_frame:
                self._check_size(msg, len(body))
            if not objects_checked:
                self._check_objects(msg, body)
        return HEADER.pack(len(body)) + body

    def _check_objects(self, msg: Message, body: bytes) -> None:
        # Only a body longer than the peer's object budget can hold more objects than it:
        # decoding it as the peer will is the one exact check.
        try:
            unpack_body(body, self.peer_max_frame)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(
                f"{msg.KIND!r} frame would expand to more than "
                f"{max_objects(self.peer_max_frame)} msgpack objects, the limit of a peer "
                f"whose max_frame is {self.peer_max_frame} bytes (state {self.state}); "
                "send less data per message",
                error_code="frame-too-large",
            ) from exc

    def _check_size(self, msg: Message, size: int) -> None:
        if size > self.peer_max_frame:
            raise LocalProtocolError(
                f"{msg.KIND!r} frame of {size} bytes is over the peer's limit of "
                f"{self.peer_max_frame} bytes (state {self.state}); send less data per "
                f"message (split output, or pass large values another way)",
                error_code="frame-too-large",
            )

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Give the connection bytes from the peer; ``b""`` means the stream ended."""
        if data:
            if self._eof:
                raise LocalProtocolError("receive_data() called with data after end of stream")
            self._decoder.feed(data)
        else:
            self._eof = True

    def receive_into(self, readinto: Callable[[memoryview], int], size: int = 65536) -> int:
        """Read bytes from the peer with ``readinto(view) -> count`` (such as
        ``socket.recv_into`` or ``lambda v: os.readv(fd, [v])``), straight into the
        decoder's buffer: no ``bytes`` object per read. Reads at most ``size`` bytes, or
        what completes a frame already announced; returns the count, and 0 means the
        stream ended (as ``receive_data(b"")``). Exceptions of ``readinto`` propagate and
        change nothing. ``readinto`` must not keep the view."""
        if self._eof:
            raise LocalProtocolError("receive_into() called after end of stream")
        n = self._decoder.read_into(readinto, size)
        if not n:
            self._eof = True
        return n

    def next_event(self) -> Message | ConnectionClosed | Any:
        """The next message from the peer, NEED_DATA, or ConnectionClosed at the end."""
        if self.state == S.ERROR:
            raise RemoteProtocolError(
                "the connection is in the ERROR state after an earlier protocol error; "
                "close it and open a new one",
                error_code="connection-failed",
            )
        try:
            try:
                value = self._decoder.next_value()
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(
                    f"{exc} (from the {self.their_role}, connection state {self.state})",
                    error_code=exc.error_code,
                ) from exc.__cause__
            if value is NEED_DATA:
                if self._eof:
                    return self._closed()
                return NEED_DATA
            # The decoder's fast path hands out big output messages ready-made.
            msg = value if type(value) is Output else message_from_wire(value)
            if type(msg) is UnknownMessage:
                if self.state not in (S.IDLE, S.BUSY, S.CLOSING):
                    raise RemoteProtocolError(
                        f"unknown message kind {msg.kind!r} in state {self.state}; "
                        f"expected {S.EXPECTED[self.state]}",
                        error_code="unexpected-message",
                    )
            else:
                if msg.SENDER != self.their_role and msg.SENDER != "both":
                    raise RemoteProtocolError(
                        f"{msg.KIND!r} is sent by the {msg.SENDER}, but came from the "
                        f"{self.their_role} (state {self.state})",
                        error_code="unexpected-message",
                    )
                self._apply(msg, self.their_role)
        except RemoteProtocolError:
            self.state = S.ERROR
            raise
        except ProtocolError as exc:
            self.state = S.ERROR
            raise RemoteProtocolError(str(exc), error_code=exc.error_code) from None
        if self.trace is not None:
            self.trace("recv", msg)
        return msg

    def _closed(self) -> ConnectionClosed:
        if self._closed_event is not None:
            return self._closed_event  # asked again: the same answer, still clean or not
        buffered = self._decoder.buffered
        if buffered:
            raise RemoteProtocolError(
                f"the {self.their_role} closed the connection in the middle of a frame "
                f"({buffered} bytes of it received, state {self.state})",
                error_code="truncated-frame",
            )
        was = self.state
        clean = was in (S.IDLE, S.CLOSING) and self.current_op is None
        self.state = S.CLOSED
        self._closed_event = ConnectionClosed(was, clean)
        return self._closed_event

    # -- the state machines ---------------------------------------------------------------

    def _apply(self, msg: Message, sender: str) -> None:
        """Step the machines for ``msg`` from ``sender``; raise ProtocolError on a miss.

        Nothing is changed unless the whole step is legal.
        """
        key = msg.KIND
        if key == "error":
            key = error_key(msg)
        elif (
            key == "output"
            and sender == RUNNER
            and msg.op == self.current_op  # type: ignore[attr-defined]
            and (self.op_state == S.RUNNING or self.op_state == S.AWAITING_INPUT)
        ):
            # The hot path of streaming output: an op in flight means the state is BUSY or
            # CLOSING, where the tables say (op state, runner, output) -> same op state.
            return
        elif key == "done" and sender == RUNNER and msg.op == self.current_op:  # type: ignore[attr-defined]
            # Hot path: the op in flight (so BUSY or CLOSING) ends from any op state.
            self.current_op = self.op_state = None
            if self.state == S.BUSY:
                self.state = S.IDLE
            return
        elif (
            (key == "exec" or key == "eval")
            and sender == CLIENT
            and self.state == S.IDLE
            and msg.op > self.last_op  # type: ignore[attr-defined]
            and not self.rejecting
        ):
            # Hot path: (IDLE, client, exec|eval) opens an op, as in the tables.
            self.state = S.BUSY
            self.current_op = self.last_op = msg.op  # type: ignore[attr-defined]
            self.op_state = S.STARTED
            return
        entry = S.CONNECTION_TRANSITIONS.get((self.state, sender, key))
        if entry is None:
            raise ProtocolError(
                f"{sender} may not send {key!r} in connection state {self.state}; "
                f"expected {S.EXPECTED[self.state]}",
                error_code="unexpected-message",
            )
        next_state, action = entry
        new_op_state = self.op_state
        new_current = self.current_op
        if action is S.OPENS_OP or action is S.MUST_REJECT:
            op = msg.op  # type: ignore[attr-defined]
            if op <= self.last_op:
                raise ProtocolError(
                    f"op id {op} is not greater than the last op id {self.last_op}; "
                    "op ids must increase on each connection",
                    error_code="bad-op-id",
                )
            if action is S.OPENS_OP and self.rejecting and self.our_role == CLIENT:
                # The runner may have accepted one of these (see _state), so the client
                # cannot tell whether the runner is idle: this op could be either.
                raise ProtocolError(
                    f"the client may not open op {op} yet: the runner has not answered "
                    f"op(s) {sorted(self.rejecting)}, sent while another op was running, "
                    "and may be running one of them (connection state "
                    f"{self.state}); wait for its answer",
                    error_code="unexpected-message",
                )
            if action is S.MUST_REJECT:
                self.rejecting.add(op)
                self.last_op = op
                self.state = next_state
                return
            new_current, new_op_state = op, S.STARTED
        elif action is S.OP_STEP:
            op = msg.op  # type: ignore[attr-defined]
            op_state = self.op_state
            adopted = False
            if op != self.current_op:
                if key == S.ERROR_REJECT and op in self.rejecting:
                    self.rejecting.discard(op)
                    return
                if (
                    op in self.rejecting
                    and self.current_op is None
                    and sender == RUNNER
                    and sender == self.their_role
                ):
                    # The client sent this op while it saw another running, but the runner
                    # had already finished that one when the request arrived, and accepted
                    # it (see _state's theory of operation). Only the client can be unsure.
                    adopted = True
                    op_state = S.STARTED
                    if next_state == S.IDLE:
                        next_state = S.BUSY
                elif (
                    sender == CLIENT
                    and msg.KIND in S.STALE_OK
                    and op <= self.last_op
                    and not (msg.KIND == "input_reply" and op in self.rejecting)
                ):
                    # Crossed with the op's completion: harmless. (An op still awaiting
                    # the runner's answer has asked for no input: a reply is not stale.)
                    return
                else:
                    raise ProtocolError(
                        f"{sender} sent {msg.KIND!r} naming op {op}, but the op in flight is "
                        f"{self.current_op} (connection state {self.state}, last op "
                        f"{self.last_op})",
                        error_code="unknown-op",
                    )
            assert op_state is not None
            step = S.OP_TRANSITIONS.get((op_state, sender, key))
            if step is None:
                raise ProtocolError(
                    f"{sender} may not send {key!r} while op {op} is {op_state} "
                    f"(connection state {self.state})",
                    error_code="unexpected-message",
                )
            new_op_state = step
            if adopted:
                self.rejecting.discard(op)
                new_current = op
            if step == S.DONE:
                new_current, new_op_state = None, None
                if next_state == S.BUSY:
                    next_state = S.IDLE
        elif type(msg) is Hello or type(msg) is Welcome:
            self._check_version(msg.version, msg.KIND)
            self._check_peer_limit(msg.max_frame, sender)
            if sender == self.our_role and msg.max_frame != self.max_frame:
                raise ProtocolError(
                    f"the {msg.KIND!r} announces max_frame={msg.max_frame}, but this "
                    f"connection accepts frames up to {self.max_frame} bytes; announce the "
                    "limit given to Connection(max_frame=...)",
                    error_code="bad-message",
                )
        # The step is legal: commit it.
        if action is S.OPENS_OP:
            self.last_op = new_current  # type: ignore[assignment]
        self.current_op = new_current
        self.op_state = new_op_state
        self.state = next_state
        if type(msg) is Hello or type(msg) is Welcome:
            self._handshake_step(msg, sender)

    def _check_version(self, version: tuple[int, int], kind: str) -> None:
        if version[0] != PROTOCOL_VERSION[0]:
            raise ProtocolError(
                f"{kind!r} speaks protocol version {version[0]}.{version[1]}, this side "
                f"speaks {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}; major versions must "
                "match: install matching versions of the client and the runner",
                error_code="version-mismatch",
            )

    def _check_peer_limit(self, max_frame: int, sender: str) -> None:
        if not MIN_MAX_FRAME <= max_frame <= ABSOLUTE_MAX_FRAME:
            raise ProtocolError(
                f"the {sender} announced max_frame={max_frame}; it must be between "
                f"{MIN_MAX_FRAME} and {ABSOLUTE_MAX_FRAME}",
                error_code="bad-message",
            )

    def _peer_minor(self) -> int:
        peer = self.peer_hello if self.our_role == RUNNER else self.peer_welcome
        return peer.version[1] if peer is not None else 0

    def _handshake_step(self, msg: Hello | Welcome, sender: str) -> None:
        if sender == self.their_role:
            if type(msg) is Hello:
                self.peer_hello = msg
            else:
                self.peer_welcome = msg  # type: ignore[assignment]
        if self.state == S.IDLE:
            # Handshake complete: both announced limits are now in force. Not before: the
            # client accepts only HANDSHAKE_MAX_FRAME until it has the welcome, so the
            # runner must not size its welcome by the hello's max_frame.
            peer = self.peer_hello if self.our_role == RUNNER else self.peer_welcome
            assert peer is not None
            self.peer_max_frame = peer.max_frame
            self._decoder.max_frame = self.max_frame


_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")


def _output_head(msg: Output) -> bytes:
    """The msgpack bytes of an output map up to its payload's bin header."""
    head: bytes = msgpack.packb({"kind": "output", "op": msg.op, "stream": msg.stream})
    # A fixmap header is 0x80 | count: the map gains one entry, the payload.
    return bytes((head[0] + 1,)) + head[1:] + b"\xa4data"
