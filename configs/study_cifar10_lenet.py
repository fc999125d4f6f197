"""CIFAR-10 with LeNet-5: the paper-style study on the harder problem.

Needs the raw binary batches (data_batch_*.bin, test_batch.bin):
  python -m asgd.study --config=configs/study_cifar10_lenet.py \
      --config.base.data_dir=/path/to/cifar-10-batches-bin
(or data_dir="" with the tfds extra). Each run is 10 epochs.
"""

import ml_collections

from asgd.configs import cifar10_lenet, study_mnist_mlp


def get_config() -> ml_collections.ConfigDict:
    c = study_mnist_mlp.get_config()      # the same sweep
    c.base = cifar10_lenet.get_config()   # CIFAR-10, LeNet-5, batch 64, alpha 0.01
    c.base.epochs = 10
    c.base.log_every = 100
    c.learning_rates = (0.01,)
    c.targets = (2.0, 1.6, 1.4, 1.2)
    c.study_dir = ""                       # "" = studies/<config file name>[-<hash of the overrides>]
    return c
