"""Benchmarks of the runner program against floors measured in the same run.

Run: ``python bench/bench_runner.py`` (prints a table; ``--quick`` for fewer repeats,
``--cpu N`` to pin to CPU N instead of the first one allowed). Each benchmark runs twice:
pinned to one CPU (the process and its children, via ``sched_setaffinity``, like
``taskset -c 0``) and unpinned. Compare the ratios: on a
small VM absolute numbers swing with whatever else runs.

Rows:
- cold start: spawn ``python -m execpy_trio.runner --fd N``, hello, welcome, exec
  ``x = 1``, done -- vs ``python -c "import msgpack"`` (target <= 2.5x) and vs execnet's
  popen gateway (make gateway, one remote_exec, wait; skipped if execnet is missing).
- warm exec round trip: a synchronous client on ``Connection`` sends ``exec`` and waits
  for ``done`` -- vs a raw ping-pong of small msgpack dicts between two Python processes
  over os.pipe (target <= 4x). Both the same code every time (the runner's compile cache
  hits) and different code every time are shown.
- output throughput: user code writes 100 MB in 64 KiB ``os.write`` calls; the client
  decodes every output frame -- vs a raw pipe between two Python processes, reader using
  ``readinto`` on a reused buffer (target >= 40%).
- idle RSS: a runner after its handshake vs ``python -c "import msgpack"`` idling
  (target <= 1.5x).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from execpy_trio.protocol import (
    CLIENT,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    Done,
    Exec,
    Hello,
    Output,
    Shutdown,
    Welcome,
)

PY = sys.executable
RUNNER = [PY, "-m", "execpy_trio.runner"]
QUICK = "--quick" in sys.argv
CPU = int(sys.argv[sys.argv.index("--cpu") + 1]) if "--cpu" in sys.argv else None


def _spawn_runner() -> tuple[subprocess.Popen[bytes], socket.socket, Connection]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [*RUNNER, "--fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    theirs.close()
    ours.settimeout(30)
    conn = Connection(CLIENT)
    ours.sendall(conn.send(Hello(PROTOCOL_VERSION, "bench", "0", conn.max_frame)))
    return proc, ours, conn


class _Reader:
    """Reads 256 KiB at a time as ``bytes``, which the decoder reads frames from in place
    (a reused ``bytearray`` would have to be copied into the decoder's buffer instead)."""

    def __init__(self, sock: socket.socket, conn: Connection) -> None:
        self.sock = sock
        self.conn = conn

    def next(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev
            data = self.sock.recv(1 << 18)
            if not data:
                raise EOFError("runner closed the channel")
            self.conn.receive_data(data)


def _close(proc: subprocess.Popen[bytes], sock: socket.socket, conn: Connection) -> None:
    try:
        sock.sendall(conn.send(Shutdown()))
    except Exception:
        pass
    sock.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- cold start -------------------------------------------------------------------------


def cold_runner() -> float:
    t0 = time.perf_counter()
    proc, sock, conn = _spawn_runner()
    r = _Reader(sock, conn)
    assert isinstance(r.next(), Welcome)
    sock.sendall(conn.send(Exec(1, "x = 1")))
    assert isinstance(r.next(), Done)
    dt = time.perf_counter() - t0
    _close(proc, sock, conn)
    return dt


def cold_msgpack() -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", "import msgpack"], check=True)
    return time.perf_counter() - t0


def cold_execnet() -> float:
    import execnet

    t0 = time.perf_counter()
    gw = execnet.makegateway(f"popen//python={PY}")
    ch = gw.remote_exec("x = 1\nchannel.send(x)")
    ch.receive()
    ch.waitclose()
    dt = time.perf_counter() - t0
    gw.exit()
    return dt


def _median_ms(f: Any, n: int) -> float:
    f()  # warm the page cache
    return statistics.median(f() for _ in range(n)) * 1e3


# -- warm round trip --------------------------------------------------------------------

_PINGPONG = r"""
import os, sys, time, msgpack
r_in, w_out, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    d = os.read(r_in, 65536)
    m = msgpack.unpackb(d[4:])
    b = msgpack.packb({"kind": "done", "op": m["op"], "status": "ok"})
    os.write(w_out, len(b).to_bytes(4, "big") + b)
"""


def raw_pingpong_us(n: int) -> float:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = subprocess.Popen(
        [PY, "-c", _PINGPONG, str(r1), str(w2), str(n + 500)], pass_fds=[r1, w2]
    )
    os.close(r1)
    os.close(w2)
    import msgpack

    def rt(k: int, start: int) -> None:
        for i in range(start, start + k):
            b = msgpack.packb({"kind": "exec", "op": i, "code": "x = 1"})
            os.write(w1, len(b).to_bytes(4, "big") + b)
            msgpack.unpackb(os.read(r2, 65536)[4:])

    rt(500, 1)
    t0 = time.perf_counter()
    rt(n, 501)
    dt = time.perf_counter() - t0
    os.close(w1)
    os.close(r2)
    child.wait(10)
    return dt / n * 1e6


def runner_roundtrip_us(n: int) -> tuple[float, float]:
    proc, sock, conn = _spawn_runner()
    r = _Reader(sock, conn)
    assert isinstance(r.next(), Welcome)
    op = 0

    def rt(k: int, same: bool) -> float:
        nonlocal op
        t0 = time.perf_counter()
        for _ in range(k):
            op += 1
            sock.sendall(conn.send(Exec(op, "x = 1" if same else f"x = {op}")))
            done = r.next()
            assert type(done) is Done and done.status == "ok", done
        return (time.perf_counter() - t0) / k * 1e6

    rt(500, True)
    same = rt(n, True)
    rt(200, False)
    different = rt(n, False)
    _close(proc, sock, conn)
    return same, different


# -- throughput -------------------------------------------------------------------------

_RAW_WRITER = r"""
import os, sys
w, total = int(sys.argv[1]), int(sys.argv[2])
b = b"z" * 65536
for _ in range(total // 65536):
    os.write(w, b)
"""


def raw_pipe_mbps(total: int) -> float:
    r, w = os.pipe()
    child = subprocess.Popen([PY, "-c", _RAW_WRITER, str(w), str(total)], pass_fds=[w])
    os.close(w)
    buf = bytearray(1 << 20)
    with open(r, "rb", buffering=0) as f:
        got = f.readinto(buf)  # type: ignore[attr-defined]
        t0 = time.perf_counter()  # from the first bytes: the spawn is not part of it
        while n := f.readinto(buf):  # type: ignore[attr-defined]
            got += n
    dt = time.perf_counter() - t0
    child.wait(10)
    assert got == total
    return (total - 65536) / dt / 1e6


def runner_output_mbps(total: int) -> float:
    proc, sock, conn = _spawn_runner()
    r = _Reader(sock, conn)
    assert isinstance(r.next(), Welcome)
    code = f"import os\nb = b'z' * 65536\nfor _ in range({total // 65536}):\n    os.write(1, b)"
    sock.sendall(conn.send(Exec(1, code)))
    first = r.next()
    assert type(first) is Output
    got = len(first.data)
    t0 = time.perf_counter()  # from the first bytes, as for the raw pipe
    while True:
        ev = r.next()
        if type(ev) is Output:
            got += len(ev.data)
        else:
            assert type(ev) is Done and ev.status == "ok", ev
            break
    dt = time.perf_counter() - t0
    _close(proc, sock, conn)
    assert got == total
    return (total - len(first.data)) / dt / 1e6


# -- idle RSS ---------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def idle_rss() -> tuple[int, int]:
    proc, sock, conn = _spawn_runner()
    r = _Reader(sock, conn)
    assert isinstance(r.next(), Welcome)
    time.sleep(0.3)
    runner = _rss_kib(proc.pid)
    _close(proc, sock, conn)
    base = subprocess.Popen(
        [PY, "-c", "import msgpack, sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    time.sleep(0.3)
    floor = _rss_kib(base.pid)
    assert base.stdin is not None
    base.stdin.close()
    base.wait(5)
    return runner, floor


# -- driver -----------------------------------------------------------------------------


def run(label: str) -> dict[str, Any]:
    n_cold = 5 if QUICK else 15
    n_rt = 2000 if QUICK else 10000
    total = (20 if QUICK else 100) * 1024 * 1024
    res: dict[str, Any] = {"label": label}
    res["cold_runner"] = _median_ms(cold_runner, n_cold)
    res["cold_msgpack"] = _median_ms(cold_msgpack, n_cold)
    try:
        import execnet  # noqa: F401

        res["cold_execnet"] = _median_ms(cold_execnet, n_cold)
    except ImportError:
        res["cold_execnet"] = None
    res["rt_raw"] = min(raw_pingpong_us(n_rt) for _ in range(3))
    rts = [runner_roundtrip_us(n_rt) for _ in range(3)]
    res["rt_same"] = min(x[0] for x in rts)
    res["rt_diff"] = min(x[1] for x in rts)
    res["tp_raw"] = max(raw_pipe_mbps(total) for _ in range(3))
    res["tp_runner"] = max(runner_output_mbps(total) for _ in range(3))
    res["rss_runner"], res["rss_floor"] = idle_rss()
    return res


def main() -> None:
    all_cpus = os.sched_getaffinity(0)
    cpu = min(all_cpus) if CPU is None else CPU
    results = []
    try:
        os.sched_setaffinity(0, {cpu})
        results.append(run(f"pinned (CPU {cpu})"))
    finally:
        os.sched_setaffinity(0, all_cpus)
    results.append(run("unpinned"))

    def row(name: str, key: str, fmt: str, ratio: Any = None) -> None:
        cells = []
        for r in results:
            v = r[key]
            if v is None:
                cells.append("skipped (pip install execnet)")
                continue
            cell = format(v, fmt)
            if ratio is not None:
                cell += f" ({ratio(r):.2f}x)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("| benchmark | " + " | ".join(r["label"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    row(
        "cold start to first `x = 1` done, ms (x import msgpack; target <= 2.5)",
        "cold_runner",
        ".1f",
        lambda r: r["cold_runner"] / r["cold_msgpack"],
    )
    row("`python -c 'import msgpack'`, ms", "cold_msgpack", ".1f")
    row(
        "execnet popen gateway + remote_exec + wait, ms (runner / execnet)",
        "cold_execnet",
        ".1f",
        lambda r: r["cold_runner"] / r["cold_execnet"],
    )
    row(
        "warm exec round trip, same code, us (x raw; target <= 4)",
        "rt_same",
        ".1f",
        lambda r: r["rt_same"] / r["rt_raw"],
    )
    row(
        "warm exec round trip, new code each time, us (x raw)",
        "rt_diff",
        ".1f",
        lambda r: r["rt_diff"] / r["rt_raw"],
    )
    row("raw msgpack ping-pong over os.pipe, us", "rt_raw", ".1f")
    row(
        "output throughput, 64 KiB os.write, MB/s (of raw; target >= 0.40)",
        "tp_runner",
        ".0f",
        lambda r: r["tp_runner"] / r["tp_raw"],
    )
    row("raw pipe, readinto, MB/s", "tp_raw", ".0f")
    row(
        "idle RSS, KiB (x idle `import msgpack`; target <= 1.5)",
        "rss_runner",
        "d",
        lambda r: r["rss_runner"] / r["rss_floor"],
    )
    row("idle `python -c 'import msgpack'` RSS, KiB", "rss_floor", "d")


if __name__ == "__main__":
    main()
