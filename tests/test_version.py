"""The version is written in one place, ``execpy_trio.__version__``, and everything else
(the installed metadata, the runner's welcome, the client's hello) reads it from there."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import trio

import execpy_trio
import execpy_trio.runner
from runner_client import RunnerClient

ROOT = Path(__file__).resolve().parent.parent
#: The one file allowed to spell the version out.
VERSION_FILE = ROOT / "src" / "execpy_trio" / "__init__.py"
#: A quoted version-like literal: "1.2.3", '0.1.0rc1', "2.0.0.dev4".
VERSION_LITERAL = re.compile(r"""["']v?\d+\.\d+\.\d+(?:[.+-]?[A-Za-z0-9]+)*["']""")


def test_metadata_package_and_runner_agree() -> None:
    installed = importlib.metadata.version("execpy-trio")
    assert installed == execpy_trio.__version__, (
        f"the installed metadata says {installed}, the package {execpy_trio.__version__}: "
        "reinstall (pip install -e .) after changing __version__"
    )
    assert execpy_trio.runner.IMPL_VERSION == execpy_trio.__version__
    assert execpy_trio.runner.IMPL_NAME == "execpy-trio"


def test_a_real_runner_announces_the_version_in_its_welcome() -> None:
    with RunnerClient(stdio=True) as client:
        assert client.welcome is not None
        assert client.welcome.impl_name == "execpy-trio"
        assert client.welcome.impl_version == execpy_trio.__version__


async def test_the_trio_api_sees_the_runner_version() -> None:
    with trio.fail_after(20):  # a hang detector, not a speed check
        async with execpy_trio.open_runner() as runner:
            assert runner.welcome.impl_version == execpy_trio.__version__


def _text_files() -> list[Path]:
    files = [ROOT / "pyproject.toml"]
    for path in sorted((ROOT / "src").rglob("*")):
        parts = set(path.relative_to(ROOT).parts)
        if "__pycache__" in parts or any(p.endswith(".egg-info") for p in parts):
            continue  # build products, not sources
        if path.is_file():
            files.append(path)
    return files


def _read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_the_version_is_written_only_in_the_package_init() -> None:
    version = execpy_trio.__version__
    init_text = VERSION_FILE.read_text(encoding="utf-8")
    assert init_text.count(f'"{version}"') == 1, "__version__ must be a plain literal"
    exact = re.compile(rf"(?<![\w.]){re.escape(version)}(?![\w.])")
    scanned = []
    offenders = []
    for path in _text_files():
        if path == VERSION_FILE:
            continue
        text = _read_text(path)
        if text is None:
            continue
        scanned.append(path.name)
        for lineno, line in enumerate(text.splitlines(), 1):
            if exact.search(line) or VERSION_LITERAL.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert "pyproject.toml" in scanned and "_main.py" in scanned  # the scan saw the sources
    assert offenders == [], "a version literal outside src/execpy_trio/__init__.py"
    # pyproject.toml must read the version from the package, not state it.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r"^dynamic\s*=\s*\[[^\]]*\"version\"", pyproject, re.MULTILINE)
    assert re.search(
        r"^version\s*=\s*\{\s*attr\s*=\s*\"execpy_trio.__version__\"\s*\}", pyproject, re.M
    )
