"""Compiling and running user code in the persistent ``__main__`` namespace.

Each op's code is compiled under its own filename (``<exec-7>``, ``<eval-8>``), with
``dont_inherit=True`` so the runner's own ``from __future__`` imports do not leak into it.
Its source is registered in :mod:`linecache` so tracebacks show the lines. Importing
linecache costs several milliseconds, so sources wait in a list until linecache is
imported (by the runner when it formats a traceback, or by user code: an import hook
registers them the moment it is). Sources that define nothing outliving the op (no nested
code object: no function, class, lambda or comprehension) are dropped when it ends, so a
client that polls ``eval("x")`` forever does not grow the runner's memory.

An exec whose last statement is an expression returns ``repr`` of its value, as the REPL
displays it (None gives no value; ``builtins._`` keeps the last non-None value). The AST
decides which statement is last: bytecode cannot, because the compiler folds constant
expressions (``1 + 1``, ``'a'``) away. The AST round trip costs about 4 us over a plain
compile, and repeated snippets hit the compile cache anyway.
"""

from __future__ import annotations

import builtins
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, ModuleType, TracebackType
    from typing import Any

#: Frames from files in this directory are the runner's own; they are cut from tracebacks.
RUNNER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

_CodeType = type(compile("", "<empty>", "exec", dont_inherit=True))
CACHE_ENTRIES = 256
CACHE_MAX_SOURCE = 4096
#: Traceback entries shown by default (the innermost ones), as in Python's printer.
TB_LIMIT = 1000

#: Objects of the client's budget kept for a done's own fields around an eval value.
DONE_RESERVE = 16


def _has_nested_code(code: CodeType) -> bool:
    return any(type(c) is _CodeType for c in code.co_consts)


def type_name(cls: type) -> str:
    """The exception type as Python's traceback prints it."""
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


