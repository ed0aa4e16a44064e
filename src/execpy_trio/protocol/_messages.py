"""The message catalogue of protocol version 1 (spec/protocol.md, section 4).

Every message is a msgpack map with a ``kind`` string and the fields listed here. Classes
are frozen and slotted, hand-written rather than built with attrs or dataclasses: the
runner imports this module on its start-up path and those two cost 17-30 ms to import.

Decoding ignores unknown fields; an unknown ``kind`` decodes to :class:`UnknownMessage` so
the receiver can answer it with an ``unknown-kind`` error instead of failing.
"""

from __future__ import annotations

from ._errors import RemoteProtocolError
from ._fields import (
    CLIENT,
    MAX_ID,
    RUNNER,
    STATUS_ERROR,
    STATUS_OK,
    STDERR,
    STDOUT,
    _holds_ext,
    _is_any,
    _is_bool,
    _is_data,
    _is_id,
    _is_opt_error_info,
    _is_opt_id,
    _is_opt_limits,
    _is_opt_str,
    _is_opt_str_map,
    _is_status,
    _is_str,
    _is_str_list,
    _is_stream,
    _is_uint,
    _is_version,
)
from ._message_base import (
    _REQUIRED,
    Message,
    _describe,
    _ext_error,
    _new,
    _set,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# --- handshake -------------------------------------------------------------------------


class Hello(Message):
    """Client -> runner, first frame: who the client is and what it accepts."""

    __slots__ = (
        "version",
        "impl_name",
        "impl_version",
        "max_frame",
        "capabilities",
        "limits",
        "preload",
    )
    KIND = "hello"
    SENDER = CLIENT
    FIELDS = (
        ("version", _is_version, _REQUIRED),
        ("impl_name", _is_str, _REQUIRED),
        ("impl_version", _is_str, _REQUIRED),
        ("max_frame", _is_uint, _REQUIRED),
        ("capabilities", _is_str_list, ()),
        # Since 1.1: resource limits and modules to import before the welcome.
        ("limits", _is_opt_limits, None),
        ("preload", _is_str_list, ()),
    )
    version: tuple[int, int]
    impl_name: str
    impl_version: str
    max_frame: int
    capabilities: tuple[str, ...]
    limits: dict[str, int | float] | None
    preload: tuple[str, ...]

    def __init__(
        self,
        version: tuple[int, int] | list[int],
        impl_name: str,
        impl_version: str,
        max_frame: int,
        capabilities: tuple[str, ...] | list[str] = (),
        limits: dict[str, int | float] | None = None,
        preload: tuple[str, ...] | list[str] = (),
    ) -> None:
        _set(self, "version", tuple(version))
        _set(self, "impl_name", impl_name)
        _set(self, "impl_version", impl_version)
        _set(self, "max_frame", max_frame)
        _set(self, "capabilities", tuple(capabilities))
        _set(self, "limits", limits)
        _set(self, "preload", tuple(preload))

    def to_wire(self) -> dict[str, Any]:
        d = super().to_wire()
        d["version"] = list(self.version)
        d["capabilities"] = list(self.capabilities)
        if self.preload:
            d["preload"] = list(self.preload)
        return d


class Welcome(Message):
    """Runner -> client, answer to hello: who the runner is and what it accepts."""

    __slots__ = (
        "version",
        "impl_name",
        "impl_version",
        "language",
        "language_version",
        "pid",
        "max_frame",
        "capabilities",
        "limits",
    )
    KIND = "welcome"
    SENDER = RUNNER
    FIELDS = (
        ("version", _is_version, _REQUIRED),
        ("impl_name", _is_str, _REQUIRED),
        ("impl_version", _is_str, _REQUIRED),
        ("language", _is_str, _REQUIRED),
        ("language_version", _is_str, _REQUIRED),
        ("pid", _is_uint, _REQUIRED),
        ("max_frame", _is_uint, _REQUIRED),
        ("capabilities", _is_str_list, ()),
        # Since 1.1: the limits in force (those of the hello the runner applies).
        ("limits", _is_opt_limits, None),
    )
    version: tuple[int, int]
    impl_name: str
    impl_version: str
    language: str
    language_version: str
    pid: int
    max_frame: int
    capabilities: tuple[str, ...]
    limits: dict[str, int | float] | None

    def __init__(
        self,
        version: tuple[int, int] | list[int],
        impl_name: str,
        impl_version: str,
        language: str,
        language_version: str,
        pid: int,
        max_frame: int,
        capabilities: tuple[str, ...] | list[str] = (),
        limits: dict[str, int | float] | None = None,
    ) -> None:
        _set(self, "version", tuple(version))
        _set(self, "impl_name", impl_name)
        _set(self, "impl_version", impl_version)
        _set(self, "language", language)
        _set(self, "language_version", language_version)
        _set(self, "pid", pid)
        _set(self, "max_frame", max_frame)
        _set(self, "capabilities", tuple(capabilities))
        _set(self, "limits", limits)

    def to_wire(self) -> dict[str, Any]:
        d = super().to_wire()
        d["version"] = list(self.version)
        d["capabilities"] = list(self.capabilities)
        return d


# --- requests (client -> runner) -------------------------------------------------------


class Exec(Message):
    """Run ``code`` in the runner's namespace."""

    __slots__ = ("op", "code", "allow_stdin", "stdin", "variables", "filename")
    KIND = "exec"
    SENDER = CLIENT
    OP_SCOPED = True
    FIELDS = (
        ("op", _is_id, _REQUIRED),
        ("code", _is_str, _REQUIRED),
        ("allow_stdin", _is_bool, False),
        ("stdin", _is_opt_str, None),
        ("variables", _is_opt_str_map, None),
        # Since 1.1; a 1.0 runner ignores it (unknown fields are ignored).
        ("filename", _is_opt_str, None),
    )
    op: int
    code: str
    allow_stdin: bool
    stdin: str | None
    variables: dict[str, Any] | None
    filename: str | None

    def __init__(
        self,
        op: int,
        code: str,
        allow_stdin: bool = False,
        stdin: str | None = None,
        variables: dict[str, Any] | None = None,
        filename: str | None = None,
    ) -> None:
        _set(self, "op", op)
        _set(self, "code", code)
        _set(self, "allow_stdin", allow_stdin)
        _set(self, "stdin", stdin)
        _set(self, "variables", variables)
        _set(self, "filename", filename)

    def quick_wire(self) -> dict[str, Any] | None:
        # The sender's side of the same: checked inline, or None for the generic path.
        op = self.op
        code = self.code
        if (
            type(op) is int
            and 0 < op <= MAX_ID
            and type(code) is str
            and self.allow_stdin is False
            and self.stdin is None
            and self.variables is None
            and self.filename is None
        ):
            return {"kind": "exec", "op": op, "code": code}
        return None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Message:
        # The hot path of a runner's requests: just an op and its code, the generic
        # checks inline. Anything else takes the generic path and its errors.
        if len(d) == 3:
            op = d.get("op")
            code = d.get("code")
            if type(op) is int and 0 < op <= MAX_ID and type(code) is str:
                msg = _new(cls)
                _set(msg, "op", op)
                _set(msg, "code", code)
                _set(msg, "allow_stdin", False)
                _set(msg, "stdin", None)
                _set(msg, "variables", None)
                _set(msg, "filename", None)
                return msg
        return super().from_wire(d)


class Eval(Message):
    """Evaluate the expression ``expr`` and send its value back as plain msgpack data."""

    __slots__ = ("op", "expr", "variables")
    KIND = "eval"
    SENDER = CLIENT
    OP_SCOPED = True
    FIELDS = (
        ("op", _is_id, _REQUIRED),
        ("expr", _is_str, _REQUIRED),
        ("variables", _is_opt_str_map, None),
    )
    op: int
    expr: str
    variables: dict[str, Any] | None

    def __init__(self, op: int, expr: str, variables: dict[str, Any] | None = None) -> None:
        _set(self, "op", op)
        _set(self, "expr", expr)
        _set(self, "variables", variables)


class InputReply(Message):
    """Answer to an input request; ``text`` None means end of input (EOFError)."""

    __slots__ = ("op", "text")
    KIND = "input_reply"
    SENDER = CLIENT
    OP_SCOPED = True
    FIELDS = (("op", _is_id, _REQUIRED), ("text", _is_opt_str, None))
    op: int
    text: str | None

    def __init__(self, op: int, text: str | None) -> None:
        _set(self, "op", op)
        _set(self, "text", text)

    def to_wire(self) -> dict[str, Any]:
        # ``text`` is always written, so that nil (end of input) is explicit on the wire.
        return {"kind": self.KIND, "op": self.op, "text": self.text}


class Cancel(Message):
    """Interrupt op ``op``. Harmless for an op that already completed."""

    __slots__ = ("op",)
    KIND = "cancel"
    SENDER = CLIENT
    OP_SCOPED = True
    FIELDS = (("op", _is_id, _REQUIRED),)
    op: int

    def __init__(self, op: int) -> None:
        _set(self, "op", op)


class Ping(Message):
    """Liveness check; answered by a pong with the same token, even while code runs."""

    __slots__ = ("token",)
    KIND = "ping"
    SENDER = CLIENT
    FIELDS = (("token", _is_uint, _REQUIRED),)
    token: int

    def __init__(self, token: int) -> None:
        _set(self, "token", token)


class Shutdown(Message):
    """Ask the runner to interrupt any running op, finish it, and exit."""

    __slots__ = ()
    KIND = "shutdown"
    SENDER = CLIENT

    def __init__(self) -> None:
        pass


# --- events (runner -> client) ---------------------------------------------------------


class Output(Message):
    """Bytes the op's code wrote to fd 1 (stdout) or fd 2 (stderr), in order."""

    __slots__ = ("op", "stream", "data")
    KIND = "output"
    SENDER = RUNNER
    OP_SCOPED = True
    FIELDS = (
        ("op", _is_id, _REQUIRED),
        ("stream", _is_stream, _REQUIRED),
        ("data", _is_data, _REQUIRED),
    )
    op: int
    stream: str
    data: bytes

    def __init__(self, op: int, stream: str, data: bytes) -> None:
        _set(self, "op", op)
        _set(self, "stream", stream)
        _set(self, "data", data)

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Message:
        # The hot path of a client receiving output: the generic checks, inline. Anything
        # unusual (an extra field, a bad value) takes the generic path and its errors.
        if len(d) == 4:
            op = d.get("op")
            stream = d.get("stream")
            data = d.get("data")
            if (
                type(op) is int
                and 0 < op <= MAX_ID
                and (stream == STDOUT or stream == STDERR)
                and type(data) is bytes
                and data
            ):
                msg = _new(cls)
                _set(msg, "op", op)
                _set(msg, "stream", stream)
                _set(msg, "data", data)
                return msg
        return super().from_wire(d)


class InputRequest(Message):
    """The op's code is waiting for one line of input."""

    __slots__ = ("op", "prompt", "password")
    KIND = "input_request"
    SENDER = RUNNER
    OP_SCOPED = True
    FIELDS = (("op", _is_id, _REQUIRED), ("prompt", _is_str, ""), ("password", _is_bool, False))
    op: int
    prompt: str
    password: bool

    def __init__(self, op: int, prompt: str = "", password: bool = False) -> None:
        _set(self, "op", op)
        _set(self, "prompt", prompt)
        _set(self, "password", password)


class Done(Message):
    """The single completion of an accepted op, sent after all of its output."""

    __slots__ = ("op", "status", "value", "error")
    KIND = "done"
    SENDER = RUNNER
    OP_SCOPED = True
    FIELDS = (
        ("op", _is_id, _REQUIRED),
        ("status", _is_status, _REQUIRED),
        ("value", _is_any, None),
        ("error", _is_opt_error_info, None),
    )
    op: int
    status: str
    value: Any
    error: dict[str, str] | None

    def __init__(
        self, op: int, status: str, value: Any = None, error: dict[str, str] | None = None
    ) -> None:
        _set(self, "op", op)
        _set(self, "status", status)
        _set(self, "value", value)
        _set(self, "error", error)

    def quick_wire(self) -> dict[str, Any] | None:
        # The sender's side of the same: checked inline, or None for the generic path.
        op = self.op
        if (
            self.status == STATUS_OK
            and self.value is None
            and self.error is None
            and type(op) is int
            and 0 < op <= MAX_ID
        ):
            return {"kind": "done", "op": op, "status": STATUS_OK}
        return None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Message:
        # The hot path of a client's completions: an ok without a value, checked inline.
        if len(d) == 3 and d.get("status") == STATUS_OK:
            op = d.get("op")
            if type(op) is int and 0 < op <= MAX_ID:
                msg = _new(cls)
                _set(msg, "op", op)
                _set(msg, "status", STATUS_OK)
                _set(msg, "value", None)
                _set(msg, "error", None)
                return msg
        return super().from_wire(d)

    def problem(self) -> str | None:
        # "ok" carries no error and "error" must say what failed (spec section 4.2).
        if self.status == STATUS_OK and self.error is not None:
            return f"done for op {self.op} has status 'ok' and an error; an ok completion has none"
        if self.status == STATUS_ERROR and self.error is None:
            return f"done for op {self.op} has status 'error' but no error info"
        return None


class Pong(Message):
    """Answer to ping."""

    __slots__ = ("token",)
    KIND = "pong"
    SENDER = RUNNER
    FIELDS = (("token", _is_uint, _REQUIRED),)
    token: int

    def __init__(self, token: int) -> None:
        _set(self, "token", token)


class Error(Message):
    """A protocol-level error report, from either side.

    ``fatal`` errors end the connection: the sender closes after it. A non-fatal error with
    ``op`` set, sent by the runner as its first answer to an exec or eval, rejects that op
    (no completion follows). A non-fatal error without ``op`` reports a message that was
    ignored (an unknown kind).
    """

    __slots__ = ("code", "message", "op", "fatal")
    KIND = "error"
    SENDER = "both"
    FIELDS = (
        ("code", _is_str, _REQUIRED),
        ("message", _is_str, _REQUIRED),
        ("op", _is_opt_id, None),
        ("fatal", _is_bool, False),
    )
    code: str
    message: str
    op: int | None
    fatal: bool

    def __init__(self, code: str, message: str, op: int | None = None, fatal: bool = False) -> None:
        _set(self, "code", code)
        _set(self, "message", message)
        _set(self, "op", op)
        _set(self, "fatal", fatal)


class UnknownMessage(Message):
    """A well-formed map whose ``kind`` this implementation does not know (receive only)."""

    __slots__ = ("kind", "fields")
    KIND = ""
    SENDER = "both"
    kind: str
    fields: dict[str, Any]

    def __init__(self, kind: str, fields: dict[str, Any]) -> None:
        _set(self, "kind", kind)
        _set(self, "fields", fields)


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Exec,
    Eval,
    InputReply,
    Cancel,
    Ping,
    Shutdown,
    Output,
    InputRequest,
    Done,
    Pong,
    Error,
)
BY_KIND: dict[str, type[Message]] = {cls.KIND: cls for cls in MESSAGE_TYPES}

