"""``python -m fvloss.cli COMMAND ...``: the ``fvloss`` console script without installing it."""

import sys

from fvloss.cli import main

if __name__ == "__main__":
    sys.exit(main())
