"""``python -m masked_opt demo``."""
import sys

from .cli import main

# Guarded so that importing this module (pytest --doctest-modules does) does not run the CLI.
if __name__ == '__main__':
    sys.exit(main())
