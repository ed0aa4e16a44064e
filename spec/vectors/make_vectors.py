"""Regenerate spec/vectors/v1.json, the golden frames of protocol version 1.

Run: ``.venv/bin/python spec/vectors/make_vectors.py`` (writes the file) or with ``--check``
(exit 1 if the committed file differs). tests/test_protocol_vectors.py checks that the
committed file is exactly what this script produces, and that the codec encodes and decodes
every vector exactly. The format is described in README.md next to this file.

Valid frames are encoded by the protocol package itself (``Connection``'s encoder, which
has its own path for output frames over 256 bytes); invalid frames are written by hand
here, byte by byte, since no correct encoder produces them.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack

from execpy_trio.protocol import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    Cancel,
    Connection,
    Done,
    Error,
    Eval,
    Exec,
    Hello,
    InputReply,
    InputRequest,
    Message,
    Output,
    Ping,
    Pong,
    Shutdown,
    Welcome,
)

OUT = Path(__file__).with_name("v1.json")
MAX_ID = 2**63 - 1


def to_json(value: Any) -> Any:
    """A decoded msgpack value as JSON: bin becomes {"$bin": hex}, tuples become lists."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def encode(msg: Message) -> bytes:
    """The frame the protocol package sends for ``msg`` (no state checks, no size limit)."""
    conn = Connection(msg.SENDER if msg.SENDER != "both" else "client")
    conn.peer_max_frame = 2**32 - 1
    return conn._encode(msg)


def raw(body: bytes) -> bytes:
    """Frame an arbitrary body, valid or not."""
    return struct.pack(">I", len(body)) + body


