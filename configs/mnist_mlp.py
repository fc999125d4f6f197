"""MNIST, the study's MLP 784-128-128-128-10 (134,794 parameters).

Reads raw IDX files; here the shared 10k test split, held out 80/20:
  python train.py --config=configs/mnist_mlp.py --config.data_dir=../shared/data/mnist
Without data_dir, tensorflow-datasets is used (pip install -e '.[tfds]').
"""

from asgd.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "mnist"
    c.data_dir = "../shared/data/mnist"
    c.model = "mlp"
    c.mlp_hidden = (128, 128, 128)
    c.algorithm = "leashed"
    c.threads = 2
    c.batch_size = 128
    c.learning_rate = 0.05
    c.num_updates = 0
    c.epochs = 10
    c.loss_targets = (1.0, 0.5, 0.3, 0.2)
    c.eval_every = 500
    return c
