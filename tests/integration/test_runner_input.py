"""Runner stdin: canned text, input requests, EOF rules, getpass, threads."""

from __future__ import annotations

from pathlib import Path

from execpy_trio.protocol import Done, InputRequest
from runner_client import RunnerClient, wait_for, wait_for_file_code


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


def test_threads_take_turns_and_late_waiters_get_eof(client: RunnerClient, tmp_path: Path) -> None:
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
    # The op ends only once the test has seen the thread's request (it creates a file).
    asked = tmp_path / "asked"
    op = client.start_exec(
        "import threading\nout = []\n"
        "def f():\n    try:\n        input()\n    except EOFError:\n        out.append('eof')\n"
        f"t = threading.Thread(target=f)\nt.start()\n{wait_for_file_code(asked)}_signalled",
        allow_stdin=True,
    )
    events = [client.recv(10)]
    assert isinstance(events[0], InputRequest), events
    asked.touch()
    while not isinstance(events[-1], Done):
        events.append(client.recv(10))
    assert [type(e) for e in events] == [InputRequest, Done]
    assert events[-1] == Done(op, "ok", "True", None)
    assert events[-1].status == "ok"
    assert client.exec("t.join(5)\nout").value == "['eof']"


def test_input_while_no_op_runs_is_eof(client: RunnerClient, tmp_path: Path) -> None:
    # The thread reads once the op is done (the test creates "go" then) and says when it
    # has its answer ("read"); only then does the next op start.
    go, read = tmp_path / "go", tmp_path / "read"
    client.exec(
        "import threading\nres = []\ndef f():\n"
        f"{wait_for_file_code(go, indent='    ')}"
        "    try:\n        input()\n    except EOFError:\n        res.append('eof')\n"
        f"    open({str(read)!r}, 'w').close()\n"
        "t = threading.Thread(target=f)\nt.start()"
    )
    go.touch()
    wait_for(read.exists, 30, "the thread to read while no op runs")
    assert client.exec("t.join(5)\nres").value == "['eof']"


def test_user_replaced_stdin_is_read_like_python(client: RunnerClient) -> None:
    r = client.exec("import io, sys\nsys.stdin = io.StringIO('mine\\n')\ninput('p: ')")
    assert r.value == "'mine'" and r.stdout == b"p: "
