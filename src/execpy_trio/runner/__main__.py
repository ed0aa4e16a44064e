"""Entry point: ``python -m execpy_trio.runner (--fd N | --stdio) [--hello-timeout SECONDS]``."""

from __future__ import annotations

import sys

from ._command import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
