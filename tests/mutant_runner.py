"""A deliberately broken runner, for testing the conformance kit.

Usage::

    python tests/mutant_runner.py DEFECT [-- RUNNER_ARGV...]

It is a relaying proxy: it speaks the protocol (spec/protocol.md) to the kit over its own
stdin (frames from the client) and stdout (frames to the client), and spawns the real runner
(by default ``[sys.executable, "-m", "execpy_trio.runner", "--stdio"]``) with pipes for its
stdin and stdout (its stderr is inherited, so its diagnostics reach the kit). It relays
frames both ways, one at a time with blocking I/O (backpressure reaches both ends), and
applies one defect:

``none``
    a pure relay (conforms).
``extra-fields``
    adds ``"x_mutant": 1`` to every message of the runner (unknown fields: still conforms).
``fewer-capabilities``
    removes ``"fd-capture"`` from the ``welcome``'s ``capabilities``.
``only-exec``
    announces only ``exec`` in the ``welcome`` and rejects ``eval`` as ``unsupported`` itself
    (a correct runner of the fewest capabilities).
``forget-done``
    drops every ``done`` whose ``status`` is ``"cancelled"``.
``output-after-done``
    after each ``done`` with ``status`` ``"error"``, sends a stderr ``output`` for that op.
``ignore-cancel``
    drops every ``cancel`` of the client.
``wrong-version``
    accepts any major version: a ``hello`` whose major version is not 1 is rewritten to
    ``[1, 1]`` before the runner sees it.
``garbage``
    writes the ``data`` of every stdout ``output`` unframed onto the channel.
``hang-on-eof``
    on end of the client's stream, neither closes the runner's stdin nor exits.
``hang-on-garbage``
    on the first undecodable / empty / oversized client frame, forwards nothing more and
    closes nothing (the kit must kill it).
``lose-password``
    removes ``password`` from every ``input_request``.
``run-second-exec``
    holds an ``exec``/``eval`` sent while an op is in flight and forwards it after that op's
    ``done`` (the runner runs it instead of rejecting it with ``busy``).
``no-pong-while-busy``
    holds ``ping`` while an op is in flight and forwards it after the op's ``done``.
``unknown-kind-fatal``
    answers a client message of an unknown kind with a fatal ``bad-message`` error, closes
    and exits with status 3.
``bad-prompt-type``
    sets ``prompt`` to the int 42 in every ``input_request``.

Client frames are parsed only as far as the defects need: once a client frame is not a
valid frame holding a msgpack map (length 0 or over 65536, or a body that does not decode
to a dict), that frame and everything after it are copied to the runner unchanged, unparsed.
When the runner's stdout ends, the proxy closes its own stdout, waits for the runner and
exits with its status (128+N for a runner killed by signal N). SIGTERM kills the runner's
process group and then the proxy.
"""

from __future__ import annotations

import collections
import os
import signal
import struct
import subprocess
import sys
import threading
from typing import Any

import msgpack

RELAYED_FRAME = 65_536
CLIENT_KINDS = frozenset(
    {"hello", "exec", "eval", "input_reply", "cancel", "ping", "shutdown", "error"}
)
DEFECTS = (
    "none",
    "extra-fields",
    "fewer-capabilities",
    "only-exec",
    "forget-done",
    "output-after-done",
    "ignore-cancel",
    "wrong-version",
    "garbage",
    "hang-on-eof",
    "hang-on-garbage",
    "lose-password",
    "run-second-exec",
    "no-pong-while-busy",
    "unknown-kind-fatal",
    "bad-prompt-type",
)
USAGE = (
    "usage: mutant_runner.py DEFECT [-- RUNNER_ARGV...]\n"
    "A relaying proxy in front of a real runner that applies one defect.\n"
    "DEFECT: " + ", ".join(DEFECTS) + "\n"
    "RUNNER_ARGV defaults to: PYTHON -m execpy_trio.runner --stdio\n"
)

_CLOSE = object()  # in the runner-bound queue: close the runner's stdin
_HEADER = struct.Struct(">I")