class Executor:
    def __init__(self) -> None:
        main = type(sys)("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        self.ns: dict[str, Any] = main.__dict__
        self._linecache: ModuleType | None = sys.modules.get("linecache")
        #: Sources waiting for linecache to be imported, by filename.
        self._pending: dict[str, str] = {}
        #: The filename of the running op's source if it is dropped at the end (one op
        #: at a time, one source per op).
        self._temporary: str | None = None
        #: Compiled code of recent sources that define nothing, by mode and source (see
        #: compile_code).
        self._exec_cache: dict[str, tuple[CodeType | None, CodeType | None]] = {}
        self._eval_cache: dict[str, tuple[CodeType | None, CodeType | None]] = {}

    # -- sources --------------------------------------------------------------------------

    def remember(self, filename: str, source: str, keep: bool) -> None:
        if not keep:
            self._temporary = filename
        if self._linecache is not None:
            self._register(filename, source)
        else:
            self._pending[filename] = source

    def forget_temporary(self) -> None:
        """Drop the sources of the op that just ended if nothing can refer to them."""
        name = self._temporary
        if name is not None:
            self._temporary = None
            store = self._linecache.cache if self._linecache is not None else self._pending
            store.pop(name, None)

    def on_linecache_import(self, module: ModuleType) -> None:
        self._linecache = module
        pending, self._pending = self._pending, {}
        for filename, source in pending.items():
            self._register(filename, source)

    def _register(self, filename: str, source: str) -> None:
        assert self._linecache is not None
        # mtime None: linecache.checkcache() leaves the entry alone.
        self._linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)

    # -- compiling ------------------------------------------------------------------------

    def compile_code(
        self, mode: str, source: str, filename: str, named: bool = False
    ) -> tuple[CodeType | None, CodeType | None]:
        """Compile ``source`` in ``mode`` ("exec" or "eval") under ``filename``.

        ``named``: the client chose the filename. Its source is then always kept (until
        the name is used again): dropping it would let linecache read a file of that name
        from disk for the tracebacks of code compiled under it earlier.

        Returns (code of the statements, code of a final expression); for "eval" the first
        is None and the second the expression. Raises what ``compile()`` raises.
        """
        # Clients often send the same small snippet again and again (polling a value):
        # code that defines nothing is cached and only renamed, which is 30x cheaper than
        # compiling it. Code that defines functions or classes is compiled each time, so
        # that their code objects carry their own op's filename.
        cache = self._exec_cache if mode == "exec" else self._eval_cache
        hit = cache.get(source)
        if hit is not None:
            head, expr = hit
            # remember(filename, source, named), inline: this is the round trip's path.
            if not named:
                self._temporary = filename
            if self._linecache is not None:
                self._register(filename, source)
            else:
                self._pending[filename] = source
            return (
                None if head is None else head.replace(co_filename=filename),
                None if expr is None else expr.replace(co_filename=filename),
            )
        if mode == "eval":
            head, expr = None, compile(source, filename, "eval", dont_inherit=True)
        else:
            head, expr = self._compile_statements(source, filename)
        keep = (
            named
            or (head is not None and _has_nested_code(head))
            or (expr is not None and _has_nested_code(expr))
        )
        self.remember(filename, source, keep)
        if not keep and len(source) <= CACHE_MAX_SOURCE:
            if len(self._exec_cache) + len(self._eval_cache) >= CACHE_ENTRIES:
                self._exec_cache.clear()
                self._eval_cache.clear()
            cache[source] = (head, expr)
        return head, expr

    def _compile_statements(self, source: str, filename: str) -> tuple[CodeType, CodeType | None]:
        import _ast

        tree = compile(source, filename, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
        assert isinstance(tree, _ast.Module)
        body = tree.body
        if not body or type(body[-1]) is not _ast.Expr:
            return compile(tree, filename, "exec", dont_inherit=True), None
        last = body.pop()
        assert isinstance(last, _ast.Expr)
        head = compile(tree, filename, "exec", dont_inherit=True)
        expr = compile(_ast.Expression(last.value), filename, "eval", dont_inherit=True)
        return head, expr

    # -- errors ---------------------------------------------------------------------------

    def error_info(self, exc: BaseException, limit: int) -> dict[str, str]:
        """type, message and traceback (as Python prints it, runner frames cut)."""
        import traceback  # imports linecache: the hook registers pending sources

        if self._linecache is None:
            self.on_linecache_import(sys.modules["linecache"])
        try:
            # Only the innermost TB_LIMIT entries, as Python's own printer does (it
            # honours sys.tracebacklimit, default 1000): formatting every frame of a deep
            # recursion costs seconds (7 s at depth 300,000, against 0.6 s for python3).
            shown = _tb_limit()
            te = traceback.TracebackException(
                type(exc), exc, _innermost(exc.__traceback__, shown), limit=-shown, compact=True
            )
            _cut_runner_frames(te, set())
            text = "".join(te.format())
        except Exception as fmt_exc:  # a hostile __str__ or the like
            text = f"<the traceback could not be formatted: {fmt_exc!r}>\n"
        try:
            message = str(exc)
        except Exception:
            message = f"<str() of the {type_name(type(exc))} failed>"
        return {
            "type": type_name(type(exc)),
            "message": _clip(message, limit),
            "traceback": _clip(text, limit),
        }

    # -- what an op's done carries ------------------------------------------------------

    def exec_value(self, value: Any, limit: int) -> str | None:
        """An exec's value as the done carries it: its repr (cut to ``limit`` bytes), and
        stored as ``_`` in the builtins, as the interactive interpreter does."""
        if value is None:
            return None
        builtins._ = value  # type: ignore[attr-defined]
        return clip_head(repr(value), limit)

    def eval_value(self, value: Any, peer_max_frame: int) -> Any:
        """An eval's value as it is, once it is known to reach the client as plain data;
        otherwise TypeError (what cannot be sent) or ValueError (too large)."""
        from execpy_trio.protocol import LocalProtocolError, pack_body, undecodable_reason

        why: str | None
        try:
            body = pack_body(value)
        except LocalProtocolError as exc:
            cause = exc.__cause__
            why = "an int does not fit in 64 bits" if isinstance(cause, OverflowError) else None
            why = why or str(cause or exc)
        else:
            if len(body) > peer_max_frame - 256:
                raise ValueError(
                    f"eval result is {len(body)} bytes as msgpack, over the client's frame "
                    f"limit of {peer_max_frame} bytes; return less data"
                )
            # What the client's decoder will accept: str keys, its object budget (less
            # what the rest of the done takes, so that the done is sent unchecked).
            why = undecodable_reason(body, peer_max_frame, DONE_RESERVE)
        if why is not None:
            raise TypeError(
                f"eval result of type {type(value).__name__!r} cannot be sent as msgpack: "
                f"{why}; convert it to plain data (None, bool, int of 64 bits, float, str, "
                "bytes, list, dict with str keys) or use exec and repr()"
            ) from None
        return value

    def error(self, exc: BaseException, limit: int) -> dict[str, str]:
        """The done's error for ``exc`` (also set as ``sys.last_*``, as the interactive
        interpreter does), never failing: user code may have broken what formatting needs."""
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
        try:
            return self.error_info(exc, limit)
        except Exception as fmt_exc:
            return {
                "type": type(exc).__name__,
                "message": "",
                "traceback": f"<the error could not be described: {fmt_exc!r}>\n",
            }


def _tb_limit() -> int:
    """How many traceback entries to show: ``sys.tracebacklimit``, as Python prints them."""
    limit = getattr(sys, "tracebacklimit", TB_LIMIT)
    if type(limit) is not int:
        return TB_LIMIT
    return max(limit, 0)


def _innermost(tb: TracebackType | None, n: int) -> TracebackType | None:
    """The last ``n`` entries of ``tb``: skipping the rest by hand is 20x cheaper than
    letting TracebackException work out (and throw away) each one's position."""
    depth = 0
    t = tb
    while t is not None:
        depth += 1
        t = t.tb_next
    for _ in range(depth - n):
        assert tb is not None
        tb = tb.tb_next
    return tb


def sendable(text: str) -> tuple[str, bytes]:
    """``text`` as it can go on the wire (lone surrogates escaped), and its UTF-8 bytes."""
    try:
        return text, text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
        return data.decode("utf-8"), data


def _clip(text: str, limit: int) -> str:
    """``text``, sendable, cut in the middle to at most about ``limit`` UTF-8 bytes."""
    text, data = sendable(text)
    if len(data) <= limit:
        return text
    # Cut on bytes, not characters: the frame limit is in bytes, and a character may
    # take four. A character split by a cut is dropped.
    head = data[: limit // 2].decode("utf-8", "ignore")
    tail = data[-(limit // 2) :].decode("utf-8", "ignore")
    cut = len(text) - len(head) - len(tail)
    return f"{head}\n... [{cut} characters cut] ...\n{tail}"


def clip_head(text: str, limit: int) -> str:
    """``text``, sendable, cut after at most ``limit`` UTF-8 bytes, saying so."""
    text, data = sendable(text)
    if len(data) <= limit:
        return text
    head = data[:limit].decode("utf-8", "ignore")
    return f"{head}... [repr cut: {len(text)} characters in all]"


def _cut_runner_frames(te: Any, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack[:] = [f for f in te.stack if not f.filename.startswith(RUNNER_DIR)]
    for nested in (te.__cause__, te.__context__):
        if nested is not None:
            _cut_runner_frames(nested, seen)
    for nested in getattr(te, "exceptions", None) or ():
        _cut_runner_frames(nested, seen)
