"""Cancel latency: from the moment a Trio cancel scope is cancelled to the caller resuming,
the runner then usable; for a tight loop, a sleep and a pending input; Jupyter's
``interrupt_kernel()`` beside it, and two diagnostic rows that show where the time goes.

One sample (execpy): a caller task runs the op inside a ``trio.CancelScope``; a second
task waits a random 5-50 ms (uniform; for the input case, counted from the arrival of the
``InputRequest`` event), reads the clock and calls ``scope.cancel()``. The delay is kept
with each sample: a cancel early in an op and one after it has run a while take different
paths in the runner (its I/O thread takes over reading on its second 2 ms tick). The
caller reads the clock when the scope has exited (``exec`` has sent the cancel, the
runner's cancelled ``done`` has come, and the caller runs again): that is the **cancel
latency**. The caller then times a following ``exec("x = 1")`` (the
**next op**: the runner is usable). Then, untimed, the sample is verified: the scope
caught the cancel, the runner's ``ops_cancelled`` grew by one and ``ops_lost`` did not
(the completion said "cancelled": the runner was not killed after ``cancel_grace``), its
pid is the same, and its namespace shows the code was interrupted where it was (``stage``
set by the code before the loop, ``i > 0`` for the loop, the line after the sleep or the
input never reached); the input case's ``op.result.status`` is "cancelled". The state is
reset for the next sample. A sample that fails a check is not counted, and the failure is
recorded (the table shows "verified n/m").

- execpy ``loop``: ``await runner.exec("... while True: i += 1")``;
- execpy ``sleep``: ``await runner.exec("import time ... time.sleep(100)")``;
- execpy ``input``: ``runner.exec_stream("... input('? ')")``, the InputRequest left
  unanswered (exec() never waits for input: exec_stream is how the API expresses it);
- jupyter, the same three codes: ``kc.execute(code)`` (``allow_stdin`` for input), the
  delay after the kernel's ``execute_input`` (or its ``input_request``), then
  ``km.interrupt_kernel()`` (SIGINT to the kernel, its interrupt mode "signal") until the
  ``execute_reply`` arrives (checked: status "error", ename "KeyboardInterrupt"); the next
  op is ``kc.execute("x = 1")`` until its reply (sent again while ipykernel answers
  "aborted": its ``stop_on_error`` aborts what comes right after an error);
- diagnostic, runner alone: the real runner driven by a bare protocol loop (no client
  library: send ``cancel``, read until ``done``), loop and sleep: the runner's share;
- diagnostic, switch interval: the execpy loop case on a runner whose code first calls
  ``sys.setswitchinterval(0.0005)`` (CPython's default is 5 ms): in a tight loop the
  runner's I/O thread, which reads the cancel and signals the main thread, must wait for
  the GIL, which a spinning thread gives up only every switch interval.

Every runner and the kernel are started first and warmed up (50 ops each, then 3 untimed
cancels per row); every row is then measured in the same run, interleaved round by round
(the order rotates). Also timed: one pass of the runner's ``group_members`` over /proc,
which its I/O thread makes on every cancel before the done can go out.
"""

from __future__ import annotations

import contextlib
import pathlib
import queue
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from figures import _common as c

NAME = "cancel"
TITLE = "Cancel latency"
QUICK_SECONDS = 8
FULL_SECONDS = 40

TARGET_MS = 10.0
CASES = ("loop", "sleep", "input")
CODES = {
    "loop": "stage = 'loop'\ni = 0\nwhile True:\n    i += 1\nstage = 'after'\n",
    "sleep": "import time\nstage = 'sleep'\ntime.sleep(100)\nstage = 'after'\n",
    "input": "stage = 'input'\nanswer = input('? ')\nstage = 'after'\n",
}
SWITCH_INTERVAL = 0.0005
SWITCH_CODE = f"import sys\nsys.setswitchinterval({SWITCH_INTERVAL})\n" + CODES["loop"]
#: s from the op's start (the input request's arrival for input) to the cancel, drawn
#: uniformly: from just after the start to what a short timeout would be. Both ends matter:
#: the runner's I/O thread takes over reading only on its second 2 ms tick of an op.
DELAY = (0.005, 0.050)
RESET = "stage = None\ni = 0"
NEXT = "x = 1"
WAIT = 10.0  # s: a cancel that takes longer than this is a failure, not a sample

