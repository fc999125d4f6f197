"""MNIST, the small CNN of the Leashed-SGD study (conv4-pool-conv8-pool-128).

  python train.py --config=configs/mnist_cnn.py --config.data_dir=../shared/data/mnist
"""

from asgd.configs import mnist_mlp


def get_config():
    c = mnist_mlp.get_config()
    c.model = "cnn"
    c.batch_size = 64
    c.learning_rate = 0.05
    return c
