"""Train one model with one algorithm; writes a results folder.

  python train.py [--config=configs/default.py] [--config.FIELD=VALUE ...]

The same command as the installed ``asgd-train`` (``asgd.cli``); ``--help``
lists every flag and config field. Bad input exits with code 2 and a
one-line error.
"""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Python puts this folder first on sys.path, so a checkout's asgd/ would shadow
# the package installed in this Python (a clone installed with `pip install .`
# has no compiled kernel in its asgd/). Use the installed package; only when
# there is none, the checkout (e.g. built in place with ckernels/build_store.py).
if sys.path and os.path.abspath(sys.path[0] or ".") == HERE:
    del sys.path[0]
    if importlib.util.find_spec("asgd") is None:
        sys.path.insert(0, HERE)

try:
    from asgd.cli import run
except ImportError as e:
    print(f"train.py: error: cannot import asgd ({e}); install it: pip install -e .", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    run("train.py")