# key -> (label, implementation, case)
ROWS: dict[str, tuple[str, str, str]] = {
    "execpy/loop": ("execpy: tight loop", "execpy", "loop"),
    "execpy/sleep": ("execpy: time.sleep", "execpy", "sleep"),
    "execpy/input": ("execpy: pending input()", "execpy", "input"),
    "jupyter/loop": ("jupyter: tight loop", "jupyter", "loop"),
    "jupyter/sleep": ("jupyter: time.sleep", "jupyter", "sleep"),
    "jupyter/input": ("jupyter: pending input()", "jupyter", "input"),
    "bare/loop": ("runner alone (bare protocol loop): tight loop", "bare", "loop"),
    "bare/sleep": ("runner alone (bare protocol loop): time.sleep", "bare", "sleep"),
    "switch/loop": (
        f"execpy: tight loop, code sets switchinterval {SWITCH_INTERVAL * 1000:g} ms",
        "switch",
        "loop",
    ),
}
DIAGNOSTIC = ("bare", "switch")


def _sizes(quick: bool) -> dict[str, int]:
    rounds, per_round, jupyter_per_round = (2, 5, 3) if quick else (10, 10, 6)
    return {"rounds": rounds, "per_round": per_round, "jupyter_per_round": jupyter_per_round}


class Unverified(Exception):
    """A sample whose checks failed: recorded, not counted."""


def measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import trio

    return trio.run(_measure, quick, progress)


async def _measure(quick: bool, progress: c.Progress) -> dict[str, Any]:
    import execpy_trio as ex

    sizes = _sizes(quick)
    rng = random.Random(14)
    out: dict[str, Any] = {
        "sizes": sizes,
        "target_ms": TARGET_MS,
        "delay_s": DELAY,
        "rows": {},
    }
    # key -> (take one sample: () -> (cancel us, next op us), samples per round)
    takers: dict[str, tuple[Callable[[float], Awaitable[tuple[float, float]]], int]] = {}
    async with contextlib.AsyncExitStack() as stack:
        runner = await stack.enter_async_context(ex.open_runner())
        switch_runner = await stack.enter_async_context(ex.open_runner())
        for key, (_label, impl, case) in ROWS.items():
            if impl == "execpy":
                takers[key] = (_bind_execpy(runner, case, CODES[case]), sizes["per_round"])
            elif impl == "switch":
                takers[key] = (
                    _bind_execpy(switch_runner, case, SWITCH_CODE),
                    sizes["per_round"],
                )
        bare = await stack.enter_async_context(_open_bare_runner())
        for case in ("loop", "sleep"):
            takers[f"bare/{case}"] = (_bind_bare(bare, case), sizes["per_round"])
        kernel_pid = None
        aborted: dict[str, int] = {}
        if c.missing("jupyter") is None:
            progress("starting a jupyter kernel")
            km, kc = stack.enter_context(c.open_jupyter_kernel())
            kernel_pid = c.jupyter_kernel_pid(km)
            for _ in range(20):
                c.jupyter_execute(kc, NEXT)
            _jupyter_reset(kc)
            for case in CASES:
                takers[f"jupyter/{case}"] = (
                    _bind_jupyter(km, kc, case, aborted),
                    sizes["jupyter_per_round"],
                )
        for _ in range(50):
            (await runner.exec(NEXT)).check()
            (await switch_runner.exec(NEXT)).check()
        await runner.exec(RESET)
        await switch_runner.exec(RESET)
        pids = (runner.statistics().pid, switch_runner.statistics().pid)

        samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in takers}
        failures: dict[str, list[str]] = {k: [] for k in takers}
        tried: dict[str, int] = dict.fromkeys(takers, 0)
        delays: dict[str, list[float]] = {k: [] for k in takers}
        progress("warm-up: 3 untimed cancels per row")
        for take, _n in takers.values():
            for _ in range(3):
                with contextlib.suppress(Unverified):
                    await take(rng.uniform(*DELAY))
        aborted.clear()
        order = list(takers)
        rounds = sizes["rounds"]
        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}")
            for key in order[r % len(order) :] + order[: r % len(order)]:
                take, n = takers[key]
                for _ in range(n):
                    tried[key] += 1
                    try:
                        delay = rng.uniform(*DELAY)
                        cancel_us, next_us = await take(delay)
                    except Unverified as exc:
                        failures[key].append(str(exc))
                        continue
                    samples[key][0].append(cancel_us)
                    samples[key][1].append(next_us)
                    delays[key].append(delay * 1000)
        # The same processes all along: nothing was killed and replaced.
        if (runner.statistics().pid, switch_runner.statistics().pid) != pids:
            raise RuntimeError("execpy: a runner was replaced during the figure")
        if kernel_pid is not None and c.jupyter_kernel_pid(km) != kernel_pid:
            raise RuntimeError("jupyter: the kernel was restarted during the figure")
    out["proc_walk"] = _proc_walk()
    for key, (label, impl, case) in ROWS.items():
        if key not in takers:
            out["rows"][key] = {"label": label, "impl": impl, "case": case}
            out["rows"][key]["missing"] = c.NOT_INSTALLED
            continue
        cancel_us, next_us = samples[key]
        out["rows"][key] = {
            "label": label,
            "impl": impl,
            "case": case,
            "cancel_us": c.compact(cancel_us, 1),
            "next_us": c.compact(next_us, 1),
            "delay_ms": c.compact(delays[key], 1),
            "tried": tried[key],
            "failures": failures[key][:10],
            "failed": len(failures[key]),
        }
        if impl == "jupyter":
            out["rows"][key]["next_aborted"] = aborted.get(case, 0)
    return out


