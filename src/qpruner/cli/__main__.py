"""``python -m qpruner.cli``."""

import sys

from qpruner.cli import main

sys.exit(main())
