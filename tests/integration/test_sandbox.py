"""The sandbox launcher (bubblewrap) with real runners: what the code can and cannot reach."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import trio

import execpy_trio as ex

HANG = 30


def _bwrap_problem() -> str | None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed (make test installs it when run as root)"
    probe = subprocess.run(
        [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--die-with-parent", "true"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here: {probe.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif((problem := _bwrap_problem()) is not None, reason=str(problem))


async def test_no_network_not_even_to_the_hosts_loopback() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        async with ex.open_runner(sandbox=ex.Sandbox()) as runner:
            with trio.fail_after(HANG):
                r = await runner.exec(
                    "import socket\ns = socket.socket()\ns.settimeout(2)\n"
                    f"s.connect(('127.0.0.1', {port}))"
                )
        assert r.status == "error" and r.error is not None
        assert r.error.type in ("ConnectionRefusedError", "OSError", "TimeoutError"), r.error


async def test_the_filesystem_is_read_only_but_for_the_workdir_and_tmp(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with ex.open_runner(sandbox=ex.Sandbox(workdir=workdir)) as runner:
        with trio.fail_after(HANG):
            assert await runner.eval("__import__('os').getcwd()") == str(workdir)
            r = await runner.exec("open('result.txt', 'w').write('graded')")
            assert r.ok, r
            r = await runner.exec(
                "open('/tmp/scratch', 'w').write('x')\nopen('/tmp/scratch').read()"
            )
            assert r.value == "'x'", r
            for path in ("/usr/evil", "/etc/evil", str(Path(ex.__file__).parent / "evil")):
                r = await runner.exec(f"open({path!r}, 'w')")
                assert r.status == "error" and r.error is not None, (path, r)
                assert r.error.type in ("OSError", "FileNotFoundError", "PermissionError"), r
            # A host path beside the workdir is at most a directory of the private /tmp:
            # what is written there never reaches the host.
            await runner.exec(f"open({str(tmp_path / 'outside')!r}, 'w').write('x')")
            # The package itself is visible, read-only.
            r = await runner.exec(f"open({ex.__file__!r}, 'a')")
            assert r.status == "error" and r.error is not None and "Read-only" in r.error.message
    assert (workdir / "result.txt").read_text() == "graded"
    assert not (tmp_path / "outside").exists()


async def test_the_hosts_home_and_secrets_are_not_visible() -> None:
    marker = Path.home() / f"execpy-sandbox-marker-{uuid.uuid4().hex}"
    marker.write_text("secret")
    try:
        async with ex.open_runner(sandbox=ex.Sandbox()) as runner:
            with trio.fail_after(HANG):
                assert await runner.eval(f"__import__('os').path.exists({str(marker)!r})") is False
                assert await runner.eval("__import__('os').path.exists('/etc/shadow')") is False
                assert await runner.eval("__import__('os').getuid()") == 65534
                # Its own PID namespace: the host's processes are not there.
                pids = await runner.eval(
                    "[int(p) for p in __import__('os').listdir('/proc') if p.isdigit()]"
                )
                assert os.getpid() not in pids and len(pids) < 10, pids
    finally:
        marker.unlink()


async def test_limits_interrupt_and_output_still_work() -> None:
    limits = ex.Limits(output_bytes=5000, cpu_seconds=1.0, memory=1 << 30)
    async with ex.open_runner(sandbox=ex.Sandbox(), limits=limits) as runner:
        with trio.fail_after(HANG):
            async with runner.exec_stream("print('streamed')\nprint(input('q? '))") as op:
                async for event in op:
                    if isinstance(event, ex.InputRequest):
                        await op.send_input("answer")
            assert op.result.stdout == "streamed\nanswer\n"
            with trio.move_on_after(0.3):
                await runner.exec("import time\ntime.sleep(100)")
            r = await runner.exec("print('x' * 10_000)")
            assert r.error is not None and r.error.type == "OutputLimitExceeded"
            r = await runner.exec("while True:\n    pass")
            assert r.error is not None and r.error.type == "CPULimitExceeded"
            r = await runner.exec("bytearray(10**10)")
            assert r.error is not None and r.error.type == "MemoryError"
            assert (await runner.exec("print('still fine')")).stdout == "still fine\n"


async def test_its_temporary_workdir_is_removed_and_nothing_is_left_running() -> None:
    import psutil

    async with ex.open_runner(sandbox=ex.Sandbox()) as runner:
        workdir = await runner.eval("__import__('os').getcwd()")
        assert os.path.isdir(workdir)  # noqa: ASYNC240
        host_pid = runner.handle.pid
        tree = [host_pid, *[c.pid for c in psutil.Process(host_pid).children(recursive=True)]]
    assert not os.path.exists(workdir)  # noqa: ASYNC240

    def running(pid: int) -> bool:  # a zombie waits for its new parent (init) to reap it
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    with trio.move_on_after(5):
        while any(running(p) for p in tree):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert not any(running(p) for p in tree), tree


async def test_a_missing_bwrap_is_a_clear_start_error() -> None:
    with pytest.raises(ex.RunnerStartError, match="apt-get install bubblewrap"):
        async with ex.open_runner(sandbox=ex.Sandbox(bwrap="no-such-bwrap-here")):
            pass


async def test_only_the_given_environment_and_not_the_rest_of_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's script directory (or current directory) is on its sys.path: a home
    # directory, say. It must not become visible in the sandbox.
    (tmp_path / "answers.txt").write_text("secret")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GRADER_TOKEN", "hunter2")
    sandbox = ex.Sandbox()
    async with ex.open_runner(sandbox=sandbox, env={"MINE": "1"}) as runner:
        with trio.fail_after(HANG):
            seen = await runner.eval("dict(__import__('os').environ)")
            visible = await runner.eval(
                f"__import__('os').path.exists({str(tmp_path / 'answers.txt')!r})"
            )
    assert visible is False
    assert seen["MINE"] == "1" and "GRADER_TOKEN" not in seen, seen
    allowed = {"MINE", "PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH", "PWD", "LC_CTYPE"}
    assert set(seen) <= allowed, seen


async def test_a_sandboxed_runner_lives_on_after_the_thread_that_started_it_is_gone() -> None:
    # Trio starts processes from worker threads that exit after 10 s idle; a sandbox tied
    # to that thread's life (PR_SET_PDEATHSIG) was killed then.
    async with ex.open_runner(sandbox=ex.Sandbox()) as runner:
        assert (await runner.exec("print(1)")).stdout == "1\n"
        await trio.sleep(11)
        with trio.fail_after(HANG):
            assert (await runner.exec("print(2)")).stdout == "2\n"


async def test_runner_pid_is_this_hosts_pid_of_the_sandboxed_runner() -> None:
    import psutil

    async with ex.open_runner(sandbox=ex.Sandbox()) as runner:
        assert runner.welcome.pid != runner.pid  # the namespace's own numbering
        cmdline = psutil.Process(runner.pid).cmdline()
        assert "execpy_trio.runner" in cmdline, cmdline
        # What user code sees as its pid maps to the same process.
        assert await runner.eval("__import__('os').getpid()") == runner.welcome.pid
        assert runner.statistics().pid == runner.pid
        with pytest.raises(ex.RunnerDied) as info:
            await runner.exec("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        assert f"pid {runner.pid}" in str(info.value)
