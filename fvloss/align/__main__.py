"""``python -m fvloss.align SRC DST ...`` (same as ``fvloss align``)."""

import sys

from fvloss.align.cli import main

if __name__ == "__main__":
    sys.exit(main())
