"""stdin for user code: canned text first, then input requests to the client.

``input()``, ``sys.stdin.readline()``/``read()``/iteration and ``getpass.getpass()`` all
read from the op's input: first the canned ``stdin`` text of the exec (``input()`` echoes
its prompt to stdout, as Python does when stdin is not a terminal), then, if the exec
allows stdin, one ``input_request`` per line, answered by the client's ``input_reply``.
Without canned text left and without ``allow_stdin``, reading is end of file at once:
``input()`` raises ``EOFError``, ``readline()`` returns ``""``. A reply with text nil is
end of file too.

Only one request is outstanding at a time; threads that read at the same time wait their
turn. If a cancel interrupts the main thread while it waits for a reply, the request stays
outstanding (the protocol allows one reply per request): the next read waits for that
reply instead of sending a second request. When the op ends, threads still waiting get
end of file. Reading while no op runs is end of file.
"""

from __future__ import annotations

import _thread
import io
import sys

from execpy_trio.protocol import InputRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_EOF_MESSAGE = "EOF when reading a line"


class _OpInput:
    """The input state of one op."""

    __slots__ = (
        "allow",
        "canned",
        "ended",
        "mutex",
        "op",
        "ready",
        "replied",
        "reply",
        "sent",
        "turn",
        "written",
    )

    def __init__(self, op: int, canned: str | None, allow: bool) -> None:
        self.op = op
        self.canned = canned or ""
        self.allow = allow
        #: The op ended (read only where ``allow``: without it every read is decided at once).
        self.ended = False
        self.sent = False
        self.written = False
        self.replied = False
        self.reply: str | None = None
        # The locks are needed only where a request can be sent; most ops allow no stdin,
        # and allocating three locks per op showed up in the round trip.
        if allow:
            self.mutex = _thread.allocate_lock()  # guards sent/replied/reply/ended
            self.turn = _thread.allocate_lock()  # one reader at a time
            # Released when a reply is there (once per request); taken back when the reply
            # is taken. So it is unlocked only while ``replied`` is true.
            self.ready = _thread.allocate_lock()
            self.ready.acquire()

    def mark_written(self) -> None:
        """Called by the sender once the request's frame is on the wire."""
        self.written = True

    def take_canned(self, size: int) -> str:
        """Up to one line (at most ``size`` characters if size >= 0) of canned text."""
        text = self.canned
        end = text.find("\n") + 1 or len(text)
        if 0 <= size < end:
            end = size
        self.canned = text[end:]
        return text[:end]


