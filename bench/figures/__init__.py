"""The figures of ``make bench``: one module per figure, driven by ``bench/suite.py``.

Each module exposes ``NAME``, ``TITLE``, ``QUICK_SECONDS``, ``FULL_SECONDS``,
``measure(quick, progress) -> dict`` (run in a subprocess of its own, pinned or not) and
``render(results, img_dir) -> Rendered`` (in the driver, from the JSON of each placement).
Shared helpers are in :mod:`figures._common`. The package imports nothing at import time:
a figure's measuring process may be the ``__main__`` that trio-parallel's spawned workers
import again, so what it imports up front is their start-up cost too.
"""

FIGURES = ("roundtrip", "throughput", "coldstart", "memory", "scaling", "cancel")
