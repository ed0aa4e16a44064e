"""The list of checks: what each one is, which part of the spec it holds the runner to,
and what it needs from the runner to apply at all.

A check is an async function of a :class:`~._context.Context`, registered with
:func:`check`. Its ID names the spec section it checks (``6.7/cancel-tight-loop``), its
level is MUST or SHOULD, ``needs`` lists the capabilities the runner's welcome must
announce for the check to apply (otherwise it is skipped, with that reason) and ``since``
the protocol version that defines the behaviour. ``requirement`` is quoted, word for word,
from spec/protocol.md (a test holds the kit to that); ``summary`` is the one-line
description of the spec's section 11 table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._context import Context

MUST = "MUST"
SHOULD = "SHOULD"
LEVELS = (MUST, SHOULD)

#: Every capability a welcome may announce (spec section 4.2).
CAPABILITIES = ("exec", "eval", "stdin", "interrupt", "fd-capture", "limits", "preload")

CheckFunction = Callable[["Context"], Awaitable[None]]


@attrs.frozen
class Check:
    """One conformance check."""

    #: ``SECTION/name``: the spec section it checks, then what it checks.
    id: str
    level: str
    summary: str
    requirement: str
    needs: tuple[str, ...]
    since: tuple[int, int]
    function: CheckFunction = attrs.field(repr=False, eq=False)
    #: It waits on the runner's own clock (a bound the spec leaves to the runner), so it
    #: is started first, to overlap the others.
    slow: bool = False
    #: Capabilities the runner must *not* announce for the check to apply.
    absent: tuple[str, ...] = ()
    #: The least time the check needs, whatever ``--timeout`` says (a bound of the spec's).
    min_timeout: float = 0.0

    @property
    def section(self) -> str:
        return self.id.split("/", 1)[0]

    def matches(self, pattern: str) -> bool:
        """``pattern`` is a part of the ID or a glob of it, in any case."""
        ident, pattern = self.id.lower(), pattern.lower()
        return pattern in ident or fnmatch.fnmatchcase(ident, pattern)


_CHECKS: dict[str, Check] = {}


def check(
    id: str,
    level: str,
    summary: str,
    requirement: str,
    *,
    needs: Sequence[str] = (),
    since: tuple[int, int] = (1, 0),
    slow: bool = False,
    min_timeout: float = 0.0,
    absent: Sequence[str] = (),
) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as the check ``id``."""
    if level not in LEVELS:
        raise ValueError(f"check {id}: level must be one of {LEVELS}, not {level!r}")
    unknown = [c for c in needs if c not in CAPABILITIES]
    if unknown:
        raise ValueError(f"check {id}: unknown capabilities {unknown}; known: {CAPABILITIES}")
    if "/" not in id:
        raise ValueError(f"check {id}: an ID is SECTION/name, e.g. '6.7/cancel-sleep'")

    def register(function: CheckFunction) -> CheckFunction:
        if id in _CHECKS:
            raise ValueError(f"check {id} is registered twice")
        _CHECKS[id] = Check(
            id=id,
            level=level,
            summary=" ".join(summary.split()),
            requirement=" ".join(requirement.split()),
            needs=tuple(needs),
            since=since,
            function=function,
            slow=slow,
            min_timeout=min_timeout,
            absent=tuple(absent),
        )
        return function

    return register


def _section_key(check: Check) -> tuple[tuple[int, ...], str]:
    return tuple(int(p) for p in check.section.split(".")), check.id


def all_checks() -> list[Check]:
    """Every check, in the order of the spec's sections."""
    from . import checks  # noqa: F401  (registers them)

    return sorted(_CHECKS.values(), key=_section_key)


def select(patterns: Iterable[str]) -> list[Check]:
    """The checks matching any of ``patterns`` (all of them when there are none).

    Raises ValueError naming a pattern that matches nothing.
    """
    everything = all_checks()
    patterns = list(patterns)
    if not patterns:
        return everything
    for pattern in patterns:
        if not any(c.matches(pattern) for c in everything):
            raise ValueError(
                f"no check matches {pattern!r}: give a part of a check ID (such as '6.7' or "
                "'cancel') or a glob (such as '6.*/eval-*'); --list shows them all"
            )
    return [c for c in everything if any(c.matches(p) for p in patterns)]
