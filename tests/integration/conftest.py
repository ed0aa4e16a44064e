"""The runner contract, once per launcher: every integration test that lets
``open_runner``/``start_runner`` choose the launcher runs with a spawned runner and with
one forked by the fork server (where the options allow a fork; otherwise it is spawned
both times)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from execpy_trio import _open
from execpy_trio.launch import LocalLauncher
from execpy_trio.launch._forkserver import can_fork, shared_launcher

#: Files whose tests are about one launcher only: not run twice.
ONE_LAUNCHER = {"test_sandbox.py", "test_manager_runner.py"}


@pytest.fixture(autouse=True, params=["spawn", "fork"])
def launcher_kind(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    kind: str = request.param
    if kind == "fork":
        if request.node.path.name in ONE_LAUNCHER:
            pytest.skip("a test of one launcher: run once, with its own")
        monkeypatch.setattr(
            _open,
            "default_launcher",
            lambda options: shared_launcher() if can_fork(options) else LocalLauncher(),
        )
    yield kind
