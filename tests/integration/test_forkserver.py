"""The fork server: what is particular to forked runners (the rest of the runner contract
runs against them through the whole integration suite, see conftest.py)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import execpy_trio as ex
from execpy_trio.launch import ForkServerLauncher

BOUND = 60


@pytest.fixture
def launcher() -> Iterator[ForkServerLauncher]:
    fork = ForkServerLauncher()
    yield fork
    fork.close()


@pytest.mark.trio
async def test_a_forked_runner_killed_with_sigkill_is_reported_with_its_signal(
    launcher: ForkServerLauncher,
) -> None:
    with trio.fail_after(BOUND):
        async with ex.open_runner(launcher=launcher) as runner:
            with pytest.raises(ex.RunnerDied) as info:
                await runner.exec("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert info.value.signal == signal.SIGKILL and info.value.returncode == -signal.SIGKILL


@pytest.mark.trio
async def test_a_killed_template_ends_its_runners_and_the_next_request_gets_a_new_one(
    launcher: ForkServerLauncher,
) -> None:
    with trio.fail_after(BOUND):
        async with ex.open_runner(launcher=launcher) as first:
            (server,) = launcher.servers.values()
            template = server.template_pid
            assert template is not None
            os.kill(template, signal.SIGKILL)
            with trio.fail_after(10):
                await first.wait_closed()  # it watched its parent: gone with it
            with pytest.raises(ex.RunnerDied, match="the fork server's template ended"):
                await first.exec("1")
        async with ex.open_runner(launcher=launcher) as second:
            assert (await second.exec("1 + 1")).value == "2"
        assert server.templates_started == 2 and server.template_pid != template


@pytest.mark.trio
async def test_a_preload_that_starts_a_thread_is_refused(
    launcher: ForkServerLauncher, tmp_path: Path
) -> None:
    (tmp_path / "threaded_mod.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    with trio.fail_after(BOUND), pytest.raises(ex.RunnerStartError) as info:
        async with ex.open_runner(launcher=launcher, preload=("threaded_mod",), env=env):
            pass
    assert "started a thread" in str(info.value) and "unsafe" in str(info.value)
    assert info.value.retryable is False


@pytest.mark.trio
async def test_two_fresh_runners_draw_different_random_numbers(
    launcher: ForkServerLauncher,
) -> None:
    values = []
    for _ in range(2):
        async with ex.open_runner(launcher=launcher) as runner:
            values.append(await runner.eval("__import__('random').random()"))
    assert values[0] != values[1]


@pytest.mark.trio
async def test_env_cwd_and_descriptors_are_the_requests(
    launcher: ForkServerLauncher, tmp_path: Path
) -> None:
    code = (
        "import os, sys\n"
        "links = [os.readlink(f'/proc/self/fd/{fd}') for fd in os.listdir('/proc/self/fd')"
        " if os.path.exists(f'/proc/self/fd/{fd}')]\n"
        "sockets = [link for link in links if link.startswith('socket:')]\n"
    )
    async with ex.open_runner(
        launcher=launcher, env={"ONLY": "this"}, inherit_env=False, cwd=tmp_path
    ) as runner:
        await runner.exec(code)
        only, home, cwd, path0, sockets = await runner.eval(
            "[os.environ.get('ONLY'), os.environ.get('HOME'), os.getcwd(), sys.path[0],"
            " len(sockets)]"
        )
    assert (only, home) == ("this", None)  # nothing of ours, nor of the template's
    assert cwd == str(tmp_path) and path0 == str(tmp_path)
    assert sockets == 1  # its channel; the template's control socket is not inherited


@pytest.mark.trio
async def test_a_thousand_fresh_runners_leave_nothing_behind(
    launcher: ForkServerLauncher,
) -> None:
    # The leak check (conftest) then finds no process, zombie or descriptor left.
    with trio.fail_after(BOUND * 3):
        async with ex.open_manager(size=2, fresh_spares=2, launcher=launcher) as m:
            async with trio.open_nursery() as nursery:
                for _ in range(4):

                    async def calls() -> None:
                        for _ in range(250):
                            assert (await m.exec("x = 1", fresh=True)).status == "ok"

                    nursery.start_soon(calls)
            s = m.statistics()
        assert s.discarded == 1000 and s.crashed == 0
    (server,) = launcher.servers.values()
    assert server.template_pid is not None
    children = Path(f"/proc/{server.template_pid}/task/{server.template_pid}/children")
    reaped = children.read_text().split() == []  # noqa: ASYNC240 - a /proc file: instant
    assert reaped  # every runner it forked was reaped


def test_one_fork_server_serves_successive_trio_runs() -> None:
    launcher = ForkServerLauncher()
    try:
        pids = []

        async def once() -> None:
            async with ex.open_runner(launcher=launcher) as runner:
                pids.append(await runner.eval("__import__('os').getppid()"))

        trio.run(once)
        trio.run(once)
        assert pids[0] == pids[1]  # the same template forked both
    finally:
        launcher.close()


@pytest.mark.trio
async def test_nothing_of_one_request_is_visible_to_the_next(
    launcher: ForkServerLauncher,
) -> None:
    async with ex.open_runner(
        launcher=launcher, env={"TENANT_TOKEN": "secret-of-a"}, inherit_env=False
    ) as runner:
        assert await runner.eval("__import__('os').environ['TENANT_TOKEN']") == "secret-of-a"
    async with ex.open_runner(launcher=launcher, env={"LC_ALL": "C"}, inherit_env=False) as runner:
        await runner.exec("raw = open('/proc/self/environ', 'rb').read()")
        assert await runner.eval("b'secret-of-a' in raw") is False
        assert await runner.eval("b'TENANT_TOKEN' in raw") is False


FORKING_CLIENT = """
import os, sys, trio, execpy_trio as ex

async def once(tag):
    async with ex.open_manager(size=1, fresh_spares=0) as m:
        r = await m.exec("1 + 1", fresh=True)
        assert r.value == "2", r

trio.run(once, "parent")
pid = os.fork()
if pid == 0:
    try:
        trio.run(once, "child")  # a forked client starts fork servers of its own
    except BaseException as exc:
        print("child failed:", exc, file=sys.stderr)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
trio.run(once, "parent again")  # and the parent's still works
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.trio
async def test_a_client_that_forks_can_use_the_manager_in_both_processes() -> None:
    with trio.fail_after(BOUND):
        p = await trio.run_process(
            [sys.executable, "-c", FORKING_CLIENT], capture_stderr=True, check=False
        )
    assert p.returncode == 0, p.stderr.decode()


@pytest.mark.trio
async def test_a_missing_cwd_is_a_start_error_not_worth_retrying(
    launcher: ForkServerLauncher,
) -> None:
    with pytest.raises(ex.RunnerStartError, match="is not a directory") as info:
        async with ex.open_runner(launcher=launcher, cwd="/nonexistent/dir"):
            pass
    assert info.value.retryable is False