# Their __init__ stores each argument as given (Hello and Welcome convert lists to tuples).
_PLAIN = (Exec, Eval, InputReply, Cancel, Ping, Shutdown, Output, InputRequest, Done, Pong, Error)
for _cls in _PLAIN:
    _cls._PLAIN_INIT = True
del _cls, _PLAIN


def message_from_wire(value: Any) -> Message:
    """Turn one decoded msgpack value into a message, or raise RemoteProtocolError."""
    if type(value) is not dict:
        if _holds_ext(value):
            raise _ext_error("the frame body")
        raise RemoteProtocolError(
            f"a frame must hold a msgpack map, got {type(value).__name__}",
            error_code="bad-message",
        )
    kind = value.get("kind")
    if type(kind) is not str:
        if _holds_ext(kind):
            raise _ext_error("the 'kind' field")
        raise RemoteProtocolError(
            f"a message needs a string 'kind' field, got {_describe(kind):.100}",
            error_code="bad-message",
        )
    cls = BY_KIND.get(kind)
    if cls is None:
        if _holds_ext(value):
            raise _ext_error(f"a message of unknown kind {kind!r:.100}")
        fields = {k: v for k, v in value.items() if k != "kind"}
        return UnknownMessage(kind, fields)
    return cls.from_wire(value)
