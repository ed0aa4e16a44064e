"""multiprocessing's forkserver, measured in a small main module of its own (a forkserver
child imports the parent's ``__main__``: bench_fork.py's would bring Trio along). Prints
the times of N fresh Processes, in ms, as JSON. Used by bench_fork.py.

Usage: python bench/_mp_fresh.py N GAP [PRELOAD ...]
"""

import json
import multiprocessing
import sys
import time


def child(queue):  # type: ignore[no-untyped-def]
    queue.put(1)


if __name__ == "__main__":
    n, gap, preload = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *preload])
    queue = ctx.Queue()
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        process = ctx.Process(target=child, args=(queue,))
        process.start()
        queue.get()
        process.join()
        if i:  # the first starts the forkserver itself
            times.append((time.perf_counter() - start) * 1000)
        time.sleep(gap)
    print(json.dumps(times))
