"""The conformance kit's own parts, without runner processes: the registry and its sync with
spec section 11, the structural reading of msgpack bodies, the frame-by-frame rules of the
kit's peer (over an in-memory stream), the reports and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from execpy_trio.conformance import MUST, SHOULD, _report, all_checks, select
from execpy_trio.conformance._peer import CheckFailed, FrameLog, Peer
from execpy_trio.conformance._run import FAIL, PASS, SKIP, CheckResult, Report, skip_reason
from execpy_trio.conformance._wire import read_shape
from execpy_trio.conformance.checks._util import Raw, raw_frame, raw_map
from execpy_trio.protocol import Welcome

SPEC = Path(__file__).resolve().parents[1] / "spec" / "protocol.md"


def _sections() -> dict[str, str]:
    """Each numbered section's text (without its subsections)."""
    text = SPEC.read_text()
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def _normalized(text: str) -> str:
    return " ".join(text.split())


# -- the registry and the spec -------------------------------------------------------------


def test_every_check_quotes_its_own_section_word_for_word() -> None:
    sections = _sections()
    for check in all_checks():
        assert check.section in sections, f"{check.id}: the spec has no section {check.section}"
        text = _normalized(
            "".join(
                v
                for k, v in sections.items()
                if k == check.section or k.startswith(check.section + ".")
            )
        )
        assert check.requirement in text, (
            f"{check.id}: its requirement is not in section {check.section}"
        )


def test_every_rule_the_kit_cites_is_quoted_from_the_spec() -> None:
    from execpy_trio.conformance._rules import RULES

    sections = _sections()
    for key, quote in RULES.items():
        section = key.split()[0]
        text = _normalized(
            "".join(v for k, v in sections.items() if k == section or k.startswith(section + "."))
        )
        assert _normalized(quote) in text, key


def test_spec_table_lists_exactly_the_kits_checks() -> None:
    section = _sections()["11"]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        listed[cells[0].strip("`")] = cells[1:]
    kit = {c.id: c for c in all_checks()}
    assert set(listed) == set(kit), set(listed) ^ set(kit)
    for ident, (level, needs, since, summary) in listed.items():
        check = kit[ident]
        assert level == check.level, ident
        cells = [*(f"`{n}`" for n in check.needs), *(f"not `{a}`" for a in check.absent)]
        assert needs == (", ".join(cells) or "—"), ident
        assert since == f"{check.since[0]}.{check.since[1]}", ident
        assert summary == check.summary, ident


def test_ids_levels_and_capabilities() -> None:
    checks = all_checks()
    assert len({c.id for c in checks}) == len(checks)
    assert {c.level for c in checks} == {MUST, SHOULD}
    for c in checks:
        assert re.fullmatch(r"\d+(\.\d+)?/[a-z0-9-]+", c.id), c.id
    # A capability-free MUST check can never be skipped.
    welcome = Welcome((1, 1), "r", "1", "python", "3", 1, 65536, capabilities=("exec",))
    for c in checks:
        if c.level == MUST and not c.needs and not c.absent and c.since <= (1, 1):
            assert skip_reason(c, welcome) == ""


def test_skip_reasons_name_the_capability_and_the_version() -> None:
    check = next(c for c in all_checks() if c.id == "6.5/fd-writes")
    welcome = Welcome((1, 1), "r", "1", "python", "3", 1, 65536, capabilities=("exec",))
    assert "'fd-capture'" in skip_reason(check, welcome)
    old = Welcome((1, 0), "r", "1", "python", "3", 1, 65536, capabilities=("exec",))
    filename = next(c for c in all_checks() if c.id == "6.4/filename")
    assert "protocol 1.0" in skip_reason(filename, old)
    assert skip_reason(check, None) == ""  # nothing known: it runs


def test_select_by_part_glob_and_refusal() -> None:
    assert {c.id for c in select(["6.7/cancel-s"])} == {"6.7/cancel-sleep"}
    assert all(c.id.startswith("6.5/eval") for c in select(["6.5/eval-*"]))
    assert len(select(["CANCEL-TIGHT"])) == 1
    assert len(select([])) == len(all_checks())
    with pytest.raises(ValueError, match="no check matches 'zzz'"):
        select(["6.7", "zzz"])


# -- reading the shape of a body ---------------------------------------------------------


