"""The small study on scikit-learn's digits: CI's smoke test of the whole study.

Every algorithm, m in (1, 2), two step-size strategies, two seeds; each run
is 600 updates of the default MLP (a few seconds, most of it JIT compile).
Finishes in a few minutes on 2 cores:
  python -m asgd.study --config=configs/study_digits.py
Any field can be overridden, e.g. --config.seeds="(0,)" --config.base.num_updates=300.
"""

import ml_collections

from asgd.configs import default


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = default.get_config()          # the train config every run starts from
    c.base.num_updates = 600
    c.base.eval_every = 200
    c.base.log_every = 25

    # Sweep lists: the study runs their cross product (see docs/study.md).
    c.algorithms = ("sequential", "sync", "lock", "hogwild", "leashed")
    c.threads = (1, 2)                     # m; sequential runs with m=1 only
    c.stepsizes = ("constant", "mindthestep")
    c.learning_rates = (0.05,)
    c.persistences = (-1,)                 # leashed only; -1 = retry until success
    c.seeds = (0, 1)

    c.targets = (0.5, 0.3, 0.2)            # training-loss levels ε for time to ε
    c.study_dir = ""                       # "" = studies/<config file name>[-<hash of the overrides>]
    c.isolate = True                       # each run in its own process (own peak RSS, cpus)
    c.quiet = False                        # no per-run progress lines
    return c
