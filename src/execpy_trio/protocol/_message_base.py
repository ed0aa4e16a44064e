"""The base of every message: its fields, their checks, and the generic encoding and
decoding of a message map (spec/protocol.md, section 4). The catalogue of messages is in
``_messages``.
"""

from __future__ import annotations

from ._errors import LocalProtocolError, RemoteProtocolError
from ._fields import _holds_ext

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

_set = object.__setattr__
_new = object.__new__


_REQUIRED = object()


class Message:
    """Base of every message. Subclasses list their wire fields in ``FIELDS``."""

    __slots__: tuple[str, ...] = ()
    #: The wire ``kind``.
    KIND: ClassVar[str] = ""
    #: Which role may send it: "client", "runner" or "both".
    SENDER: ClassVar[str] = ""
    #: (name, validator, default or _REQUIRED), in wire order.
    FIELDS: ClassVar[tuple[tuple[str, Callable[[object], bool], object], ...]] = ()
    #: The field naming the op, for op-scoped messages.
    OP_SCOPED: ClassVar[bool] = False
    #: True when ``__init__`` stores its arguments as given, so that :meth:`from_wire` may
    #: fill the slots itself (faster); set below for the classes where it holds.
    _PLAIN_INIT: ClassVar[bool] = False

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen; build a new message instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash((type(self), *(_freeze(getattr(self, n)) for n in self.__slots__)))

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({args})"

    def problem(self) -> str | None:
        """What makes this message invalid beyond its fields' types, or None."""
        return None

    def quick_wire(self) -> dict[str, Any] | None:
        """The wire map of this message in its usual form, its fields checked inline, or
        None for the generic checks of :func:`checked_wire`. The messages of every round
        trip override it; the rest need not."""
        return None

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map for this message; fields equal to their default are left out."""
        d: dict[str, Any] = {"kind": self.KIND}
        for name, _check, default in self.FIELDS:
            value = getattr(self, name)
            if default is _REQUIRED or value != default:
                d[name] = value
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Message:
        """Build from a decoded map, or raise RemoteProtocolError naming the bad field."""
        present = 1  # "kind"
        if cls._PLAIN_INIT:
            # The hot path: the same checks as below, storing straight into the slots.
            msg = _new(cls)
            for name, check, default in cls.FIELDS:
                value = d.get(name, _REQUIRED)
                if value is _REQUIRED:
                    if default is _REQUIRED:
                        raise _missing_field(cls.KIND, name)
                    value = default
                else:
                    if not check(value):
                        raise _invalid_field(cls.KIND, name, value)
                    present += 1
                _set(msg, name, value)
        else:
            # Positional arguments: every __init__ takes its FIELDS in order.
            msg = cls(*cls._checked_args(d))
            present = 1 + sum(1 for name, _c, _d in cls.FIELDS if name in d)
        if present != len(d) and _holds_ext(d):
            # Unknown fields are ignored, but an extension type is refused anywhere.
            raise _ext_error(f"a {cls.KIND!r} message")
        problem = msg.problem()
        if problem is not None:
            raise RemoteProtocolError(problem, error_code="bad-message")
        return msg

    @classmethod
    def _checked_args(cls, d: dict[str, Any]) -> list[Any]:
        args = []
        for name, check, default in cls.FIELDS:
            value = d.get(name, _REQUIRED)
            if value is _REQUIRED:
                if default is _REQUIRED:
                    raise _missing_field(cls.KIND, name)
                value = default
            elif not check(value):
                raise _invalid_field(cls.KIND, name, value)
            args.append(value)
        return args


def _describe(value: object) -> str:
    """A short description of a decoded value for an error message.

    Containers are not repr()'d: a value nested 1000 deep would raise RecursionError.
    """
    if type(value) is dict:
        return f"a map of {len(value)} entries"
    if type(value) is list:
        return f"an array of {len(value)} items"
    return f"{value!r:.200}"


def _ext_error(where: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"{where} holds a msgpack extension type (such as a timestamp); extension types "
        "are not allowed in this protocol (spec/protocol.md section 3.2)",
        error_code="bad-frame",
    )


def _missing_field(kind: str, name: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"{kind!r} message lacks the required field {name!r}", error_code="bad-message"
    )


def _invalid_field(kind: str, name: str, value: object) -> RemoteProtocolError:
    if _holds_ext(value):
        return _ext_error(f"the {name!r} field of a {kind!r} message")
    return RemoteProtocolError(
        f"{kind!r} message has an invalid {name!r} field: {_describe(value)} "
        f"({type(value).__name__}); see spec/protocol.md section 4",
        error_code="bad-message",
    )


def invalid_reason(msg: Message) -> str | None:
    """Why ``msg`` may not be sent (a field outside its type or values), or None.

    The sender checks what the receiver will check, so that a local mistake is a
    LocalProtocolError here rather than a fatal error from the peer.
    """
    for name, check, _default in msg.FIELDS:
        value = getattr(msg, name)
        if not check(value):
            return (
                f"cannot send {msg.KIND!r}: its {name!r} field is invalid: {_describe(value)} "
                f"({type(value).__name__}); see spec/protocol.md section 4"
            )
    return msg.problem()


def checked_wire(msg: Message) -> dict[str, Any]:
    """``msg.to_wire()``, after the checks of :func:`invalid_reason`, in one pass.

    Raises LocalProtocolError (``bad-message``). This is the sender's hot path.
    """
    quick = msg.quick_wire()
    if quick is not None:
        return quick
    cls = type(msg)
    if cls.to_wire is not Message.to_wire:  # writes its fields its own way; not hot
        reason = invalid_reason(msg)
        if reason is not None:
            raise LocalProtocolError(reason, error_code="bad-message")
        return msg.to_wire()
    d: dict[str, Any] = {"kind": cls.KIND}
    for name, check, default in cls.FIELDS:
        value = getattr(msg, name)
        if value is default:
            continue  # a default is valid, and is left out
        if not check(value):
            raise LocalProtocolError(str(invalid_reason(msg)), error_code="bad-message")
        if default is _REQUIRED or value != default:
            d[name] = value
    problem = msg.problem()
    if problem is not None:
        raise LocalProtocolError(problem, error_code="bad-message")
    return d


def _freeze(v: object) -> object:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v