def _proc_walk() -> dict[str, Any]:
    """What the runner's I/O thread does on every cancel before the main thread may send
    its done (``signal_children``: one pass over /proc for the members of its process
    group), timed here: its cost grows with the processes on the machine."""
    import os

    from execpy_trio.runner._children import group_members

    pid = os.getpid()
    warm = c.time_sync(lambda: group_members(pid), 30, warmup=5)
    # As in the runner: once, after the process has been idle a while (caches cold).
    idle = []
    for _ in range(10):
        time.sleep(0.03)
        idle += c.time_sync(lambda: group_members(pid), 1)
    procs = sum(1 for name in os.listdir("/proc") if name.isdigit())
    return {"us": c.compact(warm, 1), "after_idle_us": c.compact(idle, 1), "processes": procs}


# --- execpy ------------------------------------------------------------------------------


def _bind_execpy(
    runner: Any, case: str, code: str
) -> Callable[[float], Awaitable[tuple[float, float]]]:
    async def take(delay: float) -> tuple[float, float]:
        return await _execpy_once(runner, case, code, delay)

    return take


async def _execpy_once(runner: Any, case: str, code: str, delay: float) -> tuple[float, float]:
    """One cancel of ``code`` on ``runner``: (cancel latency us, next op us), verified."""
    import trio

    import execpy_trio as ex

    clock = time.perf_counter
    scope = trio.CancelScope()
    asked = trio.Event()
    marks: dict[str, float] = {}
    ops: list[Any] = []
    nexts: list[Any] = []
    errors: list[str] = []
    before = runner.statistics()

    async def caller() -> None:
        try:
            with scope:
                if case == "input":
                    async with runner.exec_stream(code) as op:
                        ops.append(op)
                        async for event in op:
                            if isinstance(event, ex.InputRequest):
                                asked.set()
                else:
                    await runner.exec(code)
            marks["resumed"] = clock()
            nexts.append(await runner.exec(NEXT))
            marks["next"] = clock()
        except ex.ExecpyError as exc:  # RunnerDied after the grace, say: a finding
            errors.append(f"{type(exc).__name__}: {exc}")
            scope.cancel()
            asked.set()

    async def canceller() -> None:
        if case == "input":
            await asked.wait()
        await trio.sleep(delay)
        marks["cancel"] = clock()
        scope.cancel()

    with trio.move_on_after(WAIT) as guard:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            nursery.start_soon(canceller)
    if guard.cancelled_caught:
        raise Unverified(f"{case}: no resume within {WAIT} s")
    if errors:
        raise Unverified(f"{case}: " + errors[0].splitlines()[0])
    after = runner.statistics()
    stage, i = await runner.eval("[stage, i]")
    await runner.exec(RESET)
    problems = []
    if not scope.cancelled_caught:
        problems.append("the scope did not catch the cancel")
    if after.ops_cancelled - before.ops_cancelled != 1 or after.ops_lost != before.ops_lost:
        problems.append(
            f"ops_cancelled +{after.ops_cancelled - before.ops_cancelled}, "
            f"ops_lost +{after.ops_lost - before.ops_lost}"
        )
    if after.pid != before.pid:
        problems.append("the runner was replaced")
    if nexts[0].status != "ok":
        problems.append(f"the next op: {nexts[0].status}")
    if stage != case or (case == "loop" and not i > 0):
        problems.append(f"state after the cancel: stage={stage!r} i={i!r}")
    if ops and ops[0].result.status != "cancelled":
        problems.append(f"op.result.status {ops[0].result.status!r}")
    if problems:
        raise Unverified(f"{case}: " + "; ".join(problems))
    return (marks["resumed"] - marks["cancel"]) * 1e6, (marks["next"] - marks["resumed"]) * 1e6


