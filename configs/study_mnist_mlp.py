"""MNIST with the MLP 784-128-128-128-10: the paper-style study.

Reads raw IDX files from base.data_dir (default: the shared 10k test split,
held out 80/20 for train/eval). Each run is 20 epochs; the sweep is every
algorithm, m in (1, 2, 4, 8), constant and MindTheStep step sizes, three
persistence bounds for Leashed-SGD and three seeds:
  python -m asgd.study --config=configs/study_mnist_mlp.py
Use --config.base.cpus=M to pin a run to M cores on a larger machine.
"""

import ml_collections

from configs import default


def base_config() -> ml_collections.ConfigDict:
    b = default.get_config()
    b.dataset = "mnist"
    b.data_dir = "../shared/data/mnist"
    b.model = "mlp"
    b.mlp_hidden = (128, 128, 128)
    b.batch_size = 128
    b.learning_rate = 0.05
    b.num_updates = 0
    b.epochs = 20
    b.eval_every = 500
    b.log_every = 50
    return b


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = base_config()
    c.algorithms = ("sequential", "sync", "lock", "hogwild", "leashed")
    c.threads = (1, 2, 4, 8)
    c.stepsizes = ("constant", "mindthestep")
    c.learning_rates = (0.05,)
    c.persistences = (-1, 0, 1)
    c.seeds = (0, 1, 2)
    c.targets = (1.0, 0.5, 0.3, 0.2)
    c.study_dir = "studies/mnist_mlp"
    c.isolate = True
    c.quiet = False
    return c
