"""Train and study configs (big_vision style: each module's ``get_config()``).

Installed as ``asgd.configs``, so ``train.py`` and ``python -m asgd.study``
find them wherever they run, and a config builds on another with
``from asgd.configs import default``. ``default.py`` holds every train field
with its documented default: the one set of defaults.
"""
