"""``python -m masked_opt demo``."""
import sys

from .cli import main

sys.exit(main())
