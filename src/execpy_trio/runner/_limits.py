"""Resource limits asked for in the client's ``hello`` (protocol 1.1), applied in the runner
before any user code runs.

- ``memory``: ``RLIMIT_AS``, the address space of the runner and of every process it
  starts. An allocation past it raises ``MemoryError`` in the user's code. The soft limit
  is ``memory`` while user code runs and ``MEMORY_HEADROOM`` more otherwise (the hard
  limit), so that the runner can always report the error and go on, even when the code
  keeps what it allocated.
- ``open_files``: ``RLIMIT_NOFILE``, counted above the descriptors the runner holds itself
  when it applies it (the channel, the capture pipes, its wake-up pipe...), so the user
  gets the number asked for.
- ``cpu_seconds``: CPU time per op, the runner's own (every thread) plus that of its
  descendants (live ones from ``/proc``, with what they reaped of theirs). The I/O thread
  checks it every ``CPU_TICK_MS`` while an op runs; past it the code gets
  ``CPULimitExceeded`` and the descendants are killed; at the op's end it is checked once
  more. Code that swallows the error or ignores the interrupt is killed
  (``CPU_GRACE`` later): the runner dies rather than run on unbounded. So is code the
  I/O thread cannot reach (a C loop holding the GIL): ``RLIMIT_CPU``'s soft limit, one
  to two seconds above the op's budget, with ``SIGXCPU`` left to its default action,
  ends the process. Children inherit that soft limit.
- ``output_bytes``: stdout plus stderr per op (see ``_capture``): bytes past it are read
  and dropped, and the code gets ``OutputLimitExceeded``.

The exceptions derive from BaseException, as KeyboardInterrupt does, so that the user's
``except Exception`` does not swallow them. Limits bind code that does not fight them.
The runner shares its process with the user's code, so code set on escaping can: raise
soft limits with ``setrlimit`` (memory's hard limit is set too), ignore ``SIGXCPU``,
exhaust descriptors so that ``/proc`` cannot be read, or change the runner's own objects.
Threads the code leaves running count against the CPU of later ops. For code you do not
trust, add the sandbox and a wall-clock bound per op (``trio.move_on_after``).
"""

from __future__ import annotations

import os

from ._children import descendants_cpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal  # not `signal`: that imports enum, ~2 ms of start-up for nothing

#: How often (ms) the I/O thread checks an op's CPU time while the op runs.
CPU_TICK_MS = 20
#: Seconds (wall clock) an op may go on after its CPU limit was hit before the runner is
#: killed: the code swallowed the error or ignores the interrupt.
CPU_GRACE = 1.0
#: Address space above the memory limit that only the runner's own code uses (the soft
#: limit is raised to it whenever user code is not running).
MEMORY_HEADROOM = 64 * 1024 * 1024

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
        self._memory_hard = 0
        self._cpu_hard = -1
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
                # Soft at the limit for user code; the hard one a little higher, for the
                # runner's own work (see room_for_us). Code that raises its soft limit
                # itself gains that headroom and no more.
                self._memory_hard = self.memory + MEMORY_HEADROOM
                resource.setrlimit(resource.RLIMIT_AS, (self._memory_hard, self._memory_hard))
        except (OSError, ValueError, OverflowError) as exc:
            raise LimitError(f"could not apply the limits {self.applied}: {exc}") from None
        if self.cpu_seconds is not None:
            # The kernel's backstop: past the soft RLIMIT_CPU, SIGXCPU ends the process.
            _signal.signal(_signal.SIGXCPU, _signal.SIG_DFL)
            self._cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    # -- memory ---------------------------------------------------------------------------

    def room_for_us(self) -> None:
        """Raise the soft address-space limit to the hard one: headroom for the runner's
        own work (formatting an error, sending the done, reading the next request) even
        when the user's data fills the limit. Done whenever user code is not running."""
        if self.memory is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (self._memory_hard, self._memory_hard))

    def limit_for_the_code(self) -> None:
        """The soft limit back at ``memory``, as user code starts."""
        if self.memory is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self._memory_hard))

    # -- cpu ------------------------------------------------------------------------------

    def _cpu_used(self) -> float:
        t = os.times()
        return t[0] + t[1] + t[2] + t[3] + descendants_cpu(self._root)

    def begin_op(self) -> None:
        if self.cpu_seconds is None:
            return
        import resource

        t = os.times()
        self._cpu_start = t[0] + t[1] + t[2] + t[3] + descendants_cpu(self._root)
        # The backstop, and the children's bound: they inherit it. Soft only: a hard
        # limit could never be raised again for the next op.
        soft = int(t[0] + t[1] + self.cpu_seconds) + 2
        hard = self._cpu_hard
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))

    def end_op(self) -> None:
        if self.cpu_seconds is None:
            return
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (self._cpu_hard, self._cpu_hard))
        if _signal.getsignal(_signal.SIGXCPU) != _signal.SIG_DFL:
            _signal.signal(_signal.SIGXCPU, _signal.SIG_DFL)  # user code changed it

    def cpu_exceeded(self) -> bool:
        """Whether the running op is over its CPU time (called by the I/O thread)."""
        return self.cpu_seconds is not None and (
            self._cpu_used() - self._cpu_start > self.cpu_seconds
        )
