"""execpy-trio: run Python code in separate runner processes from Trio.

The public names are defined in :mod:`execpy_trio._public` and loaded on first use, so
that ``python -m execpy_trio.runner`` (which imports this package first) never pays for
importing Trio or attrs: the runner's start-up time is part of the contract.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._public import *  # noqa: F403
    from ._public import __all__ as __all__

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Private names are submodules: let the import system load them (answering here would
    # make "from . import _public" below recurse into this function).
    if name.startswith("_") and name != "__all__":
        raise AttributeError(name)
    from . import _public

    try:
        value = getattr(_public, name)
    except AttributeError:
        raise AttributeError(f"module 'execpy_trio' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    from . import _public

    return sorted(set(globals()) | set(_public.__all__))
