"""Runner stdin: canned text, input requests, EOF rules, getpass, threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from execpy_trio.protocol import Done, InputRequest
from runner_client import RunnerClient


@pytest.fixture
def client() -> Iterator[RunnerClient]:
    c = RunnerClient()
    try:
        yield c
    finally:
        c.close()


def test_canned_stdin_with_prompt_echo(client: RunnerClient) -> None:
    r = client.exec("a = input('a? ')\nb = input('b? ')\nprint(a + b)", stdin="x\ny\n")
    assert r.status == "ok"
    assert r.stdout == b"a? b? xy\n"


def test_canned_stdin_used_up_raises_eof_at_once(client: RunnerClient) -> None:
    r = client.exec("input()\ninput()", stdin="only one\n")
    assert r.status == "error" and r.error["type"] == "EOFError"
    assert r.error["message"] == "EOF when reading a line"


def test_no_stdin_raises_eof_at_once(client: RunnerClient) -> None:
    r = client.exec("input('prompt> ')", timeout=3)
    assert r.status == "error" and r.error["type"] == "EOFError"
    assert not any(isinstance(e, InputRequest) for e in r.events)
    r = client.exec("import sys\n(sys.stdin.readline(), sys.stdin.read())")
    assert r.value == "('', '')"


def test_input_requests_after_canned_text(client: RunnerClient) -> None:
    prompts = []

    def answer(req: InputRequest) -> str:
        prompts.append((req.prompt, req.password))
        return "from client"

    r = client.exec(
        "a = input('one: ')\nb = input('two: ')\n(a, b)",
        stdin="canned\n",
        allow_stdin=True,
        on_input=answer,
    )
    assert r.value == "('canned', 'from client')"
    assert prompts == [("two: ", False)]
    assert r.stdout == b"one: "  # only the canned read echoes its prompt


def test_reply_nil_is_eof(client: RunnerClient) -> None:
    r = client.exec("input()", allow_stdin=True, on_input=lambda req: None)
    assert r.status == "error" and r.error["type"] == "EOFError"


def test_readline_read_and_iteration(client: RunnerClient) -> None:
    answers = iter(["l1", "l2\n", None])
    r = client.exec(
        "import sys\nfirst = sys.stdin.readline()\nrest = sys.stdin.read()\n(first, rest)",
        allow_stdin=True,
        on_input=lambda req: next(answers),
    )
    assert r.value == "('l1\\n', 'l2\\n')"
    r = client.exec("import sys\n[line for line in sys.stdin]", stdin="a\nb\nc")
    assert r.value == "['a\\n', 'b\\n', 'c']"
    r = client.exec("import sys\nsys.stdin.readline(2), sys.stdin.readline()", stdin="abcd\n")
    assert r.value == "('ab', 'cd\\n')"


def test_getpass_sets_the_password_flag(client: RunnerClient) -> None:
    seen = []

    def answer(req: InputRequest) -> str:
        seen.append((req.prompt, req.password))
        return "s3cret"

    r = client.exec("import getpass\ngetpass.getpass('Key: ')", allow_stdin=True, on_input=answer)
    assert r.value == "'s3cret'"
    assert seen == [("Key: ", True)]
    r = client.exec("from getpass import getpass\ngetpass()", allow_stdin=True, on_input=answer)
    assert r.value == "'s3cret'" and seen[-1] == ("Password: ", True)
    r = client.exec("getpass()")
    assert r.error["type"] == "EOFError"


def test_threads_take_turns_and_late_waiters_get_eof(client: RunnerClient) -> None:
    answers = iter(["a", "b"])
    r = client.exec(
        "import threading\nres = []\n"
        "ts = [threading.Thread(target=lambda: res.append(input())) for _ in range(2)]\n"
        "[t.start() for t in ts]\n[t.join() for t in ts]\nsorted(res)",
        allow_stdin=True,
        on_input=lambda req: next(answers),
    )
    assert r.value == "['a', 'b']"
    # A thread still waiting when the op ends gets EOF; its request is left unanswered.
    client.start_exec(
        "import threading\nout = []\n"
        "def f():\n    try:\n        input()\n    except EOFError:\n        out.append('eof')\n"
        "t = threading.Thread(target=f)\nt.start()\nimport time\ntime.sleep(0.1)",
        allow_stdin=True,
    )
    events = []
    while not events or not isinstance(events[-1], Done):
        events.append(client.recv(5))
    assert [type(e) for e in events] == [InputRequest, Done]
    assert events[-1].status == "ok"
    assert client.exec("t.join(5)\nout").value == "['eof']"


def test_input_while_no_op_runs_is_eof(client: RunnerClient) -> None:
    client.exec(
        "import threading, time\nres = []\n"
        "def f():\n    time.sleep(0.2)\n    try:\n        input()\n    except EOFError:\n"
        "        res.append('eof')\nt = threading.Thread(target=f)\nt.start()"
    )
    assert client.exec("t.join(5)\nres").value == "['eof']"


def test_user_replaced_stdin_is_read_like_python(client: RunnerClient) -> None:
    r = client.exec("import io, sys\nsys.stdin = io.StringIO('mine\\n')\ninput('p: ')")
    assert r.value == "'mine'" and r.stdout == b"p: "
