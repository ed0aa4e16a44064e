"""The kit's own model of the connection and its ops, from the client's side: who may send
what when (spec section 7), independent of the library's state machines so that it
catches what they would share."""

from __future__ import annotations

from typing import Any

import attrs

from ..protocol import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    Done,
    Error,
    InputRequest,
    Message,
    Pong,
    Welcome,
)
from ._log import key_of, summarize
from ._rules import CheckFailed, violation


@attrs.define
class OpTrack:
    """What the kit knows of one op it opened."""

    kind: str
    allow_stdin: bool
    state: str = "sent"  # sent -> running -> done | rejected
    input_pending: bool = False


class ConnectionModel:
    """What the kit has sent and received on one connection, and what may come next."""

    def __init__(self) -> None:
        self.state = "new"  # new, hello-sent, open, closing, error
        self.welcome: Welcome | None = None
        #: The largest body the kit accepts; the hello announces it.
        self.max_frame = DEFAULT_MAX_FRAME
        #: The largest body the runner accepts (from its welcome).
        self.runner_max_frame = HANDSHAKE_MAX_FRAME
        self.fatal: Error | None = None
        self.ops: dict[int, OpTrack] = {}
        #: Ops of requests the kit sent to be refused, by op id: what was sent.
        self.refused_ops: dict[Any, str] = {}
        self.in_flight: int | None = None
        self.pings: set[int] = set()
        self.answered_pings: set[int] = set()
        self._waiting_for = ""

    def on_send(self, value: dict[str, Any]) -> None:
        """Track a message the kit sends that the runner must take as valid."""
        kind = value.get("kind")
        if kind == "hello":
            self.state = "hello-sent"
            self.max_frame = value.get("max_frame", self.max_frame)
        elif kind in ("exec", "eval"):
            op = value["op"]
            self.ops[op] = OpTrack(kind, bool(value.get("allow_stdin")))
        elif kind == "input_reply":
            track = self.ops.get(value["op"])
            if track is not None:
                track.input_pending = False
        elif kind == "ping":
            self.pings.add(value["token"])
        elif kind == "shutdown":
            self.state = "closing"

    def on_receive(self, msg: Message, waiting_for: str) -> None:
        """Hold a decoded message to the state machines of section 7, or raise CheckFailed
        (``waiting_for``: what the check waits for, for a request it had to refuse)."""
        self._waiting_for = waiting_for
        kind = msg.KIND
        if self.fatal is not None:
            raise violation(
                "8",
                f"a {kind!r} message after its fatal error {summarize(self.fatal.to_wire())}",
                "the runner to close the connection after a fatal error",
            )
        if self.state == "new":
            raise violation("5", f"a {kind!r} message before the kit sent hello", "nothing")
        if type(msg) is Error and msg.fatal:
            self.fatal = msg
            self.state = "error"
            return
        if self.state == "hello-sent" and type(msg) is not Welcome:
            raise violation(
                "7", f"a {key_of(msg)!r} message before the welcome", "a welcome or a fatal error"
            )
        if type(msg) is Error:
            if msg.op is not None:
                self._on_reject(msg)
            return
        if self.state == "hello-sent":
            if type(msg) is not Welcome:
                raise violation("7", f"a {kind!r} message before the welcome", "welcome")
            self._on_welcome(msg)
            return
        if type(msg) is Welcome:
            raise violation("7", "a second welcome", "one welcome per connection")
        if type(msg) is Pong:
            if msg.token not in self.pings or msg.token in self.answered_pings:
                raise violation(
                    "7",
                    f"a pong with token {msg.token}, which no unanswered ping carried",
                    "one pong per ping, with its token",
                )
            self.answered_pings.add(msg.token)
            return
        self._on_op_message(msg)

    def _on_welcome(self, msg: Welcome) -> None:
        self.welcome = msg
        self.state = "open" if self.state == "hello-sent" else self.state
        if not 65536 <= msg.max_frame <= 0xFFFFFFFF:
            raise violation(
                "4.1 fields",
                f"a welcome announcing max_frame {msg.max_frame}",
                "max_frame between 65536 and 4294967295",
            )
        self.runner_max_frame = msg.max_frame

    def _on_reject(self, msg: Error) -> None:
        assert msg.op is not None
        track = self.ops.get(msg.op)
        if track is None or track.state != "sent":
            what = "an op the kit never opened" if track is None else f"an op that is {track.state}"
            raise violation(
                "7",
                f"a rejection ({msg.code}) of op {msg.op}, {what}",
                "a rejection only as the first and only message about an op",
            )
        track.state = "rejected"

    def _on_op_message(self, msg: Message) -> None:
        op: int = msg.op  # type: ignore[attr-defined]
        track = self.ops.get(op)
        if track is None and op in self.refused_ops:
            # Not a breach of the state machine: the runner took a request it had to refuse.
            raise CheckFailed(
                self._waiting_for,
                f"a {msg.KIND!r} for op {op}: the runner accepted {self.refused_ops[op]}",
            )
        if track is None:
            raise violation(
                "7",
                f"a {msg.KIND!r} for op {op}, which the kit never opened",
                "messages about open ops",
            )
        if track.state in ("done", "rejected"):
            raise violation(
                "7",
                f"a {msg.KIND!r} for op {op} after its "
                + ("done" if track.state == "done" else "rejection"),
                "nothing about an op after its end",
            )
        if self.in_flight is None:
            self.in_flight = op
            track.state = "running"
        elif self.in_flight != op:
            raise violation(
                "7",
                f"a {msg.KIND!r} for op {op} while op {self.in_flight} is in flight",
                f"messages about op {self.in_flight} until its done",
            )
        track.state = "running"
        if type(msg) is InputRequest:
            if not track.allow_stdin:
                raise violation(
                    "7",
                    f"an input_request for op {op}, whose {track.kind} did not allow stdin",
                    "EOFError in the code, no input_request (section 6.6)",
                )
            if track.input_pending:
                raise violation(
                    "7",
                    f"a second input_request for op {op} before the kit answered the first",
                    "at most one outstanding input_request",
                )
            track.input_pending = True
        elif type(msg) is Done:
            if msg.status != "ok" and msg.value is not None:
                raise violation(
                    "4.2 done",
                    f"a done {msg.status!r} for op {op} with value {summarize(msg.value)}",
                    "the value nil",
                )
            if track.kind == "exec" and msg.value is not None and type(msg.value) is not str:
                raise violation(
                    "4.2 exec value",
                    f"a done for exec op {op} with value {summarize(msg.value)}",
                    "a str (the repr) or nil",
                )
            track.state = "done"
            track.input_pending = False
            self.in_flight = None
