"""Runner interrupts: cancel tight loops, sleeps, input waits and children; races."""

from __future__ import annotations

import time

import pytest

from execpy_trio.protocol import Cancel, Done, InputReply, InputRequest, Output
from runner_client import RunnerClient, wait_gone

#: How long a cancel may take to interrupt the code: a hang detector, not a speed check
#: (uninterrupted, each snippet below runs for 100 s or forever).
INTERRUPT_BOUND = 10.0


def _cancel_after_start(client: RunnerClient, code: str, **fields: object) -> Done:
    op = client.start_exec(code + "\nprint('unreachable')", **fields)
    first = client.recv(10)  # each snippet announces itself, so the code surely runs
    if isinstance(first, InputRequest):
        pass
    else:
        assert isinstance(first, Output) and first.data == b"started\n", first
    client.send(Cancel(op))
    events = []
    deadline = time.monotonic() + INTERRUPT_BOUND
    while True:
        ev = client.recv(deadline - time.monotonic())
        events.append(ev)
        if isinstance(ev, Done):
            assert ev.op == op
            assert not any(isinstance(e, Output) and b"unreachable" in e.data for e in events)
            return ev


@pytest.mark.parametrize(
    "code",
    [
        "print('started')\nwhile True: pass",
        "print('started')\nimport time\ntime.sleep(100)",
        "print('started')\nimport subprocess\nsubprocess.run(['sleep', '100'])",
        "print('started')\nimport threading\nthreading.Event().wait()",
    ],
    ids=["tight-loop", "sleep", "child", "event-wait"],
)
def test_cancel_interrupts(client: RunnerClient, code: str) -> None:
    done = _cancel_after_start(client, code)
    assert done.status == "cancelled", done
    assert done.error is not None and done.error["type"] == "KeyboardInterrupt"
    assert "execpy_trio" not in done.error["traceback"]
    assert client.exec("'alive'").value == "'alive'"


def test_cancel_during_os_system(client: RunnerClient) -> None:
    # os.system() ignores SIGINT while it waits, as in a terminal: the child dies of it,
    # and the interrupt is delivered again once the main thread takes signals again.
    op = client.start_exec(
        "print('started')\nimport os\nos.system('sleep 100')\nimport time\ntime.sleep(100)"
    )
    assert isinstance(client.recv(10), Output)
    client.send(Cancel(op))
    # Without the second delivery the code would sleep 100 s: the bound is a hang detector.
    result = client.collect(op, timeout=INTERRUPT_BOUND)
    assert result.status == "cancelled"


def test_cancel_a_pending_input(client: RunnerClient) -> None:
    done = _cancel_after_start(client, "x = input('?')", allow_stdin=True)
    assert done.status == "cancelled"
    # The abandoned request is not re-sent; the next op asks afresh.
    r = client.exec("input('again')", allow_stdin=True, on_input=lambda req: "yes")
    assert r.value == "'yes'"


def test_namespace_survives_a_cancel(client: RunnerClient) -> None:
    client.exec("kept = 41")
    done = _cancel_after_start(client, "print('started')\nkept += 1\nwhile True: pass")
    assert done.status == "cancelled"
    assert client.exec("kept").value == "42"


def test_cancel_kills_children_started_by_the_op(client: RunnerClient) -> None:
    op = client.start_exec(
        "import subprocess\np = subprocess.Popen(['sleep', '100'])\nprint(p.pid, flush=True)\n"
        "p.wait()"
    )
    out = client.recv(10)
    assert isinstance(out, Output)
    child = int(out.data)
    client.send(Cancel(op))
    done = client.collect(op).done
    assert done is not None and done.status == "cancelled"
    assert wait_gone(child, 10), "the op's child outlived the cancel"  # a hang detector


def test_cancel_during_finally_ends_in_exactly_one_done(client: RunnerClient) -> None:
    op = client.start_exec(
        "import time\ntry:\n    print('started', flush=True)\n    time.sleep(100)\n"
        "finally:\n    print('cleanup', flush=True)\n    time.sleep(100)\n    print('end')"
    )
    assert client.recv(10) == Output(op, "stdout", b"started\n")
    client.send(Cancel(op))
    assert client.recv(10) == Output(op, "stdout", b"cleanup\n")
    client.send(Cancel(op))  # lands in the finally's sleep (it lasts until interrupted)
    result = client.collect(op)
    assert result.status == "cancelled"
    assert b"end" not in result.stdout
    client.send(Cancel(op))  # stale now: harmless
    assert client.exec("1").value == "1"


def test_code_that_swallows_the_interrupt_completes_ok(client: RunnerClient) -> None:
    op = client.start_exec(
        "import time\ntry:\n    print('started', flush=True)\n    time.sleep(100)\n"
        "except KeyboardInterrupt:\n    outcome = 'caught'\noutcome"
    )
    client.recv(10)
    client.send(Cancel(op))
    result = client.collect(op)
    assert result.status == "ok" and result.value == "'caught'"


def test_cancel_racing_with_completion(client: RunnerClient) -> None:
    # The cancel arrives before, during or after the code: always exactly one done, and
    # the runner stays usable. A done must never be followed by another for the same op.
    statuses: set[str] = set()
    for i in range(200):
        # From instant to ~16 ms: the I/O thread starts reading after 2-4 ms of an op.
        op = client.start_exec(
            f"import time\nx = {i}\nfor _ in range({(i % 3) * 5_000}): pass\n"
            f"time.sleep({(i % 9) * 0.002})"
        )
        if i % 3:
            time.sleep((i % 5) * 0.0002)
        client.send(Cancel(op))
        done = client.collect(op, timeout=5).done
        assert done is not None and done.status in ("ok", "cancelled")
        statuses.add(done.status)
    r = client.exec("'still fine'")
    assert r.value == "'still fine'" and len(r.events) == 1
    assert statuses == {"ok", "cancelled"}


def test_cancel_and_eof_reply_together_never_strand_the_next_read(client: RunnerClient) -> None:
    # A client that cancels an op waiting for input ends the request with a nil reply in
    # the same breath (see the Trio client's _abandon). The interrupt can then land before
    # the reply, or just after it came and before it was taken: either way the code that
    # catches the interrupt and reads again must get that reply (EOF), not wait forever
    # for a second reply to a request it did not send again.
    code = (
        "try:\n    input('first: ')\nexcept KeyboardInterrupt:\n    try:\n"
        "        input('second: ')\n    except EOFError:\n        print('eof after interrupt')\n"
    )
    outcomes: set[str] = set()
    for _ in range(25):
        op = client.start_exec(code, allow_stdin=True)
        first = client.recv(5)
        assert isinstance(first, InputRequest) and first.prompt == "first: ", first
        client.send_raw(client.conn.send(Cancel(op)) + client.conn.send(InputReply(op, None)))
        # A read after the reply was taken asks again: answer that with EOF too.
        result = client.collect(op, timeout=5, on_input=lambda req: None)
        assert result.done is not None
        if result.status == "ok":
            assert result.stdout == b"eof after interrupt\n"
        else:  # the reply was taken, and the interrupt landed outside the code's handler
            assert result.error["type"] in ("KeyboardInterrupt", "EOFError"), result.error
        outcomes.add(result.status)
    assert "ok" in outcomes, outcomes
    assert client.exec("'alive'").value == "'alive'"
