"""The checks, one module per part of the spec; importing this package registers them."""

from . import (  # noqa: F401
    _cancel,
    _exec,
    _frames,
    _handshake,
    _input,
    _limits,
    _messages,
    _output,
    _session,
)
