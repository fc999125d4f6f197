"""The training problem: data, model, flat layout and the compiled functions.

Built once per run from the config and shared by every worker thread: the
jitted functions are thread-safe and release the GIL while they run.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asgd import data, models
from asgd.params import FlatLayout

EVAL_CHUNK = 1000


class Problem(NamedTuple):
    layout: FlatLayout
    init_flat: np.ndarray            # float32 [d], the initial parameters
    grad_fn: Callable                # (flat, x, y) -> (loss, gradient pytree)
    evaluate: Callable               # (flat) -> (eval loss, eval accuracy) as floats
    train: data.Dataset
    eval: data.Dataset


def make_grad_fn(model: models.Model, layout: FlatLayout) -> Callable:
    """Jitted (flat params, x, y) -> (mean loss, gradient pytree).

    The flat vector goes *in* and the gradient comes out as a pytree, which
    keeps XLA:CPU off its slow concatenate path (see ``asgd.params``).
    """
    def loss_of(params, x, y):
        return models.cross_entropy(model.apply(params, x), y)

    @jax.jit
    def grad_fn(flat, x, y):
        return jax.value_and_grad(loss_of)(layout.unravel(flat), x, y)

    return grad_fn


def make_evaluate(model: models.Model, layout: FlatLayout, dataset: data.Dataset) -> Callable:
    """(flat params) -> (mean loss, accuracy) over the whole dataset.

    Runs in fixed-size chunks (the last one padded and masked) so it compiles
    once and bounds memory.
    """
    n = len(dataset.y)
    chunk = min(n, EVAL_CHUNK)
    pad = -n % chunk
    xs = np.concatenate([dataset.x, np.zeros((pad, *dataset.x.shape[1:]), np.float32)])
    ys = np.concatenate([dataset.y, np.zeros((pad,), np.int32)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])

    @jax.jit
    def chunk_sums(flat, x, y, w):
        logits = model.apply(layout.unravel(flat), x)
        losses = jax.vmap(models.cross_entropy)(logits[:, None], y[:, None])
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return jnp.sum(losses * w), jnp.sum(correct * w)

    def evaluate(flat: np.ndarray) -> tuple[float, float]:
        flat = jnp.asarray(flat)  # one copy, so the caller may release its snapshot
        loss = correct = 0.0
        for start in range(0, len(ys), chunk):
            s = slice(start, start + chunk)
            l, c = chunk_sums(flat, xs[s], ys[s], mask[s])
            loss, correct = loss + float(l), correct + float(c)
        return loss / n, correct / n

    return evaluate


def make_problem(cfg) -> Problem:
    """Load the data and build the model of a config (see configs/default.py)."""
    load = lambda split: data.load(cfg.dataset, split, cfg.data_dir or None, cfg.eval_fraction,
                                   cfg.split_seed, cfg.tfds_download)
    train, evalset = load("train"), load("eval")
    model = models.get(cfg.model)
    options = {"hidden": tuple(cfg.mlp_hidden)} if cfg.model == "mlp" else {}
    num_classes = max(train.num_classes, evalset.num_classes)
    params = model.init(jax.random.key(cfg.seed), train.input_shape, num_classes, **options)
    layout = FlatLayout.of(params)
    return Problem(layout, layout.ravel(params), make_grad_fn(model, layout),
                   make_evaluate(model, layout, evalset), train, evalset)
