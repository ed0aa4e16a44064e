"""``Limits``: the resource limits a runner applies to the code it runs.

They travel in the ``hello`` (protocol 1.1, spec section 5.1) so that any runner, however
it is started (a local process, ``ssh``, any stdio command), is limited the same way, and
the runner applies them before any user code runs. A runner that does not apply exactly
the limits asked for fails the start: a runner is never silently unlimited.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["MIN_MEMORY", "Limits"]

#: The largest int limit (what every rlimit and the protocol can carry, with room).
MAX_INT_LIMIT = 2**62
#: The smallest memory limit accepted: an idle runner maps about 230 MiB.
MIN_MEMORY = 256 * 1024 * 1024


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or not 0 < value <= MAX_INT_LIMIT):
        raise ValueError(
            f"Limits.{attribute.name} must be a positive int (bytes or descriptors) up to "
            f"2**62, or None, not {value!r}"
        )


def _positive_seconds(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) not in (int, float) or not 0 < value <= 1e6):
        raise ValueError(
            f"Limits.{attribute.name} must be a number of seconds from 0 to 1e6 (exclusive "
            f"of 0), or None, not {value!r}"
        )


def _memory(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    _positive_int(instance, attribute, value)
    if value is not None and value < MIN_MEMORY:
        raise ValueError(
            f"Limits.memory={value} is under {MIN_MEMORY} bytes (256 MiB): an idle runner "
            "already maps about 230 MiB of address space, so the code would have none"
        )


@attrs.frozen(kw_only=True)
class Limits:
    """Resource limits for the code a runner runs; each None (the default) means none.

    - ``memory``: bytes of address space for the runner and every process it starts;
      past it user code gets ``MemoryError`` (an "error" result; the runner holds a
      reserve so that it can report it). An idle runner maps about 230 MiB, so below
      about 512 MiB little is left for the code.
    - ``cpu_seconds``: CPU time per op, the runner's and its child processes'; past it
      the op ends "error" with ``error.type == "CPULimitExceeded"`` and the children are
      killed.
    - ``open_files``: file descriptors the code may open, on top of the runner's own.
    - ``output_bytes``: stdout plus stderr per op; the output up to it arrives, then the
      code is stopped and the op ends "error" with ``error.type ==
      "OutputLimitExceeded"``.

    After any limit is hit the runner stays usable.
    """

    memory: int | None = attrs.field(default=None, validator=_memory)
    cpu_seconds: float | None = attrs.field(default=None, validator=_positive_seconds)
    open_files: int | None = attrs.field(default=None, validator=_positive_int)
    output_bytes: int | None = attrs.field(default=None, validator=_positive_int)

    def to_wire(self) -> dict[str, int | float] | None:
        """The ``limits`` map of a hello: the limits set, or None if there are none."""
        wire = {k: v for k, v in attrs.asdict(self).items() if v is not None}
        return wire or None