class Input:
    """Installs ``sys.stdin``, ``input`` and (when imported) ``getpass.getpass``."""

    def __init__(self, send_request: Callable[[InputRequest, Callable[[], None]], None]) -> None:
        self._send_request = send_request
        #: The state of ops without stdin, and of no op: reads are end of file at once.
        self._no_input = _OpInput(0, None, False)
        self._state = self._no_input
        self.stdin = _Stdin(self)
        sys.stdin = self.stdin
        sys.__stdin__ = self.stdin  # type: ignore[misc,assignment]
        import builtins

        builtins.input = self.input

    # -- per op (main thread) and replies (I/O thread) -----------------------------------

    def begin(self, op: int, canned: str | None, allow: bool) -> None:
        """Only for an op with canned text or ``allow``: the others keep ``_no_input``."""
        self._state = _OpInput(op, canned, allow)

    def finish(self) -> None:
        st = self._state
        if st is self._no_input:
            return
        self._state = self._no_input  # reading while no op runs is end of file
        if not st.allow:  # no request can be outstanding, nobody can be waiting
            return
        with st.mutex:
            st.ended = True
            if st.sent and not st.replied:
                st.reply = None
                st.replied = True
                st.ready.release()

    def repair(self) -> None:
        """Put back ``sys.stdin`` if user code deleted it or set it to None."""
        if sys.__dict__.get("stdin") is None:
            sys.stdin = self.stdin
            sys.__stdin__ = self.stdin  # type: ignore[misc,assignment]

    def deliver(self, op: int, text: str | None) -> None:
        st = self._state
        if not st.allow:
            return  # no op, or one that cannot ask: nothing waits for a reply
        with st.mutex:
            if st.op != op or not st.sent or st.replied:
                return  # for an op that ended, or not asked for: nothing waits for it
            st.reply = text
            st.replied = True
            st.ready.release()

    def _request(self, st: _OpInput, prompt: str, password: bool) -> str | None:
        """Ask the client for one line; None means end of file. Interruptible (cancel).

        A cancel raises KeyboardInterrupt in the main thread at any point in here: while
        it waits, but also just after the reply came and before it was taken. Either way
        the request stays outstanding (``sent``), and the reply, if it came, stays in
        ``reply``: the next read takes it without asking again.
        """
        with st.turn:
            with st.mutex:
                if st.ended:
                    return None
                must_send = not st.sent
                if must_send:
                    st.sent = True
                    st.written = False
                    st.replied = False
            if must_send:
                try:
                    # KeyboardInterrupt may come out of here after the frame was written
                    # (a cancel held back while it was written): then it is outstanding.
                    self._send_request(InputRequest(st.op, prompt, password), st.mark_written)
                except BaseException:
                    if not st.written:
                        with st.mutex:
                            st.sent = False
                    raise
            while True:
                with st.mutex:
                    if st.replied:
                        reply = st.reply
                        st.ready.acquire(False)  # the wake-up, if not used up yet
                        st.sent = st.replied = False
                        return reply
                st.ready.acquire()  # a cancel raises KeyboardInterrupt here

    # -- the reading API ------------------------------------------------------------------

    def readline(self, size: int = -1, prompt: str = "", password: bool = False) -> str:
        st = self._state
        if size == 0:
            return ""
        if st.canned:
            return st.take_canned(size)
        if not st.allow or st.ended:
            return ""
        text = self._request(st, prompt, password)
        if text is None:
            return ""
        if not text.endswith("\n"):
            text += "\n"
        if 0 <= size < len(text):
            st.canned = text[size:] + st.canned
            text = text[:size]
        return text

    def read(self, size: int = -1) -> str:
        parts: list[str] = []
        n = 0
        while size < 0 or n < size:
            line = self.readline(-1 if size < 0 else size - n)
            if not line:
                break
            parts.append(line)
            n += len(line)
        return "".join(parts)

    def _prompted_line(self, prompt: str, password: bool, echo_to: Any) -> str:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        st = self._state
        if st.canned:
            if prompt:
                echo_to.write(prompt)
                echo_to.flush()
            line = st.take_canned(-1)
        elif st.allow and not st.ended:
            reply = self._request(st, prompt, password)
            if reply is None:
                raise EOFError(_EOF_MESSAGE)
            line = reply
        else:
            raise EOFError(_EOF_MESSAGE)
        if line.endswith("\n"):
            line = line[:-1]
        return line

    def input(self, prompt: object = "") -> str:
        """Replacement for the builtin ``input``."""
        stdin = sys.stdin
        if stdin is not self.stdin:
            # User code replaced sys.stdin (e.g. with a StringIO): read it as Python does.
            if prompt:
                sys.stdout.write(str(prompt))
                sys.stdout.flush()
            line = stdin.readline()
            if not line:
                raise EOFError(_EOF_MESSAGE)
            return line[:-1] if line.endswith("\n") else line  # type: ignore[no-any-return,unused-ignore]
        return self._prompted_line(str(prompt), False, sys.stdout)

    def getpass(self, prompt: str = "Password: ", stream: Any = None) -> str:
        """Replacement for ``getpass.getpass``: an input request with the password flag."""
        return self._prompted_line(str(prompt), True, stream if stream is not None else sys.stderr)

    def patch_getpass(self, module: Any) -> None:
        module.getpass = self.getpass


class _Stdin(io.TextIOBase):
    """``sys.stdin``: reads come from the op's input (see the module docstring)."""

    def __init__(self, owner: Input) -> None:
        self._owner = owner

    name = "<stdin>"
    encoding = "utf-8"
    errors = "strict"

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 0

    def read(self, size: int | None = -1) -> str:
        self._checkClosed()  # type: ignore[attr-defined,unused-ignore]
        return self._owner.read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        self._checkClosed()  # type: ignore[attr-defined,unused-ignore]
        return self._owner.readline(-1 if size is None else size)
