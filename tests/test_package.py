"""Package-level contracts: the public names, what the runner imports, no dead code."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import execpy_trio
import execpy_trio.protocol
import execpy_trio.runner
from runner_client import RunnerClient

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


# --- what the runner imports ---------------------------------------------------------------

# The runner's start-up time is part of the contract: importing Trio costs ~110 ms, attrs,
# typing and logging several ms each. The runner and the protocol package it uses must
# import none of these, nor the client half of execpy_trio (which imports Trio).
FORBIDDEN = (
    "trio",
    "outcome",
    "sniffio",
    "sortedcontainers",
    "idna",
    "exceptiongroup",
    "attr",
    "attrs",
    "typing",
    "typing_extensions",
    "asyncio",
    "logging",
    "enum",  # what `import signal` costs: the runner uses _signal to avoid it
)
#: The parts of execpy_trio the runner may import (the package __init__ is lazy).
RUNNER_SIDE = ("execpy_trio.runner", "execpy_trio.protocol")

# Runs in the process under test, so it imports nothing itself (json would bring re, enum).
BAD_MODULES = f"""
def bad_modules(modules):
    forbidden = {FORBIDDEN!r}
    runner_side = {RUNNER_SIDE!r}
    out = []
    for name in sorted(modules):
        top = name.partition(".")[0]
        if top in forbidden:
            out.append(top)
        elif top == "execpy_trio" and name != "execpy_trio":
            if not any(name == s or name.startswith(s + ".") for s in runner_side):
                out.append(name)  # the client half: it imports trio
    return sorted(set(out))
"""


def _interpreter_baseline() -> set[str]:
    """What a bare interpreter of this environment imports (site, .pth files): not ours."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(ast.literal_eval(out.stdout))


def _ours(bad: list[str]) -> list[str]:
    baseline = _interpreter_baseline()
    return [m for m in bad if m not in baseline]


def runner_and_protocol_modules() -> list[str]:
    """Every module of execpy_trio.runner and execpy_trio.protocol, packages included."""
    names = []
    for package in (execpy_trio.runner, execpy_trio.protocol):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def test_the_module_list_is_complete() -> None:
    names = runner_and_protocol_modules()
    src = Path(execpy_trio.__file__).parent
    on_disk = {
        ".".join(("execpy_trio", *p.relative_to(src).with_suffix("").parts))
        for sub in ("runner", "protocol")
        for p in (src / sub).rglob("*.py")
    }
    on_disk = {n.removesuffix(".__init__") for n in on_disk}
    assert set(names) == on_disk
    assert "execpy_trio.runner._input" in names and "execpy_trio.runner.__main__" in names


def test_every_runner_and_protocol_module_imports_nothing_heavy() -> None:
    # In a fresh interpreter, import each module (the lazily loaded ones too: _capture,
    # _execute, _hooks, _input are imported only when a Runner is built).
    names = runner_and_protocol_modules()
    code = (
        f"import importlib, sys\n{BAD_MODULES}\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(repr((bad_modules(sys.modules), sorted(sys.modules))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    bad, loaded = ast.literal_eval(out.stdout)
    assert set(names) <= set(loaded)
    assert _ours(bad) == []


@pytest.mark.parametrize("stdio", [False, True], ids=["fd", "stdio"])
def test_a_real_runner_imports_nothing_heavy(stdio: bool) -> None:
    # The whole start-up path of `python -m execpy_trio.runner` (runpy, argument parsing,
    # the Runner with capture, input, executor and import hooks, its threads, the
    # handshake) and then ordinary ops: output, canned input, a value, an eval.
    with RunnerClient(stdio=stdio) as client:
        for code, fields in [
            ("print('out')", {}),
            ("import sys\nprint('err', file=sys.stderr)", {}),
            ("name = input('? ')", {"stdin": "x\n"}),
            ("n = 6 * 7\nn", {}),
        ]:
            assert client.exec(code, **fields).status == "ok"
        assert client.eval("n").value == 42
        r = client.exec(f"import sys\n{BAD_MODULES}\nbad_modules(sys.modules)")
        assert r.status == "ok", r.error
        loaded = client.eval("sorted(sys.modules)").value
    assert "execpy_trio.runner._input" in loaded  # the lazily imported parts were loaded
    assert _ours(ast.literal_eval(r.value)) == []


# --- no dead code in the runner -------------------------------------------------------------

#: Methods that are called by the standard library, not by us: ``sys.meta_path`` finders
#: and the ``io.TextIOBase`` interface of ``sys.stdin``.
INTERFACE_METHODS = {"find_spec", "create_module", "exec_module", "readable", "isatty", "fileno"}


def test_runner_has_no_unreferenced_functions_methods_or_attributes() -> None:
    # A cheap vulture: every function, method and ``self.x`` attribute defined in
    # execpy_trio/runner must be used somewhere in the runner or protocol sources (tests
    # do not count: code kept only for them is dead code in the runner).
    src = Path(execpy_trio.__file__).parent
    runner_files = sorted((src / "runner").glob("*.py"))
    names: set[str] = set()  # loaded as a name, or imported
    attributes: set[str] = set()  # loaded as an attribute
    for path in runner_files + sorted((src / "protocol").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                attributes.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add(node.name.rpartition(".")[2])
    unused = []
    for path in runner_files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for top in tree.body:
            where = f"{path.name}:{top.lineno}"
            if isinstance(top, (ast.FunctionDef, ast.ClassDef)):
                if top.name not in names | attributes:
                    unused.append(f"{where} {top.name}")
            if not isinstance(top, ast.ClassDef):
                continue
            for node in ast.walk(top):
                if isinstance(node, ast.FunctionDef):
                    dunder = node.name.startswith("__") and node.name.endswith("__")
                    if not dunder and node.name not in INTERFACE_METHODS:
                        if node.name not in names | attributes:
                            unused.append(f"{path.name}:{node.lineno} {top.name}.{node.name}")
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        for sub in ast.walk(target):
                            if (
                                isinstance(sub, ast.Attribute)
                                and isinstance(sub.value, ast.Name)
                                and sub.value.id == "self"
                                and sub.attr not in attributes
                            ):
                                unused.append(f"{path.name}:{node.lineno} {top.name}.{sub.attr}")
    assert unused == []
