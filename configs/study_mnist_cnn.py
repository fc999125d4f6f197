"""MNIST with the small CNN of the Leashed-SGD study (conv4-pool-conv8-pool-128).

Same sweep as configs/study_mnist_mlp.py; batch 64:
  python -m asgd.study --config=configs/study_mnist_cnn.py
"""

import ml_collections

from asgd.configs import study_mnist_mlp


def get_config() -> ml_collections.ConfigDict:
    c = study_mnist_mlp.get_config()
    c.base.model = "cnn"
    c.base.batch_size = 64
    c.base.learning_rate = 0.05
    c.learning_rates = (0.05,)
    c.study_dir = ""                       # "" = studies/<config file name>[-<hash of the overrides>]
    return c
