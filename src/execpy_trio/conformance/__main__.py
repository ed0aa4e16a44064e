"""``python -m execpy_trio.conformance [options] -- COMMAND [ARGS...]``."""

import sys

from ._cli import main

sys.exit(main())
