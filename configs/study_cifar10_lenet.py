"""CIFAR-10 with LeNet-5: the paper-style study on the harder problem.

Needs the raw binary batches (data_batch_*.bin, test_batch.bin):
  python -m asgd.study --config=configs/study_cifar10_lenet.py \
      --config.base.data_dir=/path/to/cifar-10-batches-bin
(or data_dir="" with the tfds extra). Each run is 10 epochs.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    b = default.get_config()
    b.dataset = "cifar10"
    b.data_dir = ""
    b.model = "lenet"
    b.batch_size = 64
    b.learning_rate = 0.01
    b.num_updates = 0
    b.epochs = 10
    b.eval_every = 1000
    b.log_every = 100
    c.base = b
    c.algorithms = ("sequential", "sync", "lock", "hogwild", "leashed")
    c.threads = (1, 2, 4, 8)
    c.stepsizes = ("constant", "mindthestep")
    c.learning_rates = (0.01,)
    c.persistences = (-1, 0, 1)
    c.seeds = (0, 1, 2)
    c.targets = (2.0, 1.6, 1.4, 1.2)
    c.study_dir = "studies/cifar10_lenet"
    c.isolate = True
    c.quiet = False
    return c
