"""The protocol's two state machines, as data (spec/protocol.md, section 6).

Theory of operation
-------------------
Both roles run the *same* machines over the *same* messages: each side applies a message
when it sends it and when it receives it, so a client and a runner that exchanged the same
frames are always in the same state. A message is first reduced to a transition key (its
kind, refined for ``error``: ``error/fatal``, ``error/reject`` when it names an op, else
``error/notice``). Then:

* the **connection machine** looks up ``(state, sender, key)``. A miss is a protocol error
  naming the message, the role and the state.
* op-scoped messages about the current op also step the **op machine**
  ``(op state, sender, key)``; when the op reaches DONE the connection leaves BUSY.

Two things are deliberately not misses, because they happen in correct programs when
messages cross on the wire:

* a ``cancel`` or ``input_reply`` for an op that already ended (the runner completed it
  while the client was sending): ignored;
* an ``exec`` or ``eval`` sent while another op runs: the runner must answer it with a
  non-fatal ``error`` naming that op (code ``busy``); both sides track such ops until then.
  The client cannot be sure, though: if the running op's ``done`` crossed its request, the
  runner was idle when the request arrived and accepted it. So on the client's side, the
  runner's first ``output``, ``input_request`` or ``done`` for such an op, arriving while
  no op is in flight, makes it the op in flight (the runner may not do this on its side).
  Until every such op is answered the client may not open another from IDLE (it could not
  tell whether the runner would run it), nor send an ``input_reply`` for one of them.

ERROR is permanent. CLOSED is reached when the peer's byte stream ends.
"""

from __future__ import annotations

from ._fields import CLIENT, RUNNER

# Connection states.
AWAIT_HELLO = "AWAIT_HELLO"
AWAIT_WELCOME = "AWAIT_WELCOME"
IDLE = "IDLE"
BUSY = "BUSY"
CLOSING = "CLOSING"
CLOSED = "CLOSED"
ERROR = "ERROR"
CONNECTION_STATES = (AWAIT_HELLO, AWAIT_WELCOME, IDLE, BUSY, CLOSING, CLOSED, ERROR)

# Op states.
STARTED = "STARTED"
RUNNING = "RUNNING"
AWAITING_INPUT = "AWAITING_INPUT"
DONE = "DONE"
OP_STATES = (STARTED, RUNNING, AWAITING_INPUT, DONE)

# Transition keys that are not plain kinds.
ERROR_FATAL = "error/fatal"
ERROR_REJECT = "error/reject"
ERROR_NOTICE = "error/notice"

#: Marks an entry whose message opens a new op.
OPENS_OP = "opens-op"
#: Marks an entry whose message is about the current op (steps the op machine).
OP_STEP = "op-step"
#: Marks an entry that opens an op the runner must reject (``busy``).
MUST_REJECT = "must-reject"

_LIVE = (IDLE, BUSY, CLOSING)

#: (state, sender, key) -> (next state, action or None)
CONNECTION_TRANSITIONS: dict[tuple[str, str, str], tuple[str, str | None]] = {
    (AWAIT_HELLO, CLIENT, "hello"): (AWAIT_WELCOME, None),
    (AWAIT_WELCOME, RUNNER, "welcome"): (IDLE, None),
    (IDLE, CLIENT, "exec"): (BUSY, OPENS_OP),
    (IDLE, CLIENT, "eval"): (BUSY, OPENS_OP),
    (BUSY, CLIENT, "exec"): (BUSY, MUST_REJECT),
    (BUSY, CLIENT, "eval"): (BUSY, MUST_REJECT),
    (IDLE, CLIENT, "shutdown"): (CLOSING, None),
    (BUSY, CLIENT, "shutdown"): (CLOSING, None),
}
for _state in _LIVE:
    for _kind in ("output", "input_request", "done", ERROR_REJECT):
        CONNECTION_TRANSITIONS[(_state, RUNNER, _kind)] = (_state, OP_STEP)
    for _kind in ("cancel", "input_reply"):
        CONNECTION_TRANSITIONS[(_state, CLIENT, _kind)] = (_state, OP_STEP)
    CONNECTION_TRANSITIONS[(_state, RUNNER, "pong")] = (_state, None)
    for _role in (CLIENT, RUNNER):
        CONNECTION_TRANSITIONS[(_state, _role, ERROR_NOTICE)] = (_state, None)
for _state in _LIVE:
    # CLOSING too (since 1.1): a keep-alive pinger may race the shutdown. A ping sent
    # after shutdown may go unanswered: the runner closes once the op's done is out.
    CONNECTION_TRANSITIONS[(_state, CLIENT, "ping")] = (_state, None)
for _state in (AWAIT_HELLO, AWAIT_WELCOME, *_LIVE):
    for _role in (CLIENT, RUNNER):
        CONNECTION_TRANSITIONS[(_state, _role, ERROR_FATAL)] = (ERROR, None)
del _state, _kind, _role

#: (op state, sender, key) -> next op state
OP_TRANSITIONS: dict[tuple[str, str, str], str] = {
    (STARTED, RUNNER, "output"): RUNNING,
    (STARTED, RUNNER, "input_request"): AWAITING_INPUT,
    (STARTED, RUNNER, "done"): DONE,
    (STARTED, RUNNER, ERROR_REJECT): DONE,
    (STARTED, CLIENT, "cancel"): STARTED,
    (RUNNING, RUNNER, "output"): RUNNING,
    (RUNNING, RUNNER, "input_request"): AWAITING_INPUT,
    (RUNNING, RUNNER, "done"): DONE,
    (RUNNING, CLIENT, "cancel"): RUNNING,
    (AWAITING_INPUT, RUNNER, "output"): AWAITING_INPUT,
    (AWAITING_INPUT, RUNNER, "done"): DONE,
    (AWAITING_INPUT, CLIENT, "input_reply"): RUNNING,
    (AWAITING_INPUT, CLIENT, "cancel"): AWAITING_INPUT,
}

#: Client messages about an op that may arrive after it ended, and are then ignored.
STALE_OK = frozenset({"cancel", "input_reply"})

#: What each state is waiting for, for error messages.
EXPECTED: dict[str, str] = {
    AWAIT_HELLO: "the client's 'hello' (the first frame)",
    AWAIT_WELCOME: "the runner's 'welcome' (or a fatal 'error')",
    IDLE: "a request: exec, eval, ping, cancel of a finished op, or shutdown",
    BUSY: "messages of the running op: output, input_request, done, cancel, input_reply",
    CLOSING: "the end of the running op and then the end of the stream",
    CLOSED: "nothing: the peer closed the connection",
    ERROR: "nothing: the connection failed earlier and cannot be used",
}
