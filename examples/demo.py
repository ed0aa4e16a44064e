"""A short program for `make demo`: output streams in as it is written.

Run it with `execpy run examples/demo.py`: each line appears when it is printed, not at
the end; the value of the last expression is printed like the interactive interpreter
does; Ctrl-C interrupts it.
"""

import sys
import time

print("counting in a separate runner process...")
for i in range(1, 6):
    print(f"  {i}", flush=True)
    time.sleep(0.3)
print("a line on stderr", file=sys.stderr)
squares = [n * n for n in range(1, 6)]
squares  # noqa: B018 - the final expression's value is printed, as in the REPL
