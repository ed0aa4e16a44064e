"""Package-level contracts: the public names, and what the runner's start-up imports."""

from __future__ import annotations

import subprocess
import sys

import execpy_trio

# The names tests outside this repository use (../shared/DESIGN.md, section 3).
CONTRACT_NAMES = [
    "open_runner",
    "Runner",
    "Operation",
    "ExecResult",
    "ErrorInfo",
    "Output",
    "InputRequest",
    "ExecpyError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RunnerDied",
    "RunnerStartError",
    "CodeError",
]


def test_contract_names_are_exported() -> None:
    missing = [name for name in CONTRACT_NAMES if not hasattr(execpy_trio, name)]
    assert missing == []
    assert set(CONTRACT_NAMES) <= set(execpy_trio.__all__)
    assert set(CONTRACT_NAMES) <= set(dir(execpy_trio))


def test_errors_form_one_hierarchy() -> None:
    ex = execpy_trio
    for name in ["ProtocolError", "RunnerDied", "RunnerStartError", "CodeError"]:
        assert issubclass(getattr(ex, name), ex.ExecpyError), name
    assert issubclass(ex.LocalProtocolError, ex.ProtocolError)
    assert issubclass(ex.RemoteProtocolError, ex.ProtocolError)


def test_unknown_attribute_is_a_clear_attribute_error() -> None:
    try:
        execpy_trio.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_runner_start_up_imports_neither_trio_nor_attrs() -> None:
    # The runner's start-up time is part of the contract: importing Trio costs ~110 ms.
    code = (
        "import sys, runpy\n"
        "import execpy_trio.runner._main, execpy_trio.protocol\n"
        "bad = sorted(m for m in ('trio', 'attr', 'attrs', 'typing', 'logging', 'asyncio')"
        " if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == ""
