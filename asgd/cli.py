"""Config-flag parsing shared by train.py and ``python -m asgd.study``.

Both take ``--config=path.py --config.FIELD=VALUE`` (ml_collections) and
turn every bad flag or config value into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags


def fail(prog: str, message: str) -> None:
    """Print ``prog: error: message`` and exit with code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_config(argv: list[str], default_config: str, prog: str):
    """Parse ``argv`` and return the config; any error is one line and exit 2.

    The config flag is defined here, not at import, because ml_collections
    applies ``--config.*`` overrides while defining it.
    """
    try:
        config = config_flags.DEFINE_config_file(
            "config", default_config, "Path to a config file defining get_config().")
        flags.FLAGS(argv)
        return config.value
    except (flags.Error, KeyError, TypeError, ValueError, AttributeError, OSError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        if isinstance(e, (KeyError, AttributeError)):
            fail(prog, f"unknown config field {lines[0].strip(chr(34) + chr(39))!r} "
                       f"(see {default_config} for the fields)")
        if isinstance(e, OSError):
            fail(prog, f"cannot load the config file given by --config ({lines[0]})")
        fail(prog, lines[0])
