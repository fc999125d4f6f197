"""``python -m asgd.dynamics``: see ``asgd.dynamics.cli``."""

import sys

from asgd.dynamics.cli import main

sys.exit(main())
