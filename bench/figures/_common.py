"""Shared helpers of the figures: statistics, timing loops, the floors, peer guards, the
render types, tables and one plotting style for every figure.

Import it as ``from figures import _common as c`` (``bench/`` is on ``sys.path`` when the
suite runs; importing this module puts it there too, so ``import bench_client`` works).
It imports only the standard library at import time; Trio, msgpack, psutil and matplotlib
are imported by the helpers that need them.

Conventions
-----------
- ``measure()`` keeps raw samples (per-op latencies in microseconds, rounded by
  :func:`compact`) so that ``render()`` computes the percentiles and draws distributions.
- A peer that is not installed gives ``{"missing": NOT_INSTALLED}`` in place of its
  samples (see :func:`missing`), and its row says so; it never crashes a figure.
- Percentiles interpolate linearly between order statistics (numpy's default).
- Plots: :func:`new_figure`, :func:`color`, :func:`grouped_bars`, :func:`save` (Agg,
  900x500 px by default, the same colours for a peer in every figure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

PLACEMENTS = ("pinned", "unpinned")
NOT_INSTALLED = "not installed"
MIB = 1024 * 1024
Progress = Callable[[str], None]

# --- render types ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of issue 14 as a figure reports it: ``met`` None = not measured."""

    name: str
    value: str
    met: bool | None


@dataclasses.dataclass(frozen=True)
class Rendered:
    """What ``render()`` gives the suite: markdown (the figure's tables), the images it
    wrote into ``img_dir`` as (file name, caption), and its targets."""

    markdown: str
    images: list[tuple[str, str]]
    targets: list[Target]


# --- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between order statistics; NaN if empty."""
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, median, p90, p99, min and max of ``values``."""
    s = sorted(values)
    return {
        "n": len(s),
        "median": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "min": s[0] if s else math.nan,
        "max": s[-1] if s else math.nan,
    }


def compact(values: Sequence[float], digits: int = 2) -> list[float]:
    """Rounded for the JSON (raw samples are kept, but not to 17 digits)."""
    return [round(v, digits) for v in values]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# --- timing ------------------------------------------------------------------------------


def time_sync(step: Callable[[], object], n: int, warmup: int = 0) -> list[float]:
    """Per-op wall time of ``step()``, in microseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    out = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        step()
        out.append((clock() - start) * 1e6)
    return out


async def time_async(step: Callable[[], Awaitable[object]], n: int, warmup: int = 0) -> list[float]:
    """Per-op wall time of ``await step()``, in microseconds, after ``warmup`` untimed."""
    for _ in range(warmup):
        await step()
    out = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await step()
        out.append((clock() - start) * 1e6)
    return out


# --- the floors --------------------------------------------------------------------------


def open_trio_floor() -> contextlib.AbstractAsyncContextManager[Callable[[], Awaitable[None]]]:
    """The trio floor of bench/bench_client.py (``open_floor``, which ``floor_pingpong``
    times): yields ``step()``, one exec-sized frame echoed by a plain Python child."""
    from bench_client import open_floor

    return open_floor()


@contextlib.contextmanager
def open_pipe_pingpong(total: int) -> Iterator[Callable[[], None]]:
    """The raw reference of bench/bench_runner.py (``raw_pingpong_us``): an os.pipe msgpack
    ping-pong between this process (plain synchronous code) and a plain Python child, an
    exec frame one way and a done frame back. The child answers exactly ``total`` frames:
    call ``step()`` exactly that many times (warm-up included)."""
    import msgpack
    from bench_runner import _PINGPONG

    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", _PINGPONG, str(r1), str(w2), str(total)], pass_fds=[r1, w2]
    )
    os.close(r1)
    os.close(w2)
    op = 0

    def step() -> None:
        nonlocal op
        op += 1
        b = msgpack.packb({"kind": "exec", "op": op, "code": "x = 1"})
        os.write(w1, len(b).to_bytes(4, "big") + b)
        msgpack.unpackb(os.read(r2, 65536)[4:])

    try:
        yield step
    finally:
        os.close(w1)
        os.close(r2)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# --- the peers' sessions -----------------------------------------------------------------


@contextlib.contextmanager
def open_jupyter_kernel() -> Iterator[tuple[Any, Any]]:
    """(KernelManager, BlockingKernelClient) of a fresh ipykernel of this interpreter, its
    stdout and stderr to /dev/null (ipykernel echoes captured fd output there: a terminal
    would slow it down). Shut down at the end."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(
        kernel_name="python3", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def jupyter_execute(
    kc: Any,
    code: str,
    on_stream: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Execute ``code`` with the default options (what ``execute_interactive`` does) and
    return the reply's content once both the reply and the kernel's "idle" status for this
    request have come; ``on_stream`` sees each stream message. Raises on an error reply."""
    msg_id = kc.execute(code)
    idle = False
    while not idle:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream" and on_stream is not None:
            on_stream(msg)
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    content: dict[str, Any] = reply["content"]
    if content["status"] != "ok":
        raise RuntimeError(f"jupyter: {content.get('ename')}: {content.get('evalue')}")
    return content


