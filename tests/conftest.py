"""Shared test set-up: hypothesis profiles and the leak check every test runs under."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from runner_client import RunnerClient

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used, already closed
        # epoll/eventfd/signalfd belong to trio's run loop and the interpreter, not to us.
        if "anon_inode" in target:
            continue
        fds.add(fd)
    return fds


def _child_pids() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return pids


def _children_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


def _fork_server_templates() -> tuple[set[int], set[int]]:
    """The shared fork-server launcher's templates (if it was ever made) and their fds."""
    from execpy_trio.launch import _forkserver

    launcher = _forkserver._shared
    pids: set[int] = set()
    fds: set[int] = set()
    if launcher is not None:
        for server in list(launcher.servers.values()):
            if server.template_pid is not None:
                pids.add(server.template_pid)
            sock = server._sock
            if sock is not None:
                fds.add(sock.fileno())
    return pids, fds


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves child processes or file descriptors behind.

    Waits up to 5 s for them to go, since a runner exits asynchronously after its client
    closes the channel; the bound keeps a real leak from hanging the suite.
    """
    fds_before = _open_fds()
    kids_before = _child_pids()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + 5
    while True:
        templates, template_fds = _fork_server_templates()
        new_kids = {p for p in _child_pids() - kids_before if not _zombie_or_gone(p)}
        # The shared fork server's template lives for the whole process, on purpose; the
        # runners it forked must be gone like any other.
        new_kids -= templates
        for template in templates:
            new_kids |= {p for p in _children_of(template) if not _zombie_or_gone(p)}
        new_fds = _open_fds() - fds_before - template_fds
        if not new_kids and not new_fds:
            return
        if time.monotonic() > deadline:
            details = {fd: _describe_fd(fd) for fd in sorted(new_fds)}
            pytest.fail(f"test leaked child processes {sorted(new_kids)} / fds {details}")
        time.sleep(0.02)


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture
def client() -> Iterator[RunnerClient]:
    """A real runner (``--fd`` mode) behind the synchronous test client, closed after."""
    c = RunnerClient()
    try:
        yield c
    finally:
        c.close()
