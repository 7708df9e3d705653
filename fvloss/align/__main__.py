"""``python -m fvloss.align SRC DST ...`` (same as ``fvloss align``)."""

import sys

from fvloss.cli.align import main  # the command line lives in fvloss.cli

if __name__ == "__main__":
    sys.exit(main())