def mp(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


PATTERN = bytes(range(256))


def payload(n: int) -> bytes:
    return (PATTERN * (n // 256 + 1))[:n]


VALID: list[tuple[str, Message, str]] = [
    (
        "hello",
        Hello((1, 0), "execpy-trio", "0.1.0", DEFAULT_MAX_FRAME, ("stdin",)),
        "The client's first frame. `capabilities` is always written, even when empty.",
    ),
    (
        "hello-no-capabilities",
        Hello((1, 2), "other-client", "9", HANDSHAKE_MAX_FRAME),
        "Minor version 2 (accepted by a 1.0 peer: only major versions must match); the "
        "smallest allowed max_frame (65536); an empty capabilities list is still written.",
    ),
    (
        "welcome",
        Welcome((1, 0), "execpy-trio", "0.1.0", "python", "3.11.7", 4242, DEFAULT_MAX_FRAME),
        "The runner's answer to hello. `max_frame` 16777216 needs a uint32 (0xce).",
    ),
    (
        "welcome-max-values",
        Welcome((1, 0), "r", "1", "python", "3.13.0", 2**32 - 1, 2**32 - 1, ("a", "b")),
        "pid and max_frame at the uint32 maximum; two capabilities.",
    ),
    (
        "exec-minimal",
        Exec(1, "x = 40\nx + 2"),
        "Optional fields equal to their default are left out.",
    ),
    (
        "exec-all-fields",
        Exec(
            7,
            "name = input()\nprint(name, data)",
            allow_stdin=True,
            stdin="bob\n",
            variables={"data": [1, -2, 3.5, None, True, b"\x00\xff"], "empty": {}},
        ),
        "Every field set: variables hold any data (negative int, float64, nil, bool, bin, "
        "an empty map).",
    ),
    (
        "exec-str8-code",
        Exec(300, "print('" + "x" * 40 + "')"),
        "Op id 300 needs a uint16 (0xcd); a 49-byte string needs str8 (0xd9).",
    ),
    (
        "exec-filename",
        Exec(4, "main()", filename="/home/ana/prog.py"),
        "Since 1.1: the name tracebacks show for the code. A 1.0 runner ignores it as an "
        "unknown field.",
    ),
    (
        "hello-1-1",
        Hello((1, 1), "execpy-trio", "0.2.0", DEFAULT_MAX_FRAME),
        "A hello of protocol 1.1.",
    ),
    (
        "hello-limits-preload",
        Hello(
            (1, 1),
            "execpy-trio",
            "0.2.0",
            DEFAULT_MAX_FRAME,
            (),
            {"memory": 2**30, "cpu_seconds": 2.5, "open_files": 64, "output_bytes": 2**20},
            ("json", "numpy"),
        ),
        "Since 1.1: limits (cpu_seconds a float64, the others ints) and preload.",
    ),
    (
        "welcome-limits",
        Welcome(
            (1, 1),
            "execpy-trio",
            "0.2.0",
            "python",
            "3.11.7",
            4242,
            DEFAULT_MAX_FRAME,
            ("exec", "eval", "limits", "preload"),
            {"cpu_seconds": 2.5},
        ),
        "Since 1.1: the limits in force, as asked.",
    ),
    ("eval", Eval(2, "[x, name]"), "Minimal eval."),
    (
        "eval-variables",
        Eval(3, "a + b", variables={"a": 1, "b": 2}),
        "Eval with variables bound first.",
    ),
    ("input-reply-text", InputReply(4, "21"), "One line of input, without its newline."),
    (
        "input-reply-eof",
        InputReply(4, None),
        "End of input: `text` is nil and is always written, so EOF is explicit.",
    ),
    ("cancel", Cancel(5), "Interrupt op 5."),
    (
        "cancel-max-op",
        Cancel(MAX_ID),
        "The largest op id, 2^63-1 (uint64 0xcf). Read it with a JSON parser that keeps "
        "integers exact.",
    ),
    ("ping", Ping(7), "The worked example of spec/protocol.md section 3.4."),
    ("ping-zero", Ping(0), "Tokens may be 0 (op ids may not)."),
    ("shutdown", Shutdown(), "No fields but kind."),
    ("output-small", Output(1, "stdout", b"hello\n"), "bin8. Output data is never empty."),
    (
        "output-255",
        Output(1, "stderr", payload(255)),
        "The largest bin8 payload (0xc4 0xff); stderr.",
    ),
    (
        "output-256",
        Output(1, "stdout", payload(256)),
        "The smallest bin16 payload (0xc5 0x01 0x00), still on the generic encoder path.",
    ),
    (
        "output-257",
        Output(1, "stdout", payload(257)),
        "Over 256 bytes: the reference encoder assembles the frame around the payload; the "
        "bytes must be identical to a generic msgpack encoding.",
    ),
    (
        "output-big-op",
        Output(70000, "stderr", payload(1000)),
        "Special encoder path with an op id that needs uint32 (0xce).",
    ),
    ("output-65535", Output(2, "stdout", payload(65535)), "The largest bin16 payload."),
    ("output-65536", Output(2, "stdout", payload(65536)), "The smallest bin32 payload (0xc6)."),
    ("input-request", InputRequest(4), "Default prompt and password flag are left out."),
    (
        "input-request-password",
        InputRequest(4, "Password: ", password=True),
        "From getpass.getpass().",
    ),
    ("done-ok-no-value", Done(1, "ok"), "An exec whose last statement is not an expression."),
    (
        "done-ok-value",
        Done(1, "ok", value="42"),
        "An exec's value is the repr of its last expression.",
    ),
    (
        "done-ok-eval-value",
        Done(2, "ok", value=[40, "bob", {"k": [1.5, False]}, None, b"\x01", -(2**63), 2**64 - 1]),
        "An eval's value is plain msgpack data, including int64 min and uint64 max.",
    ),
    (
        "done-error",
        Done(
            3,
            "error",
            error={
                "type": "ZeroDivisionError",
                "message": "division by zero",
                "traceback": 'Traceback (most recent call last):\n  File "<exec>", line 1, '
                "in <module>\n    1/0\nZeroDivisionError: division by zero\n",
            },
        ),
        "The error info map has type, message and traceback, all str.",
    ),
    ("done-cancelled", Done(5, "cancelled"), "The op was interrupted by a cancel or a shutdown."),
    ("pong", Pong(7), "Answer to ping 7."),
    (
        "error-fatal",
        Error("bad-frame", "frame body is not one valid msgpack value", fatal=True),
        "Fatal: the sender closes after it. No op.",
    ),
    (
        "error-busy",
        Error("busy", "op 8 rejected: op 7 is running", op=8),
        "Non-fatal with op: rejects op 8 (no completion follows).",
    ),
    (
        "error-unknown-kind",
        Error("unknown-kind", "ignored a message of kind 'frobnicate'"),
        "Non-fatal without op: a notice.",
    ),
]

# Frames a receiver must accept although this encoder would not write them that way.
RECEIVE_ONLY: list[tuple[str, bytes, str]] = [
    (
        "exec-reordered-extra-field",
        raw(mp({"code": "1", "future_field": [1, 2], "op": 1, "kind": "exec"})),
        "Keys in any order; an unknown field is ignored. Decodes to the same message as "
        "{kind: exec, op: 1, code: '1'}.",
    ),
    (
        "cancel-non-shortest-int",
        raw(b"\x82\xa4kind\xa6cancel\xa2op\xcf" + struct.pack(">Q", 5)),
        "op 5 written as uint64: decoders must accept any valid encoding.",
    ),
    (
        "ping-str8-kind",
        raw(b"\x82\xa4kind\xd9\x04ping\xa5token\x07"),
        "kind written as str8 instead of fixstr: still the str 'ping'.",
    ),
    (
        "input-request-defaults-written",
        raw(mp({"kind": "input_request", "op": 4, "prompt": "", "password": False})),
        "Optional fields equal to their default may be written.",
    ),
    (
        "unknown-kind",
        raw(mp({"kind": "frobnicate", "op": 1, "level": 3})),
        "A well-formed map of an unknown kind is not invalid: after the handshake the "
        "receiver answers error{code: unknown-kind} and carries on.",
    ),
]

_BAD = "bad-message"
_FRAME = "bad-frame"

INVALID: list[tuple[str, bytes, str, str]] = [
    (
        "announced-4gib",
        b"\xff\xff\xff\xff",
        "frame-too-large",
        "Refused as soon as the 4-byte header is read, before any body byte arrives.",
    ),
    (
        "announced-over-handshake-limit",
        b"\x00\x01\x00\x01" + b"\x00" * 16,
        "frame-too-large",
        "65537 bytes announced before the handshake (limit 65536).",
    ),
    ("truncated-header", b"\x00\x00", "truncated-frame", "The stream ends inside the header."),
    (
        "truncated-body",
        b"\x00\x00\x00\x12\x82\xa4kind\xa4ping",
        "truncated-frame",
        "18 bytes announced, 10 arrive, then the stream ends.",
    ),
    ("empty-body", raw(b""), _FRAME, "A zero length holds no value."),
    (
        "trailing-bytes",
        raw(mp({"kind": "ping", "token": 7}) + b"\xc0"),
        _FRAME,
        "A valid map followed by one more byte (nil) inside the same frame.",
    ),
    (
        "body-ends-early",
        raw(b"\x82\xa4kind\xa4ping\xa5token"),
        _FRAME,
        "The map announces 2 entries but the frame ends after the second key.",
    ),
    ("reserved-byte", raw(b"\xc1"), _FRAME, "0xc1 is never used in msgpack."),
    (
        "ext-type",
        raw(b"\x84\xa4kind\xa4done\xa2op\x01\xa6status\xa2ok\xa5value\xd4\x05\x00"),
        _FRAME,
        "A done whose value is an extension type (fixext1, type 5): extension types are "
        "not allowed anywhere.",
    ),
    (
        "timestamp-ext",
        raw(b"\x84\xa4kind\xa4done\xa2op\x01\xa6status\xa2ok\xa5value\xd6\xff\x00\x00\x00\x01"),
        _FRAME,
        "The msgpack timestamp extension (type -1) is an extension type too.",
    ),
    (
        "ext-in-unknown-field",
        raw(b"\x83\xa4kind\xa4ping\xa5token\x07\xa5extra\xd4\x05\x00"),
        _FRAME,
        "An extension type is invalid even in a field the receiver would ignore.",
    ),
    (
        "invalid-utf8",
        raw(b"\x83\xa4kind\xa4exec\xa2op\x01\xa4code\xa2\xc3\x28"),
        _FRAME,
        "A str must be valid UTF-8.",
    ),
    (
        "int-map-key",
        raw(b"\x82\xa4kind\xa4ping\x01\x07"),
        _FRAME,
        "Map keys of a message must be str (here the int 1).",
    ),
    ("array-body", raw(mp(["ping", 7])), _BAD, "The body must be a map."),
    ("str-body", raw(mp("ping")), _BAD, "The body must be a map."),
    ("missing-kind", raw(mp({"token": 7})), _BAD, "No kind field."),
    ("int-kind", raw(mp({"kind": 1, "token": 7})), _BAD, "kind must be a str."),
    ("bin-kind", raw(mp({"kind": b"ping", "token": 7})), _BAD, "kind must be a str, not bin."),
    (
        "missing-required-field",
        raw(mp({"kind": "exec", "op": 1})),
        _BAD,
        "exec without code.",
    ),
    ("wrong-type-code", raw(mp({"kind": "exec", "op": 1, "code": 5})), _BAD, "code must be a str."),
    (
        "op-zero",
        raw(mp({"kind": "cancel", "op": 0})),
        _BAD,
        "Op ids start at 1.",
    ),
    ("op-negative", raw(mp({"kind": "cancel", "op": -1})), _BAD, "Op ids are positive."),
    (
        "op-too-big",
        raw(mp({"kind": "cancel", "op": 2**63})),
        _BAD,
        "Op ids fit in 63 bits (at most 2^63-1).",
    ),
    ("op-float", raw(mp({"kind": "cancel", "op": 1.0})), _BAD, "An op id is an int, not a float."),
    (
        "bool-as-int",
        raw(mp({"kind": "exec", "op": 1, "code": "", "allow_stdin": 1})),
        _BAD,
        "allow_stdin must be a msgpack bool; the int 1 is not one.",
    ),
    (
        "output-data-str",
        raw(mp({"kind": "output", "op": 1, "stream": "stdout", "data": "text"})),
        _BAD,
        "Output data must be bin, not str.",
    ),
    (
        "output-empty-data",
        raw(mp({"kind": "output", "op": 1, "stream": "stdout", "data": b""})),
        _BAD,
        "An output carries at least one byte.",
    ),
    (
        "done-ok-with-error",
        raw(
            mp(
                {
                    "kind": "done",
                    "op": 1,
                    "status": "ok",
                    "error": {"type": "E", "message": "m", "traceback": "t"},
                }
            )
        ),
        _BAD,
        "An ok completion carries no error info.",
    ),
    (
        "done-error-without-info",
        raw(mp({"kind": "done", "op": 1, "status": "error"})),
        _BAD,
        "An error completion must say what failed.",
    ),
    (
        "output-bad-stream",
        raw(mp({"kind": "output", "op": 1, "stream": "stdin", "data": b""})),
        _BAD,
        "stream is stdout or stderr.",
    ),
    (
        "done-bad-status",
        raw(mp({"kind": "done", "op": 1, "status": "maybe"})),
        _BAD,
        "status is ok, error or cancelled.",
    ),
    (
        "done-error-info-incomplete",
        raw(
            mp({"kind": "done", "op": 1, "status": "error", "error": {"type": "E", "message": "m"}})
        ),
        _BAD,
        "The error info map needs type, message and traceback.",
    ),
    (
        "hello-bad-version",
        raw(
            mp(
                {
                    "kind": "hello",
                    "version": [1],
                    "impl_name": "x",
                    "impl_version": "1",
                    "max_frame": 65536,
                }
            )
        ),
        _BAD,
        "version is an array of two non-negative ints.",
    ),
    (
        "variables-bin-key",
        raw(b"\x84\xa4kind\xa4eval\xa2op\x01\xa4expr\xa1x\xa9variables\x81\xc4\x01a\x01"),
        _BAD,
        "variables must be a map with str keys (here a bin key).",
    ),
    (
        "error-nil-code",
        raw(mp({"kind": "error", "code": None, "message": "m"})),
        _BAD,
        "An error needs a str code.",
    ),
    (
        "hello-limit-not-a-number",
        raw(
            mp(
                {
                    "kind": "hello",
                    "version": [1, 1],
                    "impl_name": "x",
                    "impl_version": "1",
                    "max_frame": 65536,
                    "limits": {"memory": "1G"},
                }
            )
        ),
        _BAD,
        "Since 1.1: each limit is a positive int or float.",
    ),
    (
        "nested-1025",
        raw(b"\x83\xa4kind\xa4ping\xa5token\x07\xa5extra" + b"\x91" * 1024 + b"\xc0"),
        _FRAME,
        "Since 1.1: the message map and 1024 arrays, 1025 levels, over the nesting limit "
        "(section 3.2), even in a field the receiver would ignore.",
    ),
    (
        "too-many-objects",
        raw(mp({"kind": "exec", "op": 1, "code": "", "variables": {"v": [None] * 4096}})),
        _FRAME,
        "Since 1.1: 4,106 objects by the counting of section 3.3 (each element, key and "
        "value one, each array and map one more) in a 4,133-byte body, over the 4,096 a "
        "receiver whose limit is 65536 bytes accepts (one per 16 bytes of max_frame).",
    ),
]

#: Vectors that protocol 1.0 did not have (an absent ``since`` means 1.0).
SINCE_1_1 = frozenset(
    {
        "exec-filename",
        "hello-1-1",
        "hello-limits-preload",
        "welcome-limits",
        "hello-limit-not-a-number",
        "nested-1025",
        "too-many-objects",
    }
)


def _since(name: str) -> dict[str, list[int]]:
    return {"since": [1, 1]} if name in SINCE_1_1 else {}


def build() -> str:
    """The full text of v1.json."""
    vectors: list[dict[str, Any]] = []
    for name, msg, notes in VALID:
        data = encode(msg)
        vectors.append(
            {
                "name": name,
                "hex": data.hex(),
                "message": to_json(msgpack.unpackb(data[4:], raw=False)),
                "receive_only": False,
                "notes": notes,
                **_since(name),
            }
        )
    for name, data, notes in RECEIVE_ONLY:
        vectors.append(
            {
                "name": name,
                "hex": data.hex(),
                "message": to_json(msgpack.unpackb(data[4:], raw=False)),
                "receive_only": True,
                "notes": notes,
                **_since(name),
            }
        )
    invalid = [
        {
            "name": name,
            "hex": data.hex(),
            "max_frame": HANDSHAKE_MAX_FRAME,
            "error_code": code,
            "notes": notes,
            **_since(name),
        }
        for name, data, code, notes in INVALID
    ]
    doc = {
        "protocol_version": [1, 1],
        "format": "see README.md in this directory",
        "valid": vectors,
        "invalid": invalid,
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    text = build()
    if "--check" in sys.argv:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run {Path(__file__).name} to regenerate it")
            sys.exit(1)
        print(f"{OUT} is up to date")
        return
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
