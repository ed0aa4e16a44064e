"""The rules every frame from the runner is held to, in every check, quoted from the spec;
and the failure a check raises."""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import (
    Message,
    RemoteProtocolError,
    UnknownMessage,
    message_from_wire,
    unpack_body,
)
from ._log import hexdump, summarize
from ._wire import SENDER_MAX_NESTING, read_shape

# The rules every frame is held to, quoted from spec/protocol.md by section.
RULES = {
    "3.1": "The body MUST be a single msgpack value that spans exactly `length` bytes",
    "3.2 keys": "The keys of the message map MUST be str.",
    "3.2 duplicates": "A sender MUST NOT write the same key twice in one map.",
    "3.2 nesting": "A sender MUST NOT nest containers more than **512** levels deep",
    "3.3": "a side MUST NOT send a frame whose body is larger than the **peer's** `max_frame`.",
    "4.1": "Every message is a msgpack map. It MUST have a `kind` key whose value is a str "
    "naming the message.",
    "4.1 fields": "A required field that is missing, or any field whose value does not have the "
    "listed type or is outside the listed values, makes the message invalid (`bad-message`).",
    "4.2 done": "MUST be sent as nil; a receiver MUST ignore a non-nil value (not invalid)",
    "4.2 exec value": "`exec`: the `repr()` (a str) of the last expression statement's value, "
    "or nil when the code does not end in an expression or its value is None.",
    "5": "The runner MUST NOT send anything before it has received `hello`.",
    "7": "A sender MUST NOT send a message that has no transition in its current state",
    "8": "send one fatal `error` whose `code` names the problem and whose `message` says what "
    "arrived and in which state (best effort: the peer may be gone), and close the connection.",
    "12": "A side MUST NOT send a new kind to a peer whose `welcome`/`hello` announces a lower "
    "minor version unless a capability says the peer understands it.",
}


class CheckFailed(Exception):
    """The runner did not do what the check requires.

    ``rule``: the spec's words the runner broke, when that is not the check's own
    requirement (a frame that broke a general rule, in any check).
    """

    def __init__(self, expected: str, got: str, *, rule: str | None = None) -> None:
        super().__init__(f"expected {expected}; got {got}")
        self.expected = expected
        self.got = got
        self.rule = rule


def violation(section: str, got: str, expected: str) -> CheckFailed:
    return CheckFailed(expected, got, rule=f"{section.split()[0]}: {RULES[section]}")


def check_frame(
    body: bytes, max_frame: int, log: Callable[[str], None], note: Callable[[str], None]
) -> Message:
    """Decode one body from the runner and hold it to sections 3 and 4 (the frame, the
    sender's encoding, the schema, the role), or raise CheckFailed. ``log`` gets the
    frame's line for the report; ``note`` a SHOULD-level observation."""
    try:
        value = unpack_body(body, max_frame)
    except RemoteProtocolError as exc:
        log(f"undecodable body: {hexdump(body)}")
        raise violation("3.1", f"a body the kit cannot decode: {exc}", "one msgpack map") from None
    log(summarize(value, 300))
    if type(value) is not dict:
        raise violation("4.1", f"a body holding {summarize(value)}", "a msgpack map")
    shape = read_shape(body)
    for key in shape.keys:
        if type(key) is not str:
            raise violation("3.2 keys", f"the key {key!r} in the message map", "str keys")
    if shape.duplicates:
        level, key = shape.duplicates[0]
        raise violation(
            "3.2 duplicates",
            f"the key {key!r} twice in one map (nesting level {level})",
            "each key once per map",
        )
    if shape.depth > SENDER_MAX_NESTING:
        raise violation(
            "3.2 nesting",
            f"containers nested {shape.depth} levels deep",
            f"at most {SENDER_MAX_NESTING} levels",
        )
    kind = value.get("kind")
    if shape.long_encodings:
        offset, what = shape.long_encodings[0]
        note(
            f"3.2 (SHOULD): a {kind!r} frame uses a longer encoding than needed: {what} "
            f"at byte {offset}"
            + (
                f" (and {len(shape.long_encodings) - 1} more)"
                if len(shape.long_encodings) > 1
                else ""
            )
        )
    if shape.keys and shape.keys[0] != "kind":
        note(f"4.1 (SHOULD): a {kind!r} frame does not write 'kind' first: {shape.keys}")
    try:
        message = message_from_wire(value)
    except RemoteProtocolError as exc:
        raise violation("4.1 fields", f"an invalid message: {exc}", "a valid message") from None
    if type(message) is UnknownMessage:
        raise violation(
            "12",
            f"a message of kind {message.kind!r}, which protocol 1.1 does not define",
            "only kinds of the client's version",
        )
    if message.SENDER == "client":
        raise violation(
            "7", f"a {message.KIND!r} message, which only a client sends", "runner messages"
        )
    return message