def test_shape_finds_duplicates_order_and_depth() -> None:
    body = raw_map([("op", 1), ("kind", "x"), ("op", 2), ("v", [[{"a": 1, "a": 2}]])])  # noqa: F601
    shape = read_shape(body)
    assert shape.keys == ["op", "kind", "op", "v"]
    assert (1, "op") in shape.duplicates
    assert shape.depth == 4


def test_shape_finds_long_encodings() -> None:
    body = b"\x82\xa4kind\xa4ping\xa5token\xcd\x00\x07"  # uint16 for 7
    assert read_shape(body).long_encodings == [(17, "uint 16 for the value 7")]
    assert read_shape(b"\xd9\x03abc").long_encodings == [(0, "str 8 header for a length of 3")]
    assert read_shape(b"\xdc\x00\x01\xc0").long_encodings == [
        (0, "array 16 header for a length of 1")
    ]
    assert read_shape(b"\xd0\x05").long_encodings  # int8 for a positive value


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=5), inner, max_size=20)
    ),
    max_leaves=60,
)


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


@given(values)
def test_shape_of_what_msgpack_writes(value: object) -> None:
    """msgpack's encoder writes shortest forms and no duplicate keys: the walk agrees, and
    measures the nesting as the value has it."""
    shape = read_shape(msgpack.packb(value, use_bin_type=True))
    assert shape.long_encodings == []
    assert shape.duplicates == []
    assert shape.depth == _depth(value)
    if isinstance(value, dict):
        assert shape.keys == list(value)


# -- the peer's rules, over an in-memory stream ----------------------------------------------


class _FakeProcess:
    """Enough of trio.Process for Peer's reading and writing."""

    def __init__(self, stdin: trio.abc.SendStream, stdout: trio.abc.ReceiveStream) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = None
        self.returncode: int | None = None
        self.pid = 0


def _peer() -> tuple[Peer, trio.abc.SendStream, trio.abc.ReceiveStream]:
    to_peer_send, to_peer_recv = trio.testing.memory_stream_one_way_pair()
    from_peer_send, from_peer_recv = trio.testing.memory_stream_one_way_pair()
    peer = Peer(["runner"], FrameLog(), "")
    peer.process = _FakeProcess(from_peer_send, to_peer_recv)  # type: ignore[assignment]
    return peer, to_peer_send, from_peer_recv


def _frame(value: object) -> bytes:
    return raw_frame(msgpack.packb(value, use_bin_type=True))


WELCOME = {
    "kind": "welcome",
    "version": [1, 1],
    "impl_name": "r",
    "impl_version": "1",
    "language": "python",
    "language_version": "3",
    "pid": 1,
    "max_frame": 65536,
}


async def _opened(peer: Peer, runner: trio.abc.SendStream) -> None:
    await peer.hello(max_frame=65536)
    await runner.send_all(_frame(WELCOME))
    assert (await peer.receive()).KIND == "welcome"  # type: ignore[union-attr]


BREACHES = [
    (_frame({"kind": "done", "op": 9, "status": "ok"}), "7:"),  # an op never opened
    # (what the runner sends after the welcome, the rule the kit cites)
    (_frame({"kind": "pong", "token": 5}), "7:"),  # no ping carried 5
    (_frame({"kind": "output", "op": 1, "stream": "stdout", "data": b"x"}), "7:"),  # no op 1
    (_frame({"kind": "output", "op": 1, "stream": "stdout", "data": b""}), "4.1:"),  # empty data
    (_frame({"kind": "exec", "op": 1, "code": "x"}), "7:"),  # a client's message
    (_frame({"kind": "x_new", "a": 1}), "12:"),
    (_frame([1, 2]), "4.1:"),
    (raw_frame(raw_map([("kind", "pong"), ("token", 1), ("token", 1)])), "3.2:"),
    (raw_frame(raw_map([(1, 2), ("kind", "pong")])), "3.1:"),  # the decoder refuses int keys
    (raw_frame(b"\xc1"), "3.1:"),
    (b"\x00\x00\x00\x00", "3.1:"),
    ((70000).to_bytes(4, "big"), "3.3:"),
    (b"\x00\x00\x00\x09\x81", "3.1:"),  # the stream ends inside the body
    # Nests past what a sender may (600 levels), though a receiver accepts it.
    (
        raw_frame(raw_map([("kind", "pong"), ("token", 1), ("x", Raw(b"\x91" * 600 + b"\xc0"))])),
        "3.2:",
    ),
]


