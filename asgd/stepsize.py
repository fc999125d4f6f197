"""TEMPORARY placeholder until the step-size branch merges (constant only)."""
import numpy as np


class _Constant:
    def __init__(self, alpha):
        self.alpha = alpha

    def table(self):
        return np.array([-self.alpha], np.float32)

    def observe(self, staleness):
        return False

    def alpha_table(self):
        return [self.alpha]


def from_config(cfg):
    return cfg.learning_rate


def schedule(tx, max_staleness=1024):
    return _Constant(tx)
