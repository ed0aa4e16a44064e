"""The runner program: ``python -m execpy_trio.runner (--fd N | --stdio)``.

It speaks protocol version 1 (see :mod:`execpy_trio.protocol`) over one channel, runs user
code in its main thread in one persistent ``__main__`` namespace, captures fds 1 and 2 and
streams what is written to them, turns ``input()`` into input requests, and interrupts the
running code when the client cancels. It imports only the standard library, msgpack and
the protocol package on its start-up path (no Trio), so that it starts in tens of
milliseconds and can run wherever a ``python3`` does.

Exit codes (also printed by ``--help``):

==== ==================================================================================
 0   clean: after a ``shutdown``, or the client closed the channel while no op ran
 2   usage error (bad command-line arguments)
 3   protocol error: the client sent something invalid (garbage, a frame over the limit,
     a message illegal in the current state, a major version mismatch) or a fatal error
 4   no ``hello`` arrived within the handshake timeout
 5   the channel was lost (closed by the client or an I/O error) while an op ran
 6   the parent process died (``--fd`` and ``--stdio`` both watch it on Linux)
 70  internal error in the runner itself (a bug: please report it with the stderr text)
==== ==================================================================================

Everything the runner itself has to say goes to its *original* stderr, which it keeps on
a private descriptor (the "diagnostic stream"); the user's fd 2 is a capture pipe. Set
``EXECPY_TRACE=1`` to log every frame sent and received there.
"""

from __future__ import annotations

from .. import __version__

#: The implementation version announced in ``welcome``: the package's, written only there.
IMPL_VERSION = __version__
IMPL_NAME = "execpy-trio"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PROTOCOL = 3
EXIT_HANDSHAKE_TIMEOUT = 4
EXIT_CHANNEL_LOST = 5
EXIT_PARENT_DIED = 6
EXIT_SETUP_FAILED = 7
EXIT_INTERNAL = 70


class UsageError(Exception):
    """A bad command line, or a channel descriptor that cannot be used (exit 2)."""