@pytest.mark.parametrize(("data", "rule"), BREACHES)
async def test_every_frame_is_held_to_the_rules(data: bytes, rule: str) -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await runner.send_all(data)
    await runner.aclose()
    with pytest.raises(CheckFailed) as info:
        await peer.receive()
    assert info.value.rule is not None and info.value.rule.startswith(rule), info.value.rule


async def test_op_model_done_once_nothing_after_and_input_only_when_allowed() -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await peer.send({"kind": "exec", "op": 1, "code": "x"})
    await runner.send_all(_frame({"kind": "input_request", "op": 1}))
    with pytest.raises(CheckFailed, match="did not allow stdin"):
        await peer.receive()

    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await peer.send({"kind": "exec", "op": 1, "code": "x"})
    await runner.send_all(_frame({"kind": "done", "op": 1, "status": "ok"}))
    assert (await peer.receive()).KIND == "done"  # type: ignore[union-attr]
    await runner.send_all(_frame({"kind": "done", "op": 1, "status": "ok"}))
    with pytest.raises(CheckFailed, match="after its done"):
        await peer.receive()


async def test_nothing_after_a_fatal_error_and_nothing_before_hello() -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await runner.send_all(
        _frame({"kind": "error", "code": "internal", "message": "m", "fatal": True})
    )
    assert (await peer.receive()).KIND == "error"  # type: ignore[union-attr]
    await runner.send_all(_frame({"kind": "pong", "token": 1}))
    with pytest.raises(CheckFailed, match="after its fatal error"):
        await peer.receive()

    peer, runner, _client = _peer()
    await runner.send_all(_frame(WELCOME))
    with pytest.raises(CheckFailed, match="before the kit sent hello"):
        await peer.receive()


async def test_should_level_encodings_are_noted_not_failed() -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await peer.send({"kind": "ping", "token": 7})
    await runner.send_all(raw_frame(b"\x82\xa5token\x07\xa4kind\xa4pong"))  # kind second
    await runner.send_all(raw_frame(b"\x82\xa4kind\xa4pong\xa5token\xcc\x07"))  # uint8 for 7
    assert (await peer.receive()).KIND == "pong"  # type: ignore[union-attr]
    await peer.send({"kind": "ping", "token": 7})
    with pytest.raises(CheckFailed):  # the same token twice is a breach
        await peer.receive()
    assert any(n.startswith("4.1 (SHOULD)") for n in peer.notes)
    assert any(n.startswith("3.2 (SHOULD)") for n in peer.notes)


# -- reports and the command line -----------------------------------------------------------


def _report_of(*outcomes: tuple[str, str], strict: bool = False) -> Report:
    by_id = {c.id: c for c in all_checks()}
    results = []
    for ident, outcome in outcomes:
        if outcome == FAIL:
            results.append(
                CheckResult(
                    by_id[ident],
                    FAIL,
                    reason="expected a; got b",
                    rule="6.7: words",
                    expected="a",
                    got="b",
                    frames=("0.000 C hello",),
                    runners=("runner #1 exited with code 0",),
                )
            )
        elif outcome == SKIP:
            results.append(CheckResult(by_id[ident], SKIP, reason="no 'stdin'"))
        else:
            results.append(CheckResult(by_id[ident], PASS))
    welcome = Welcome((1, 1), "r", "1", "python", "3", 1, 65536, capabilities=("exec",))
    return Report(("runner", "--stdio"), welcome, "", tuple(results), strict, 1.0)


def test_should_failures_count_only_when_strict() -> None:
    outcomes = [("6.5/streaming", FAIL), ("6.7/cancel-sleep", PASS), ("4.2/password-flag", SKIP)]
    assert next(c for c in all_checks() if c.id == "6.5/streaming").level == SHOULD
    assert _report_of(*outcomes).passed
    assert not _report_of(*outcomes, strict=True).passed
    assert not _report_of(("6.7/cancel-sleep", FAIL)).passed


