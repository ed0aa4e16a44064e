"""The runner contract, once per launcher: every integration test that lets
``open_runner``/``start_runner`` choose the launcher runs with a spawned runner and with
one forked by the fork server (where the options allow a fork; otherwise it is spawned
both times)."""

from __future__ import annotations

import pytest

from execpy_trio import _open
from execpy_trio.launch import LocalLauncher
from execpy_trio.launch._forkserver import can_fork, shared_launcher

#: Files whose tests are about one launcher: run once, with the launcher they choose.
ONE_LAUNCHER = {
    "test_sandbox.py",
    "test_manager_runner.py",
    "test_forkserver.py",
    "test_conformance_runner.py",  # stdio commands, no launcher
    "test_pytest_plugin.py",  # its own pytest runs
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.path.name not in ONE_LAUNCHER:
        metafunc.parametrize("launcher_kind", ["spawn", "fork"], indirect=True)


@pytest.fixture(autouse=True)
def launcher_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    kind: str = getattr(request, "param", "spawn")
    if kind == "fork":
        monkeypatch.setattr(
            _open,
            "default_launcher",
            lambda options: shared_launcher() if can_fork(options) else LocalLauncher(),
        )
    return kind