# --- the runner alone --------------------------------------------------------------------


class _Bare:
    """The real runner on a socketpair, driven inline by a bare protocol loop (the way of
    bench_client.py's ``bare_loop_exec``): no reader task, no op bookkeeping."""

    def __init__(self, stream: Any, conn: Any) -> None:
        self.stream = stream
        self.conn = conn
        self.op = 0

    async def until(self, kind: type) -> Any:
        from execpy_trio.protocol import NEED_DATA

        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif type(event) is kind:
                return event

    async def send(self, msg: Any) -> None:
        await self.stream.send_all(self.conn.send(msg))

    async def exec(self, code: str) -> Any:
        from execpy_trio.protocol import Done, Exec

        self.op += 1
        await self.send(Exec(self.op, code))
        return await self.until(Done)


@contextlib.asynccontextmanager
async def _open_bare_runner() -> AsyncIterator[_Bare]:
    import trio

    from execpy_trio.protocol import Connection, Hello, Shutdown, Welcome

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(  # noqa: ASYNC220 - set-up, not timed
        [sys.executable, "-m", "execpy_trio.runner", "--fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    bare = _Bare(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), Connection("client"))
    await bare.send(Hello((1, 0), "bench", "0", bare.conn.max_frame))
    await bare.until(Welcome)
    for _ in range(50):
        await bare.exec(NEXT)
    await bare.exec(RESET)
    try:
        yield bare
    finally:
        with contextlib.suppress(Exception):
            await bare.send(Shutdown())
        await bare.stream.aclose()
        proc.wait(timeout=10)


def _bind_bare(bare: _Bare, case: str) -> Callable[[float], Awaitable[tuple[float, float]]]:
    async def take(delay: float) -> tuple[float, float]:
        return await _bare_once(bare, case, delay)

    return take


async def _bare_once(bare: _Bare, case: str, delay: float) -> tuple[float, float]:
    import trio

    from execpy_trio.protocol import Cancel, Done, Exec

    clock = time.perf_counter
    bare.op += 1
    await bare.send(Exec(bare.op, CODES[case]))
    await trio.sleep(delay)
    start = clock()
    await bare.send(Cancel(bare.op))
    done = await bare.until(Done)
    resumed = clock()
    following = await bare.exec(NEXT)
    ended = clock()
    state = await bare.exec(f"assert stage == {case!r} and (i > 0 or {case!r} != 'loop')")
    await bare.exec(RESET)
    problems = []
    if done.status != "cancelled":
        problems.append(f"done status {done.status!r}")
    if following.status != "ok" or state.status != "ok":
        problems.append(f"next {following.status!r}, state check {state.status!r}")
    if problems:
        raise Unverified(f"{case}: " + "; ".join(problems))
    return (resumed - start) * 1e6, (ended - resumed) * 1e6


# --- jupyter -----------------------------------------------------------------------------


def _bind_jupyter(
    km: Any, kc: Any, case: str, aborted: dict[str, int]
) -> Callable[[float], Awaitable[tuple[float, float]]]:
    async def take(delay: float) -> tuple[float, float]:
        # Blocking calls in the Trio task: nothing else runs in this loop meanwhile.
        return _jupyter_once(km, kc, case, delay, aborted)

    return take


def _shell_reply(kc: Any, msg_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unverified(f"jupyter: no execute_reply within {WAIT} s")
        try:
            msg = kc.get_shell_msg(timeout=left)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def _iopub_until(kc: Any, msg_id: str, kind: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == kind:
            return
    raise Unverified(f"jupyter: no {kind} within {WAIT} s")


def _drain_iopub(kc: Any) -> None:
    # Not iopub_channel.get_msgs(): with no timeout it waits for the next message.
    while True:
        try:
            kc.get_iopub_msg(timeout=0)
        except queue.Empty:
            return


def _jupyter_reset(kc: Any) -> None:
    reply = _shell_reply(kc, kc.execute(RESET))
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"jupyter: reset failed: {reply['content']}")
    _drain_iopub(kc)


def _jupyter_once(
    km: Any, kc: Any, case: str, delay: float, aborted: dict[str, int]
) -> tuple[float, float]:
    """One interrupt ``delay`` s after the code started; ``aborted`` counts, per case, the
    next ops that came back "aborted" and were sent again."""
    clock = time.perf_counter
    msg_id = kc.execute(CODES[case], allow_stdin=case == "input")
    if case == "input":
        request = kc.get_stdin_msg(timeout=WAIT)
        if request["msg_type"] != "input_request":
            raise Unverified(f"jupyter: {request['msg_type']} in place of input_request")
    else:
        _iopub_until(kc, msg_id, "execute_input")
    time.sleep(delay)
    start = clock()
    km.interrupt_kernel()
    reply = _shell_reply(kc, msg_id)
    resumed = clock()
    # Right after an error reply ipykernel may still abort a new request (its
    # stop_on_error, the default): the kernel is usable once one comes back "ok".
    for _attempt in range(5):
        following = _shell_reply(kc, kc.execute(NEXT))
        if following["content"]["status"] != "aborted":
            break
        aborted[case] = aborted.get(case, 0) + 1
    ended = clock()
    state = _shell_reply(kc, kc.execute("", user_expressions={"stage": "stage", "i": "i"}))
    _jupyter_reset(kc)
    problems = []
    content = reply["content"]
    if content["status"] != "error" or content.get("ename") != "KeyboardInterrupt":
        problems.append(f"reply {content['status']} {content.get('ename')}")
    if following["content"]["status"] != "ok":
        problems.append(f"next op {following['content']['status']}")
    exprs = state["content"].get("user_expressions", {})
    stage = exprs.get("stage", {}).get("data", {}).get("text/plain")
    i = exprs.get("i", {}).get("data", {}).get("text/plain", "0")
    if stage != repr(case) or (case == "loop" and not int(i) > 0):
        problems.append(f"state after the interrupt: stage={stage} i={i}")
    if problems:
        raise Unverified(f"jupyter {case}: " + "; ".join(problems))
    return (resumed - start) * 1e6, (ended - resumed) * 1e6


# --- render ------------------------------------------------------------------------------


def _ms(values: list[float]) -> list[float]:
    return [v / 1000 for v in values]


def _usable(row: dict[str, Any]) -> list[float]:
    return [a + b for a, b in zip(row["cancel_us"], row["next_us"], strict=True)]


def render(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> c.Rendered:
    parts = [
        "Cancel latency, ms: from the `scope.cancel()` call (jupyter: `interrupt_kernel()`) "
        "to the caller resuming; \"+ next op\": to a following `exec('x = 1')` done (the "
        "runner usable). Every sample verified (the code was interrupted where it was, "
        "the runner is the same process and answers); all rows in the same run, "
        "interleaved. The last rows are diagnostics (no target)."
    ]
    targets: list[c.Target] = []
    for place in c.PLACEMENTS:
        if place not in results:
            continue
        rows_out = []
        for row in results[place]["rows"].values():
            if "cancel_us" not in row:
                rows_out.append([row["label"], row.get("missing", "-"), "", "", "", "", "", ""])
                continue
            s = c.summary(_ms(row["cancel_us"]))
            u = c.summary(_ms(_usable(row)))
            rows_out.append(
                [
                    row["label"],
                    f"{s['n']}/{row['tried']}",
                    c.fmt(s["median"], 2),
                    c.fmt(s["p90"], 2),
                    c.fmt(s["p99"], 2),
                    c.fmt(s["max"], 2),
                    c.fmt(u["median"], 2),
                    c.fmt(u["p99"], 2),
                ]
            )
            if row["impl"] == "execpy":
                ok = row["failed"] == 0 and s["n"] > 0 and s["p99"] <= TARGET_MS
                failed = f", {row['failed']} unverified" if row["failed"] else ""
                targets.append(
                    c.Target(
                        f"cancel: execpy {row['case']} p99 <= {TARGET_MS:g} ms ({place})",
                        f"{c.fmt(s['p99'], 2)} ms{failed}",
                        ok,
                    )
                )
            elif row["impl"] == "jupyter":
                targets.append(
                    c.Target(
                        f"cancel: jupyter interrupt, {row['case']} p99 ({place})",
                        f"{c.fmt(s['p99'], 2)} ms",
                        None,
                    )
                )
        parts.append(f"**{place}**")
        parts.append(
            c.md_table(
                [
                    "case",
                    "verified",
                    "median",
                    "p90",
                    "p99",
                    "max",
                    "+ next op median",
                    "+ next op p99",
                ],
                rows_out,
            )
        )
        retried = {
            row["case"]: row["next_aborted"]
            for row in results[place]["rows"].values()
            if row.get("next_aborted")
        }
        if retried:
            parts.append(
                "jupyter: right after the interrupted request's error reply, ipykernel "
                "aborted the next request (its `stop_on_error`, the default) "
                + ", ".join(
                    f"{n} time{'s' if n > 1 else ''} ({case})" for case, n in retried.items()
                )
                + "; it was sent again, and the time until one came back ok is the "
                '"+ next op" time.'
            )
        walk = results[place].get("proc_walk")
        if walk:
            parts.append(
                "Diagnostic: the runner's I/O thread walks /proc on every cancel (to "
                "signal its process group's other members) before the main thread may "
                f"send its done: {c.fmt(c.percentile(walk['us'], 50) / 1000, 2)} ms median "
                "back to back, "
                f"{c.fmt(c.percentile(walk.get('after_idle_us', []), 50) / 1000, 2)} ms after "
                f"30 ms idle, with {walk['processes']} processes on the machine."
            )
        failures = [
            f"- {row['label']}: {msg}"
            for row in results[place]["rows"].values()
            for msg in row.get("failures", [])
        ]
        if failures:
            parts.append("Unverified samples:\n\n" + "\n".join(failures))
    images = []
    if results:
        images.append((_plot(results, img_dir), _caption()))
    return c.Rendered("\n\n".join(parts), images, targets)


def _caption() -> str:
    return (
        "Cancel latency, from the cancel call to the caller resuming (log scale): boxes "
        "p25-p75, the line the median, whiskers p1-p99, a dot at the max; the dashed line "
        f"is the {TARGET_MS:g} ms target. execpy and jupyter per case, then two diagnostics: "
        "the runner alone and a runner with a 0.5 ms GIL switch interval. Left pinned, "
        "right unpinned; the same run."
    )


def _short(row: dict[str, Any]) -> str:
    case = {"loop": "loop", "sleep": "sleep", "input": "input"}[row["case"]]
    impl = {
        "execpy": "execpy",
        "jupyter": "jupyter",
        "bare": "runner\nalone",
        "switch": "execpy,\n0.5 ms switch",
    }[row["impl"]]
    return f"{impl}\n{case}"


def _plot(results: dict[str, dict[str, Any]], img_dir: pathlib.Path) -> str:
    places = [p for p in c.PLACEMENTS if p in results]
    fig, axes = c.new_figure(ncols=len(places), size=(12, 5.5))
    colors = {"bare": "#9ab8dc", "switch": "#9ab8dc"}
    for ax, place in zip(axes[0], places, strict=True):
        rows = results[place]["rows"]
        order = [f"{impl}/{case}" for case in CASES for impl in ("execpy", "jupyter")]
        order += [k for k in rows if k.split("/")[0] in DIAGNOSTIC]
        keys = [k for k in order if rows.get(k, {}).get("cancel_us")]
        data = [_ms(rows[k]["cancel_us"]) for k in keys]
        bp = ax.boxplot(
            data,
            whis=(1, 99),
            showfliers=False,
            patch_artist=True,
            widths=0.6,
            medianprops={"color": "black"},
        )
        for i, (patch, key, values) in enumerate(zip(bp["boxes"], keys, data, strict=True), 1):
            impl = rows[key]["impl"]
            tint = colors.get(impl, c.color(impl))
            patch.set_facecolor(tint)
            patch.set_alpha(0.85)
            ax.plot([i], [max(values)], ".", color=tint)
            median = c.percentile(values, 50)
            ax.annotate(
                f"{median:.1f}",
                (i, median),
                xytext=(14, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
            )
        ax.axhline(TARGET_MS, color="#c0392b", ls="--", lw=1)
        diag = sum(1 for k in keys if rows[k]["impl"] in DIAGNOSTIC)
        if diag:
            ax.axvline(len(keys) - diag + 0.5, color="#888888", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels([_short(rows[k]) for k in keys], fontsize=7)
        ax.set_title(place)
        ax.set_ylabel("cancel -> caller resumes, ms (log)")
    low = min(ax.get_ylim()[0] for ax in axes[0])
    high = max(ax.get_ylim()[1] for ax in axes[0])
    for ax in axes[0]:
        ax.set_ylim(low, high)
    fig.suptitle("Cancel latency: execpy cancel scope vs jupyter interrupt_kernel()")
    return c.save(fig, img_dir, "cancel.png")
