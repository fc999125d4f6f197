"""MNIST with the MLP 784-128-128-128-10: the paper-style study.

Reads raw IDX files from base.data_dir (default: the shared 10k test split,
held out 80/20 for train/eval). Each run is 20 epochs; the sweep is every
algorithm, m in (1, 2, 4, 8), constant and MindTheStep step sizes, three
persistence bounds for Leashed-SGD and three seeds:
  python -m asgd.study --config=configs/study_mnist_mlp.py
Use --config.base.cpus=M to pin a run to M cores on a larger machine.
"""

import ml_collections

from asgd.configs import mnist_mlp


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = mnist_mlp.get_config()        # MNIST raw files, MLP, batch 128, alpha 0.05
    c.base.epochs = 20
    c.base.log_every = 50
    c.algorithms = ("sequential", "sync", "lock", "hogwild", "leashed")
    c.threads = (1, 2, 4, 8)
    c.stepsizes = ("constant", "mindthestep")
    c.learning_rates = (0.05,)
    c.persistences = (-1, 0, 1)
    c.seeds = (0, 1, 2)
    c.targets = (1.0, 0.5, 0.3, 0.2)
    c.study_dir = ""                       # "" = studies/<config file name>[-<hash of the overrides>]
    c.isolate = True
    c.quiet = False
    return c
