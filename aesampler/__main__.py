"""``python -m aesampler``: the command line, also as ``torchrun -m aesampler ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
