"""What a message field's value may be: the protocol's vocabulary (roles, streams,
statuses, the id range) and one check per field type (spec/protocol.md, section 4.1).

The checks take a decoded msgpack value and say whether it is valid; the message classes
in ``_messages`` name one per field. They are plain functions, called once per field on
every message received, so they are written for speed.
"""

from __future__ import annotations

from msgpack import Timestamp as _Timestamp

# Roles, by the name of the side that sends a message.
CLIENT = "client"
RUNNER = "runner"

STDOUT = "stdout"
STDERR = "stderr"
STREAMS = (STDOUT, STDERR)

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_CANCELLED = "cancelled"
STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_CANCELLED)

#: Op ids and ping tokens are unsigned and fit in 63 bits, so every msgpack library can
#: hold them in a signed 64-bit integer.
MAX_ID = 2**63 - 1


def _is_id(v: object) -> bool:
    return type(v) is int and 0 < v <= MAX_ID


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_ID


def _is_str(v: object) -> bool:
    return type(v) is str


def _is_opt_str(v: object) -> bool:
    return v is None or type(v) is str


def _is_bool(v: object) -> bool:
    return type(v) is bool


def _is_data(v: object) -> bool:
    return type(v) is bytes and len(v) > 0


def _holds_ext(value: object) -> bool:
    """Whether a decoded value holds a msgpack extension anywhere.

    The frame decoder refuses extension types through msgpack's ext hook, but msgpack
    decodes the timestamp extension (type -1) itself, so one can only be found afterwards.
    Iterative: decoded values nest deeper than Python's recursion limit.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict:
            stack.extend(v.values())  # type: ignore[attr-defined]
        elif t is list:
            stack.extend(v)  # type: ignore[arg-type]
        elif t is _Timestamp:
            return True
    return False


def _is_any(v: object) -> bool:
    t = type(v)
    if t is dict or t is list:
        return not _holds_ext(v)
    return t is not _Timestamp


def _is_opt_id(v: object) -> bool:
    return v is None or _is_id(v)


def _is_version(v: object) -> bool:
    return (
        type(v) in (list, tuple)
        and len(v) == 2  # type: ignore[arg-type]
        and all(_is_uint(x) for x in v)  # type: ignore[attr-defined]
    )


def _is_str_list(v: object) -> bool:
    return type(v) in (list, tuple) and all(type(x) is str for x in v)  # type: ignore[attr-defined]


def _is_opt_str_map(v: object) -> bool:
    return v is None or (type(v) is dict and all(type(k) is str for k in v) and not _holds_ext(v))


def _is_limit_value(v: object) -> bool:
    t = type(v)
    return (t is int and 0 < v <= MAX_ID) or (t is float and 0 < v < 1e12)  # type: ignore[operator]


def _is_opt_limits(v: object) -> bool:
    """nil, or a map of str names to positive numbers (unknown names are the runner's to
    refuse: it echoes in the welcome only the limits it applies)."""
    return v is None or (
        type(v) is dict and all(type(k) is str and _is_limit_value(x) for k, x in v.items())
    )


def _is_stream(v: object) -> bool:
    return v in STREAMS


def _is_status(v: object) -> bool:
    return v in STATUSES


def _is_opt_error_info(v: object) -> bool:
    return v is None or (
        type(v) is dict
        and type(v.get("type")) is str
        and type(v.get("message")) is str
        and type(v.get("traceback")) is str
        and not _holds_ext(v)
    )
