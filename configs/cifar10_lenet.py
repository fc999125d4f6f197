"""CIFAR-10 with LeNet-5. Raw binary batches (data_batch_*.bin, test_batch.bin):
  python train.py --config=configs/cifar10_lenet.py --config.data_dir=/path/to/cifar-10-batches-bin
or, with the tfds extra and network, --config.data_dir= --config.tfds_download=True.
"""

from asgd.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "cifar10"
    c.data_dir = ""
    c.model = "lenet"
    c.algorithm = "leashed"
    c.threads = 2
    c.batch_size = 64
    c.learning_rate = 0.01
    c.num_updates = 0
    c.epochs = 20
    c.loss_targets = (2.0, 1.6, 1.4, 1.2)
    c.eval_every = 1000
    return c