def jupyter_kernel_pid(km: Any) -> int:
    return int(km.provisioner.process.pid)


@contextlib.contextmanager
def open_execnet_gateway() -> Iterator[Any]:
    """An execnet popen gateway running this interpreter."""
    import execnet

    gw = execnet.makegateway(f"popen//python={sys.executable}")
    try:
        yield gw
    finally:
        gw.exit()


# --- peers, versions, the machine --------------------------------------------------------

PEER_MODULES: dict[str, tuple[str, ...]] = {
    "execnet": ("execnet",),
    "trio-parallel": ("trio_parallel",),
    "jupyter": ("jupyter_client", "ipykernel"),
}
VERSION_PACKAGES = (
    "execpy-trio",
    "trio",
    "msgpack",
    "execnet",
    "trio-parallel",
    "jupyter_client",
    "ipykernel",
    "pyzmq",
    "matplotlib",
    "psutil",
)


def missing(peer: str) -> str | None:
    """None when ``peer`` (a key of PEER_MODULES) can be imported, else NOT_INSTALLED."""
    for module in PEER_MODULES[peer]:
        if importlib.util.find_spec(module) is None:
            return NOT_INSTALLED
    return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = NOT_INSTALLED
    return out


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }


def placement() -> str:
    """ "pinned" when this process may run on one CPU only, else "unpinned"."""
    return "pinned" if len(os.sched_getaffinity(0)) == 1 else "unpinned"


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process, KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def uss_kib(pid: int) -> int | None:
    """Unique set size (memory only this process holds), KiB; None without psutil."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_full_info().uss // 1024)
    except Exception:
        return None


# --- tables ------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number for a table: thousands separated, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    def mark(met: bool | None) -> str:
        return "reported" if met is None else ("met" if met else "**missed**")

    return md_table(["target", "value", "met?"], [(t.name, t.value, mark(t.met)) for t in targets])


# --- plots -------------------------------------------------------------------------------

# One colour per implementation in every figure (matched by the label's first word).
COLORS = {
    "execpy": "#1f5fa8",
    "pool": "#6a9fd8",
    "jupyter": "#e8872a",
    "execnet": "#4c9a46",
    "trio-parallel": "#9467bd",
    "raw": "#7f7f7f",
    "trio": "#3b3b3b",
    "python": "#b5aca5",
}
PLACEMENT_STYLE = {
    "pinned": {"alpha": 1.0, "hatch": ""},
    "unpinned": {"alpha": 0.55, "hatch": "//"},
}


def color(label: str) -> str:
    """The colour of an implementation, from the first word of its label."""
    head = label.split()[0].lower() if label else ""
    for key, value in COLORS.items():
        if head.startswith(key):
            return value
    return "#555555"


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (9, 5)) -> Any:
    """A matplotlib (figure, axes) with the suite's style, Agg backend, 100 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "savefig.dpi": 100,
        }
    )
    return plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained")


def save(fig: Any, img_dir: pathlib.Path, name: str) -> str:
    """Write ``name`` (a .png file name) into ``img_dir``, close the figure, return name."""
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(img_dir / name)
    plt.close(fig)
    return name


def grouped_bars(
    ax: Any,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    errors: dict[str, Sequence[tuple[float, float] | None]] | None = None,
    value_fmt: str = "{:,.0f}",
    log: bool = False,
) -> None:
    """Bars per label, one per placement side by side (pinned solid, unpinned hatched), in
    the label's colour, each with its value written above it. ``errors``: (low, high)
    absolute bounds per bar (drawn as an error bar), or None."""
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (place, values) in enumerate(series.items()):
        style = PLACEMENT_STYLE.get(place, PLACEMENT_STYLE["pinned"])
        for j, (label, value) in enumerate(zip(labels, values, strict=True)):
            if value is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.bar(
                x,
                value,
                width * 0.95,
                color=color(label),
                alpha=style["alpha"],
                hatch=style["hatch"],
                edgecolor="white",
                label=place if j == 0 else None,
            )
            err = (errors or {}).get(place)
            bounds = err[j] if err is not None else None
            top = value
            if bounds is not None:
                low, high = bounds
                ax.errorbar(
                    x, value, yerr=[[value - low], [high - value]], color="black", capsize=2, lw=0.8
                )
                top = high
            ax.annotate(
                value_fmt.format(value),
                (x, top),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, ha="right")
    if log:
        ax.set_yscale("log")
    ax.legend(title="placement", fontsize=8)