def test_text_json_and_junit_reports() -> None:
    report = _report_of(
        ("6.7/cancel-sleep", FAIL), ("6.5/streaming", FAIL), ("4.2/password-flag", SKIP)
    )
    text = _report.text(report)
    assert (
        "requirement: 6.7: words" in text and "expected:    a" in text and "got:         b" in text
    )
    assert "0.000 C hello" in text and "FAIL: a MUST check failed" in text
    assert "skipped: no 'stdin'" in text
    data = json.loads(_report.to_json(report))
    assert data["passed"] is False
    assert [c["outcome"] for c in data["checks"]] == [FAIL, FAIL, SKIP]
    assert [c["counts"] for c in data["checks"]] == [True, False, False]
    suite = ElementTree.fromstring(_report.to_junit(report))
    assert suite.get("failures") == "1" and suite.get("skipped") == "2"
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is not None
    assert "counted with --strict" in (cases[1].find("skipped").get("message") or "")  # type: ignore[union-attr]


def test_progress_line_rewrites_itself() -> None:
    import io

    from execpy_trio.conformance._cli import _Progress

    out = io.StringIO()
    progress = _Progress(out)
    by_id = {c.id: c for c in all_checks()}
    progress(1, 2, CheckResult(by_id["6.7/cancel-sleep"], FAIL))
    progress(2, 2, CheckResult(by_id["6.8/ping-idle"], PASS))
    progress.clear()
    text = out.getvalue()
    assert "\r[  1/2] 1 failed; last: 6.7/cancel-sleep fail" in text
    assert "[  2/2] 1 failed; last: 6.8/ping-idle pass" in text
    assert text.endswith("\r") and "\n" not in text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "execpy_trio.conformance", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_list_and_usage_errors() -> None:
    p = _cli("--list")
    assert p.returncode == 0 and f"{len(all_checks())} checks" in p.stdout
    listed = json.loads(_cli("--list", "--json", "-k", "6.8").stdout)
    assert {c["id"] for c in listed} == {"6.8/ping-idle", "6.8/ping-busy"}
    for args, message in (
        ((), "give the runner command after --"),
        (("-k", "zzz", "--", "x"), "no check matches 'zzz'"),
        (("--", "/no/such/runner"), "cannot run '/no/such/runner'"),
        (("--timeout", "0", "--", sys.executable), "--timeout must be positive"),
    ):
        p = _cli(*args)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)


@pytest.mark.parametrize(
    ("done", "rule"),
    [
        (
            {
                "kind": "done",
                "op": 1,
                "status": "error",
                "value": "junk",
                "error": {"type": "E", "message": "", "traceback": ""},
            },
            "4.2:",
        ),
        ({"kind": "done", "op": 1, "status": "cancelled", "value": 1}, "4.2:"),
        ({"kind": "done", "op": 1, "status": "ok", "value": ["2.01"]}, "4.2:"),  # exec: a str
    ],
)
async def test_done_values_are_held_to_the_table(done: dict[str, object], rule: str) -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await peer.send({"kind": "exec", "op": 1, "code": "x"})
    await runner.send_all(_frame(done))
    with pytest.raises(CheckFailed) as info:
        await peer.receive()
    assert info.value.rule is not None and info.value.rule.startswith(rule)


async def test_an_eval_value_may_be_any_data() -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await peer.send({"kind": "eval", "op": 1, "expr": "x"})
    await runner.send_all(_frame({"kind": "done", "op": 1, "status": "ok", "value": [1, b"2"]}))
    assert (await peer.receive()).value == [1, b"2"]  # type: ignore[union-attr]


async def test_a_notice_before_the_welcome_is_a_breach() -> None:
    peer, runner, _client = _peer()
    await peer.hello(max_frame=65536)
    await runner.send_all(_frame({"kind": "error", "code": "x-note", "message": "hi"}))
    with pytest.raises(CheckFailed, match="before the welcome"):
        await peer.receive()


async def test_late_output_is_caught_after_the_check() -> None:
    """What a runner sends after a check's last read is held to the rules too."""
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    await peer.send({"kind": "exec", "op": 1, "code": "x"})
    await runner.send_all(_frame({"kind": "done", "op": 1, "status": "ok"}))
    assert (await peer.receive()).KIND == "done"  # type: ignore[union-attr]
    await runner.send_all(_frame({"kind": "output", "op": 1, "stream": "stderr", "data": b"l"}))
    await runner.aclose()
    with pytest.raises(CheckFailed, match="after its done"):
        await peer.drain()


async def test_a_barrier_reads_past_a_bounded_number_of_messages() -> None:
    peer, runner, _client = _peer()
    await _opened(peer, runner)
    notice = _frame({"kind": "error", "code": "x-note", "message": "again"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.send_all, notice * 200)
        with pytest.raises(CheckFailed, match="more than 100 other messages"):
            await peer.barrier()