def _read_exact(fd: int, n: int) -> bytearray:
    """Up to n bytes from fd; fewer only at end of file."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            del view
            del buf[got:]
            return buf
        got += k
    return buf


def _write_all(fd: int, *parts: bytes | bytearray) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _pack(msg: dict[Any, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


class Proxy:
    def __init__(self, defect: str, argv: list[str]) -> None:
        self.defect = defect
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, start_new_session=True
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_runner = self.proc.stdin.fileno()
        self.from_runner = self.proc.stdout.fileno()
        self.out_lock = threading.Lock()  # one frame at a time onto fd 1
        # The runner-bound queue, drained by the writer thread. The client reader appends
        # only when it is empty (at most one frame waits: backpressure); released held
        # frames are appended at once (few, bounded by what the kit sent).
        self.cond = threading.Condition()
        self.outq: collections.deque[Any] = collections.deque()
        self.in_flight: set[Any] = set()  # op ids of exec/eval forwarded and not ended
        self.held: collections.deque[tuple[Any, Any]] = collections.deque()  # (msg, item)

    # --- runner-bound ------------------------------------------------------------------

    def _send(self, item: Any) -> None:
        with self.cond:
            while self.outq:
                self.cond.wait()
            self.outq.append(item)
            self.cond.notify_all()

    def writer(self) -> None:
        broken = False
        while True:
            with self.cond:
                while not self.outq:
                    self.cond.wait()
                item = self.outq.popleft()
                self.cond.notify_all()
            if broken:
                continue
            try:
                if item is _CLOSE:
                    self.proc.stdin.close()  # type: ignore[union-attr]
                    broken = True
                else:
                    _write_all(self.to_runner, *item)
            except OSError:
                broken = True  # the runner is gone: its stdout ends, the main thread exits

    def _holds(self, msg: dict[Any, Any] | None) -> bool:
        """Whether a client frame (msg None: raw bytes or the end of the stream) must wait in
        `held` for the ops in flight to end."""
        kind = msg.get("kind") if msg is not None else None
        if self.defect == "no-pong-while-busy":
            # Only pings wait (in their order); everything else goes on at once.
            return kind == "ping" and bool(self.in_flight or self.held)
        if self.defect != "run-second-exec":
            return False
        if kind == "ping":
            return False  # answered while busy, as it should be
        if kind in ("cancel", "input_reply") and msg is not None:
            if msg.get("op") in self.in_flight:
                return False  # the running op needs it: never behind what waits for its end
        if self.held:
            return True  # the rest keeps the client's order behind the held exec/eval
        return kind in ("exec", "eval") and bool(self.in_flight)

    def _forward(self, msg: dict[Any, Any] | None, item: Any) -> None:
        with self.cond:
            if self._holds(msg):
                self.held.append((msg, item))
                return
            if msg is not None and msg.get("kind") in ("exec", "eval"):
                self.in_flight.add(msg.get("op"))
        self._send(item)

    def _op_ended(self, op: Any) -> None:
        """The runner ended (or rejected) op: go through what waited, in the client's order,
        as if it arrived now (a released exec/eval puts an op in flight again, and what
        follows it waits again unless it may pass, like a cancel for that op)."""
        with self.cond:
            self.in_flight.discard(op)
            if self.in_flight or not self.held:
                return
            waiting, self.held = self.held, collections.deque()
            for msg, item in waiting:
                if self._holds(msg):
                    self.held.append((msg, item))
                    continue
                if msg is not None and msg.get("kind") in ("exec", "eval"):
                    self.in_flight.add(msg.get("op"))
                self.outq.append(item)
            self.cond.notify_all()

    def _eof(self, partial: bytes | bytearray) -> None:
        if partial:
            self._forward(None, (partial,))
        if self.defect != "hang-on-eof":
            self._forward(None, _CLOSE)

    def client_reader(self) -> None:
        while True:
            header = _read_exact(0, 4)
            if len(header) < 4:
                return self._eof(header)
            (length,) = _HEADER.unpack(header)
            msg: Any = None
            body = b""
            # Over 64 KiB: forwarded raw at once, so that a frame the runner refuses by
            # its header alone (frame-too-large) reaches it without its body.
            if 0 < length <= RELAYED_FRAME:
                body = _read_exact(0, length)
                if len(body) < length:
                    return self._eof(header + body)
                try:
                    msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
                except Exception:
                    msg = None
            if not isinstance(msg, dict):
                if self.defect == "hang-on-garbage":
                    return  # forward nothing more, close nothing
                self._forward(None, (header, body))
                return self._transparent()
            item = self._mutate_client(msg, (header, body))
            if item is not None:
                self._forward(msg, item)

    def _transparent(self) -> None:
        while True:
            data = os.read(0, 65536)
            if not data:
                return self._eof(b"")
            self._forward(None, (data,))

    def _mutate_client(self, msg: dict[Any, Any], item: Any) -> Any:
        kind = msg.get("kind")
        if self.defect == "ignore-cancel" and kind == "cancel":
            return None
        if self.defect == "only-exec" and kind == "eval":
            reply = {"kind": "error", "code": "unsupported", "op": msg.get("op")}
            reply["message"] = "this runner does not evaluate expressions (no 'eval' capability)"
            self._to_client(_pack(reply))
            return None
        if self.defect == "wrong-version" and kind == "hello":
            version = msg.get("version")
            if isinstance(version, (list, tuple)) and version and version[0] != 1:
                msg["version"] = [1, 1]
                return (_pack(msg),)
        if self.defect == "unknown-kind-fatal" and isinstance(kind, str):
            if kind not in CLIENT_KINDS:
                self._fatal()
        return item

    def _fatal(self) -> None:
        error = {
            "kind": "error",
            "code": "bad-message",
            "message": "mutant: unknown kind",
            "fatal": True,
        }
        with self.out_lock:
            try:
                _write_all(1, _pack(error))
                os.close(1)
            except OSError:
                pass
            self.kill_runner()
            os._exit(3)

    # --- client-bound ------------------------------------------------------------------

    def _mutate_runner(self, msg: dict[Any, Any]) -> list[bytes] | None:
        """The bytes to send the client for one runner message, or None: the frame as is."""
        kind = msg.get("kind")
        d = self.defect
        if kind in ("done", "error") and "op" in msg and msg["op"] is not None:
            self._op_ended(msg["op"])
        if d == "extra-fields":
            msg["x_mutant"] = 1
            return [_pack(msg)]
        if d == "fewer-capabilities" and kind == "welcome":
            caps = msg.get("capabilities")
            if isinstance(caps, list) and "fd-capture" in caps:
                msg["capabilities"] = [c for c in caps if c != "fd-capture"]
                return [_pack(msg)]
        if d == "only-exec" and kind == "welcome":  # (its evals are refused on the way in)
            msg["capabilities"] = ["exec"]
            return [_pack(msg)]
        if d == "forget-done" and kind == "done" and msg.get("status") == "cancelled":
            return []
        if d == "output-after-done" and kind == "done" and msg.get("status") == "error":
            late = {"kind": "output", "op": msg["op"], "stream": "stderr"}
            late["data"] = b"late traceback\n"
            return [_pack(msg), _pack(late)]
        if d == "garbage" and kind == "output" and msg.get("stream") == "stdout":
            return [msg["data"]]
        if d in ("lose-password", "bad-prompt-type") and kind == "input_request":
            if d == "lose-password":
                msg.pop("password", None)
            else:
                msg["prompt"] = 42
            return [_pack(msg)]
        return None

    def runner_reader(self) -> None:
        fd = self.from_runner
        while True:
            header = _read_exact(fd, 4)
            if len(header) < 4:
                self._to_client(header)
                return
            (length,) = _HEADER.unpack(header)
            body = _read_exact(fd, length)
            if len(body) < length:
                self._to_client(header, body)
                return
            try:
                msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception:
                msg = None
            out = self._mutate_runner(msg) if isinstance(msg, dict) else None
            if out is None:
                self._to_client(header, body)
            else:
                self._to_client(*out)

    def _to_client(self, *parts: bytes | bytearray) -> None:
        if not any(parts):
            return
        with self.out_lock:
            try:
                _write_all(1, *parts)
            except OSError:
                # The kit stopped reading: let the runner see its stream fail too.
                self.proc.stdout.close()  # type: ignore[union-attr]
                raise

    # --- life --------------------------------------------------------------------------

    def kill_runner(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            os.waitpid(self.proc.pid, 0)  # reap it: no zombie left for the kit to see
        except ChildProcessError:
            pass

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.kill_runner()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        for target in (self.writer, self.client_reader):
            threading.Thread(target=target, daemon=True).start()
        try:
            self.runner_reader()
        except OSError:
            pass
        with self.out_lock:
            try:
                os.close(1)
            except OSError:
                pass
        status = self.proc.wait()
        return 128 - status if status < 0 else status


def main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        return 0
    if not args or args[0] not in DEFECTS or (len(args) > 1 and (args[1] != "--" or len(args) < 3)):
        sys.stderr.write(USAGE)
        return 2
    argv = args[2:] or [sys.executable, "-m", "execpy_trio.runner", "--stdio"]
    try:
        proxy = Proxy(args[0], argv)
    except OSError as exc:
        sys.stderr.write(f"mutant_runner.py: cannot start the runner {argv!r}: {exc}\n")
        return 2
    return proxy.run()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
