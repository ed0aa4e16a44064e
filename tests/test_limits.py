"""Limits and preload on the client side: validation, the hello, and a runner that does not
apply them (a fake runner over memory streams)."""

from __future__ import annotations

import re
import sys

import pytest
import trio

import execpy_trio as ex
import execpy_trio.protocol as P
from execpy_trio._errors import raise_unwrapped

if sys.version_info < (3, 11):  # pragma: no cover - the venv runs 3.11
    from exceptiongroup import BaseExceptionGroup
from fake_runner import WELCOME, FakeRunner


def test_limits_validate_each_field() -> None:
    assert ex.Limits().to_wire() is None
    limits = ex.Limits(memory=2**30, cpu_seconds=1.5, open_files=64, output_bytes=10)
    assert limits.to_wire() == {
        "memory": 2**30,
        "cpu_seconds": 1.5,
        "open_files": 64,
        "output_bytes": 10,
    }
    for bad in ({"memory": 0}, {"memory": 2.5e9}, {"open_files": -1}, {"output_bytes": "1"}):
        with pytest.raises(ValueError, match="must be a positive int"):
            ex.Limits(**bad)
    with pytest.raises(ValueError, match="number of seconds from 0 to 1e6"):
        ex.Limits(cpu_seconds=0)
    with pytest.raises(TypeError, match=r"limits must be an execpy_trio\.Limits"):
        ex.RunnerOptions(limits={"memory": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="preload=\\('json',\\)"):
        ex.RunnerOptions(preload="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a module name"):
        ex.RunnerOptions(preload=("json", "not a module"))


async def _start_with(welcome: P.Welcome, seen: list[P.Hello], **options: object) -> None:
    client_stream, runner_stream = trio.testing.memory_stream_pair()
    fake = FakeRunner(runner_stream)

    async def script() -> None:
        seen.append(await fake.expect(P.Hello))
        await fake.send(welcome)
        await fake.serve_until_shutdown()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(script)
            try:
                async with ex.connect_runner(client_stream, **options):  # type: ignore[arg-type]
                    pass
            finally:
                with trio.CancelScope(shield=True):
                    await client_stream.aclose()
    except BaseExceptionGroup as group:  # the helper's nursery: the error is the client's
        raise_unwrapped(group)


async def test_limits_travel_in_the_hello_and_a_runner_without_them_fails_the_start() -> None:
    limits = ex.Limits(memory=2**30, output_bytes=100)
    seen: list[P.Hello] = []
    with pytest.raises(ex.RunnerStartError) as info:
        await _start_with(WELCOME, seen, limits=limits, handshake_timeout=5)
    assert seen[0].limits == {"memory": 2**30, "output_bytes": 100}
    message = str(info.value)
    assert "does not apply the limits asked for" in message
    assert "fake 0, protocol 1.0" in message and "it applies none" in message


def _welcome_1_1(capabilities: tuple[str, ...], limits: dict[str, float]) -> P.Welcome:
    return P.Welcome(
        (1, 1), "fake", "0", "python", "3.11", 1, P.DEFAULT_MAX_FRAME, capabilities, limits
    )


async def test_a_runner_that_applies_other_limits_fails_the_start() -> None:
    welcome = _welcome_1_1(("limits",), {"memory": 2**30})
    with pytest.raises(ex.RunnerStartError, match=re.escape("it applies {'memory': 1073741824}")):
        await _start_with(
            welcome, [], limits=ex.Limits(memory=2**30, cpu_seconds=1.0), handshake_timeout=5
        )


async def test_a_runner_that_applies_them_starts() -> None:
    welcome = _welcome_1_1(("limits", "preload"), {"cpu_seconds": 2.0})
    seen: list[P.Hello] = []
    await _start_with(
        welcome, seen, limits=ex.Limits(cpu_seconds=2.0), preload=("json",), handshake_timeout=5
    )
    assert seen[0].preload == ("json",)


async def test_preload_on_a_runner_without_it_fails_the_start() -> None:
    with pytest.raises(ex.RunnerStartError, match="cannot preload modules"):
        await _start_with(WELCOME, [], preload=("json",), handshake_timeout=5)


def test_limits_refuse_values_no_runner_could_use() -> None:
    with pytest.raises(ValueError, match="under 268435456 bytes"):
        ex.Limits(memory=1 << 20)
    with pytest.raises(ValueError, match="from 0 to 1e6"):
        ex.Limits(cpu_seconds=float("inf"))


def test_limits_refuse_ints_no_rlimit_can_carry() -> None:
    for field in ("memory", "open_files", "output_bytes"):
        with pytest.raises(ValueError, match="up to 2\\*\\*62"):
            ex.Limits(**{field: 2**63 - 1})
