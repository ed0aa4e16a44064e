"""Resource limits asked for in the client's ``hello`` (protocol 1.1), applied in the runner
before any user code runs.

- ``memory``: ``RLIMIT_AS``, the address space of the runner and of every process it
  starts. An allocation past it raises ``MemoryError`` in the user's code; a reserve the
  runner holds is given back first, so that the error can still be formatted and sent.
- ``open_files``: ``RLIMIT_NOFILE``, counted above the descriptors the runner holds itself
  when it applies it (the channel, the capture pipes, its wake-up pipe...), so the user
  gets the number asked for.
- ``cpu_seconds``: CPU time per op, the runner's own (every thread) plus that of its
  descendants, live ones read from ``/proc``. The I/O thread checks it every
  ``CPU_TICK_MS`` while an op runs; past it the code gets ``CPULimitExceeded`` and the
  descendants are killed. ``RLIMIT_CPU`` is set a second above the op's budget as a
  backstop (its ``SIGXCPU`` raises the same error) and bounds the children too, which
  inherit it.
- ``output_bytes``: stdout plus stderr per op (see ``_capture``): bytes past it are read
  and dropped, and the code gets ``OutputLimitExceeded``.

The exceptions derive from BaseException, as KeyboardInterrupt does, so that the user's
``except Exception`` does not swallow them. Limits bind code the runner runs; code that
calls ``setrlimit`` itself can raise the soft limits up to the hard ones (those are left
as they were, except ``memory``, whose hard limit is set too). For code you do not trust,
combine them with the sandbox.
"""

from __future__ import annotations

import os

from ._children import descendants_cpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: How often (ms) the I/O thread checks an op's CPU time while the op runs.
CPU_TICK_MS = 20
#: Address space held back for reporting a MemoryError (given back when one happens).
MEMORY_RESERVE = 4 * 1024 * 1024

KNOWN = ("memory", "cpu_seconds", "open_files", "output_bytes")


class CPULimitExceeded(BaseException):
    """The op used more CPU time than its ``cpu_seconds`` limit."""


class OutputLimitExceeded(BaseException):
    """The op wrote more than its ``output_bytes`` limit to stdout and stderr."""


# Shown as `CPULimitExceeded`, as the builtins are: the user sees no runner module.
CPULimitExceeded.__module__ = OutputLimitExceeded.__module__ = "builtins"


class LimitError(Exception):
    """A limit asked for cannot be applied (the message says which and why)."""


class Limits:
    """The limits in force in this runner, and the per-op CPU accounting."""

    def __init__(self, asked: dict[str, Any] | None) -> None:
        asked = asked or {}
        self.applied: dict[str, Any] = {k: v for k, v in asked.items() if k in KNOWN}
        unknown = sorted(set(asked) - set(KNOWN))
        if unknown:
            raise LimitError(
                f"unknown limit(s) {', '.join(unknown)}; this runner knows {', '.join(KNOWN)}"
            )
        for name in ("memory", "open_files", "output_bytes"):
            value = self.applied.get(name)
            if value is not None and type(value) is not int:
                raise LimitError(f"the {name} limit must be an int, not {value!r}")
        self.memory: int | None = self.applied.get("memory")
        self.open_files: int | None = self.applied.get("open_files")
        self.output_bytes: int | None = self.applied.get("output_bytes")
        cpu = self.applied.get("cpu_seconds")
        self.cpu_seconds: float | None = None if cpu is None else float(cpu)
        self._reserve: bytearray | None = None
        self._cpu_start = 0.0
        self._root = os.getpid()

    def apply(self) -> None:
        """Apply the process-wide limits (before the welcome; raises LimitError)."""
        if not (self.memory or self.open_files or self.cpu_seconds):
            return
        import resource

        try:
            if self.open_files is not None:
                held = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                want = held + self.open_files
                if hard != resource.RLIM_INFINITY and want > hard:
                    raise LimitError(
                        f"open_files={self.open_files} needs {want} descriptors with the "
                        f"runner's own {held}, over the hard limit of {hard}"
                    )
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            if self.memory is not None:
                self._reserve = bytearray(MEMORY_RESERVE)
                resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
        except (OSError, ValueError) as exc:
            raise LimitError(f"could not apply the limits {self.applied}: {exc}") from None
        if self.cpu_seconds is not None:
            import signal

            signal.signal(signal.SIGXCPU, self._on_sigxcpu)

    # -- memory ---------------------------------------------------------------------------

    def release_reserve(self) -> None:
        """After a MemoryError: give the reserve back so that the error can be reported."""
        self._reserve = None

    def restore_reserve(self) -> None:
        """Between ops: take the reserve again, if the address space has room."""
        if self.memory is not None and self._reserve is None:
            try:
                self._reserve = bytearray(MEMORY_RESERVE)
            except MemoryError:
                pass  # the user's data fills it: try again after the next op

    # -- cpu ------------------------------------------------------------------------------

    def _cpu_used(self) -> float:
        t = os.times()
        return t[0] + t[1] + t[2] + t[3] + descendants_cpu(self._root)

    def begin_op(self) -> None:
        if self.cpu_seconds is None:
            return
        self._cpu_start = self._cpu_used()
        import resource

        # The backstop, and the children's bound: they inherit it. Soft only: a hard
        # limit could never be raised again for the next op.
        soft = int(os.times()[0] + os.times()[1] + self.cpu_seconds) + 2
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))

    def end_op(self) -> None:
        if self.cpu_seconds is None:
            return
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))

    def cpu_exceeded(self) -> bool:
        """Whether the running op is over its CPU time (called by the I/O thread)."""
        return self.cpu_seconds is not None and (
            self._cpu_used() - self._cpu_start > self.cpu_seconds
        )

    def _on_sigxcpu(self, signum: int, frame: Any) -> None:
        raise CPULimitExceeded(f"the op used more than {self.cpu_seconds:g} s of CPU time")
