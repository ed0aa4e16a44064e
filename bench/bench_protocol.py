"""Benchmark: the sans-IO protocol package against bare msgpack, in the same run.

Run: ``.venv/bin/python bench/bench_protocol.py`` (add ``--quick`` for a short run). For
stable numbers pin it to one CPU: ``taskset -c 0 .venv/bin/python bench/bench_protocol.py``.

Each case moves the same messages two ways:

* protocol: ``Connection.send`` on one side, ``receive_data`` + ``next_event`` on the other
  (a client and a runner connection after the handshake, in steady state), so the number
  includes framing, field validation and both state machines;
* bare: ``msgpack.packb`` + ``msgpack.unpackb`` of the same dicts (what ``to_wire`` gives).

Cases: an exec answered by a done (two small messages, one op per round), a ping answered
by a pong (two small messages, no state change), and a 64 KiB output frame during an op.
Targets (issue 2): protocol <= 5x bare on small messages, within 10% of bare on 64 KiB.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import msgpack

from execpy_trio.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Connection,
    Done,
    Exec,
    Hello,
    Output,
    Ping,
    Pong,
    Welcome,
)


def handshaken_pair() -> tuple[Connection, Connection]:
    client = Connection("client")
    runner = Connection("runner")
    runner.receive_data(client.send(Hello(PROTOCOL_VERSION, "bench", "0", DEFAULT_MAX_FRAME)))
    runner.next_event()
    client.receive_data(
        runner.send(Welcome(PROTOCOL_VERSION, "bench", "0", "python", "3", 1, DEFAULT_MAX_FRAME))
    )
    client.next_event()
    return client, runner


def best_rate(fn: Callable[[int], None], n: int, repeats: int) -> float:
    """Rounds per second of the fastest of ``repeats`` runs of ``fn(n)``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return n / best


def exec_done_protocol() -> Callable[[int], None]:
    client, runner = handshaken_pair()
    op = [client.last_op]

    def run(n: int) -> None:
        csend, rrecv, rnext = client.send, runner.receive_data, runner.next_event
        rsend, crecv, cnext = runner.send, client.receive_data, client.next_event
        o = op[0]
        for _ in range(n):
            o += 1
            rrecv(csend(Exec(o, "x = 40\nx + 2")))
            rnext()
            crecv(rsend(Done(o, "ok", "42")))
            cnext()
        op[0] = o

    return run


def exec_done_bare() -> Callable[[int], None]:
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def run(n: int) -> None:
        for o in range(1, n + 1):
            unpackb(packb({"kind": "exec", "op": o, "code": "x = 40\nx + 2"}))
            unpackb(packb({"kind": "done", "op": o, "status": "ok", "value": "42"}))

    return run


def ping_pong_protocol() -> Callable[[int], None]:
    client, runner = handshaken_pair()

    def run(n: int) -> None:
        csend, rrecv, rnext = client.send, runner.receive_data, runner.next_event
        rsend, crecv, cnext = runner.send, client.receive_data, client.next_event
        for t in range(n):
            rrecv(csend(Ping(t)))
            rnext()
            crecv(rsend(Pong(t)))
            cnext()

    return run


def ping_pong_bare() -> Callable[[int], None]:
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def run(n: int) -> None:
        for t in range(n):
            unpackb(packb({"kind": "ping", "token": t}))
            unpackb(packb({"kind": "pong", "token": t}))

    return run


PAYLOAD = bytes(range(256)) * 256  # 64 KiB


def output_protocol() -> Callable[[int], None]:
    client, runner = handshaken_pair()
    runner.receive_data(client.send(Exec(1, "print(...)")))
    runner.next_event()
    msg = Output(1, "stdout", PAYLOAD)

    def run(n: int) -> None:
        rsend, crecv, cnext = runner.send, client.receive_data, client.next_event
        for _ in range(n):
            crecv(rsend(msg))
            cnext()

    return run


def output_bare() -> Callable[[int], None]:
    packb, unpackb = msgpack.packb, msgpack.unpackb
    d = {"kind": "output", "op": 1, "stream": "stdout", "data": PAYLOAD}

    def run(n: int) -> None:
        for _ in range(n):
            unpackb(packb(d))

    return run


def main() -> None:
    quick = "--quick" in sys.argv
    repeats = 3 if quick else 7
    cases = [
        (
            "exec + done (small)",
            exec_done_protocol,
            exec_done_bare,
            5_000 if quick else 30_000,
            5.0,
        ),
        (
            "ping + pong (small)",
            ping_pong_protocol,
            ping_pong_bare,
            5_000 if quick else 30_000,
            5.0,
        ),
        ("output 64 KiB", output_protocol, output_bare, 2_000 if quick else 10_000, 1.10),
    ]
    print(f"{'case':<22} {'protocol/s':>12} {'bare/s':>12} {'ratio':>7} {'target':>7}  ok")
    failed = False
    for name, proto, bare, n, target in cases:
        # Interleave the two so that a change in machine load hits both alike.
        p_rate = b_rate = 0.0
        for _ in range(3):
            p_rate = max(p_rate, best_rate(proto(), n, repeats))
            b_rate = max(b_rate, best_rate(bare(), n, repeats))
        ratio = b_rate / p_rate
        ok = ratio <= target
        failed |= not ok
        print(
            f"{name:<22} {p_rate:>12,.0f} {b_rate:>12,.0f} {ratio:>6.2f}x {target:>6.2f}x  "
            f"{'yes' if ok else 'NO'}"
        )
    print("(rates are rounds per second; a round of a small case is two messages)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
