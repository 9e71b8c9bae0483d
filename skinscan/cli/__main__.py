"""`python -m skinscan.cli` (the same as the `skinscan` command)."""

import sys

from skinscan.cli import main

sys.exit(main())
