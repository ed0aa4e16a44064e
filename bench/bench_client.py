"""Client benchmarks: exec round trip, output throughput and cold start, with peers, as ratios.

Usage: python bench/bench_client.py [--quick]
Run it pinned too (``taskset -c 0 python bench/bench_client.py``): a wake-up across CPUs
costs more than the work measured here, so compare ratios taken in the same run.

Cold start: from entering ``open_runner()`` to the first ``exec("x = 1")`` done (and to the
end of the block, the runner's exit included), against spawning ``python -c "import
msgpack"`` from trio and waiting for it.

Rows whose peer is not installed (execnet, trio-parallel, jupyter_client + ipykernel;
``pip install -e '.[bench]'``) are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

import execpy_trio._public as ex

# A plain Python child that echoes length-prefixed frames: the floor for a round trip.
ECHO_CHILD = r"""
import os, sys, struct
fd = int(sys.argv[1])
r = os.fdopen(fd, "rb", buffering=0)
H = struct.Struct(">I")
while True:
    hdr = r.read(4)
    if len(hdr) < 4:
        break
    (n,) = H.unpack(hdr)
    body = b""
    while len(body) < n:
        body += r.read(n - len(body))
    os.write(fd, hdr + body)
"""

THROUGHPUT_BYTES = 50 * 1024 * 1024
CHUNK = 64 * 1024


def per_op(total: float, n: int) -> float:
    return total / n * 1e6


async def best_of(rounds: int, n: int, step: Callable[[], Awaitable[Any]]) -> float:
    """Best mean (us per op) over ``rounds`` batches of ``n``."""
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            await step()
        means.append(per_op(time.perf_counter() - start, n))
    return min(means)


@contextlib.asynccontextmanager
async def open_floor() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The trio floor: Trio on this side of a socketpair, a plain Python child echoing
    length-prefixed msgpack frames on the other. Yields ``step()``: one exec-sized frame
    sent, echoed, read back and decoded."""
    import msgpack

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark set-up step, not timed
        [sys.executable, "-c", ECHO_CHILD, str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    body = msgpack.packb({"kind": "exec", "op": 1, "code": "x = 1"})
    frame = len(body).to_bytes(4, "big") + body
    buf = bytearray()

    async def step() -> None:
        await stream.send_all(frame)
        while len(buf) < len(frame):
            buf.extend(await stream.receive_some(65536))
        msgpack.unpackb(bytes(buf[4 : len(frame)]))
        del buf[: len(frame)]

    try:
        yield step
    finally:
        await stream.aclose()
        proc.wait(timeout=10)  # the child exits at EOF at once


async def floor_pingpong(n: int, rounds: int) -> float:
    async with open_floor() as step:
        for _ in range(200):
            await step()
        return await best_of(rounds, n, step)


async def bare_loop_exec(n: int, rounds: int) -> float:
    """The real runner driven by a bare loop: send an exec, read until its done, inline in
    one task (no reader task, no op bookkeeping). What the client adds is the rest."""
    from execpy_trio.protocol import NEED_DATA, Connection, Done, Exec, Hello, Shutdown, Welcome

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark set-up step, not timed
        [sys.executable, "-m", "execpy_trio.runner", "--fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    conn = Connection("client")
    op = 0

    async def until(kind: type) -> None:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif type(event) is kind:
                return

    async def step() -> None:
        nonlocal op
        op += 1
        await stream.send_all(conn.send(Exec(op, "x = 1")))
        await until(Done)

    await stream.send_all(conn.send(Hello((1, 0), "bench", "0", conn.max_frame)))
    await until(Welcome)
    for _ in range(200):
        await step()
    result = await best_of(rounds, n, step)
    await stream.send_all(conn.send(Shutdown()))
    await stream.aclose()
    proc.wait(timeout=10)
    return result


async def execpy_exec(n: int, rounds: int) -> tuple[float, float, float]:
    """exec and ping round trips (best mean, us), and the client's own CPU per exec (the
    main thread's CPU time, us, least of ``rounds`` batches): less noisy than wall time
    on a busy machine, and all of it is the client's (the runner is another process)."""
    async with ex.open_runner() as runner:
        for _ in range(200):
            await runner.exec("x = 1")
        exec_us = await best_of(rounds, n, lambda: runner.exec("x = 1"))
        ping_us = await best_of(rounds, n, runner.ping)
        cpu = []
        for _ in range(rounds):
            start = time.thread_time()
            for _ in range(n):
                await runner.exec("x = 1")
            cpu.append(per_op(time.thread_time() - start, n))
    return exec_us, ping_us, min(cpu)


async def execpy_throughput() -> tuple[float, float]:
    """Best MB/s of 3 streams, and the least client CPU (main thread, ms) per stream."""
    code = (
        "import os\n"
        f"chunk = b'x' * {CHUNK}\n"
        f"for _ in range({THROUGHPUT_BYTES // CHUNK}):\n"
        "    os.write(1, chunk)\n"
    )
    async with ex.open_runner() as runner:
        best = 0.0
        cpu = []
        for _ in range(3):
            received = 0
            start = time.perf_counter()
            start_cpu = time.thread_time()
            async with runner.exec_stream(code) as op:
                async for event in op:
                    if isinstance(event, ex.Output):
                        received += len(event.data)
            elapsed = time.perf_counter() - start
            cpu.append((time.thread_time() - start_cpu) * 1e3)
            assert received == THROUGHPUT_BYTES, received
            best = max(best, received / elapsed / 1e6)
    return best, min(cpu)


async def spawn_floor(n: int) -> float:
    """Median ms to spawn ``python -c "import msgpack"`` and wait for it, from trio."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await trio.run_process([sys.executable, "-c", "import msgpack"])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


async def execpy_cold_start(n: int) -> tuple[float, float]:
    """Median ms from entering ``open_runner()`` to the first ``exec('x = 1')`` done, and
    to the end of the block (shutdown and exit included)."""
    first, whole = [], []
    for _ in range(n):
        start = time.perf_counter()
        async with ex.open_runner() as runner:
            await runner.exec("x = 1")
            first.append(time.perf_counter() - start)
        whole.append(time.perf_counter() - start)
    return statistics.median(first) * 1e3, statistics.median(whole) * 1e3


def noop() -> None:
    return None


def trio_parallel_noop(n: int, rounds: int) -> float | None:
    try:
        import trio_parallel
    except ImportError:
        return None

    async def main() -> float:
        for _ in range(50):
            await trio_parallel.run_sync(noop)
        return await best_of(rounds, n, lambda: trio_parallel.run_sync(noop))

    return trio.run(main)


def execnet_exec(n: int, rounds: int) -> tuple[float, float] | None:
    try:
        import execnet
    except ImportError:
        return None
    gw = execnet.makegateway(f"popen//python={sys.executable}")
    try:
        for _ in range(50):
            gw.remote_exec("x = 1").waitclose()
        means = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(n):
                gw.remote_exec("x = 1").waitclose()
            means.append(per_op(time.perf_counter() - start, n))
        rtt = min(means)
        ch = gw.remote_exec(
            f"chunk = b'x' * {CHUNK}\n"
            f"for _ in range({THROUGHPUT_BYTES // CHUNK}):\n"
            "    channel.send(chunk)\n"
        )
        best = 0.0
        for attempt in range(3):
            if attempt:
                ch = gw.remote_exec(
                    f"chunk = b'x' * {CHUNK}\n"
                    f"for _ in range({THROUGHPUT_BYTES // CHUNK}):\n"
                    "    channel.send(chunk)\n"
                )
            start = time.perf_counter()
            received = 0
            for item in ch:
                received += len(item)
            elapsed = time.perf_counter() - start
            best = max(best, received / elapsed / 1e6)
        return rtt, best
    finally:
        gw.exit()


def jupyter_exec(n: int) -> tuple[float, float] | None:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError:
        return None
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        for _ in range(20):
            kc.execute_interactive("x = 1", timeout=30)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            kc.execute_interactive("x = 1", timeout=30)
            times.append(time.perf_counter() - start)
        rtt = statistics.median(times) * 1e6
        size = 10 * 1024 * 1024  # jupyter is slow: 10 MB is enough to measure it
        code = (
            "import sys\n"
            f"chunk = 'x' * {CHUNK}\n"
            f"for _ in range({size // CHUNK}):\n"
            "    sys.stdout.write(chunk)\n"
        )
        received = 0

        def on_output(msg: dict[str, Any]) -> None:
            nonlocal received
            if msg["msg_type"] == "stream":
                received += len(msg["content"]["text"])

        start = time.perf_counter()
        kc.execute_interactive(code, timeout=120, output_hook=on_output)
        elapsed = time.perf_counter() - start
        return rtt, received / elapsed / 1e6
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def row(label: str, value: float | None, note: str = "", fmt: str = "8.1f") -> None:
    if value is None:
        print(f"{label:<46} skipped (not installed)")
    else:
        print(f"{label:<46} {value:{fmt}}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (500, 3) if args.quick else (2000, 5)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, CPUs allowed: {cpus}")
    print(f"execpy_trio: {ex.__file__}")

    floor = trio.run(floor_pingpong, n, rounds)
    bare = trio.run(bare_loop_exec, n, rounds)
    exec_us, ping_us, exec_cpu = trio.run(execpy_exec, n, rounds)
    print("\n## Round trip (best mean of batches, us per op)")
    row("floor: trio <-> plain Python echo, socketpair", floor)
    row("bare trio loop <-> the real runner, exec", bare, f"({bare / floor:.2f}x floor)")
    row("execpy Runner.ping()", ping_us, f"({ping_us / floor:.2f}x floor)")
    row(
        "execpy Runner.exec('x = 1')",
        exec_us,
        f"({exec_us / floor:.2f}x floor, {exec_us / bare:.2f}x bare loop)",
    )
    row("execpy Runner.exec('x = 1'), client CPU", exec_cpu, "(main thread CPU per op)")
    tp = trio_parallel_noop(n, rounds)
    row("trio-parallel run_sync(noop)", tp, f"(execpy {(tp or 0) / exec_us:.1f}x faster)")
    en = execnet_exec(n // 4, rounds)
    en_rtt = en[0] if en else None
    row(
        "execnet remote_exec('x = 1') + waitclose",
        en_rtt,
        f"(execpy {(en_rtt or 0) / exec_us:.1f}x)",
    )
    jp = jupyter_exec(100 if args.quick else 300)
    jp_rtt = jp[0] if jp else None
    row("jupyter execute('x = 1') (median)", jp_rtt, f"(execpy {(jp_rtt or 0) / exec_us:.1f}x)")

    mbps, stream_cpu = trio.run(execpy_throughput)
    print("\n## Output throughput (MB/s, 64 KiB writes)")
    row("execpy exec_stream, os.write(1)", mbps, fmt="8.0f")
    row(
        "execpy exec_stream, client CPU ms per 50 MB",
        stream_cpu,
        "(main thread; least of 3)",
        fmt="8.1f",
    )
    if en is not None:
        row("execnet channel.send", en[1], f"(execpy {mbps / en[1]:.2f}x)", fmt="8.0f")
    if jp is not None:
        row("jupyter stream output (10 MB)", jp[1], f"(execpy {mbps / jp[1]:.1f}x)", fmt="8.0f")

    starts = 10 if args.quick else 30
    spawn_ms = trio.run(spawn_floor, starts)
    first_ms, whole_ms = trio.run(execpy_cold_start, starts)
    print(f"\n## Cold start (median of {starts}, ms)")
    row("floor: spawn python -c 'import msgpack', wait", spawn_ms, fmt="8.2f")
    row(
        "execpy open_runner() to first exec done",
        first_ms,
        f"({first_ms / spawn_ms:.2f}x floor)",
        fmt="8.2f",
    )
    row(
        "execpy open_runner() + exec + close",
        whole_ms,
        f"({whole_ms / spawn_ms:.2f}x floor)",
        fmt="8.2f",
    )


if __name__ == "__main__":
    main()
