"""The training problem: data, model, flat layout and the compiled functions.

Built once per run from its data and model specs and shared by every worker
thread: the jitted functions are thread-safe and release the GIL while they
run. ``grad_factory`` rebuilds ``grad_fn`` in another process (a Ray worker).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asgd import data, models
from asgd.params import FlatLayout
from asgd.specs import DataSpec, ModelSpec

EVAL_CHUNK = 1000



class Problem(NamedTuple):
    layout: FlatLayout
    init_flat: np.ndarray            # float32 [d], the initial parameters
    grad_fn: Callable                # (flat, x, y) -> (loss, gradient pytree)
    grad_factory: Callable           # () -> a new grad_fn (picklable: for other processes)
    model_apply: Callable            # (params pytree, x) -> logits
    evaluate: Callable               # (flat) -> (eval loss, eval accuracy) as floats
    train: data.Dataset
    eval: data.Dataset
    compiled: dict                   # compiled worker loops of this problem, by their shapes


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


def load_data(spec: DataSpec) -> tuple[data.Dataset, data.Dataset]:
    """The (train, eval) splits a data spec names."""
    def load(split):
        return data.load(spec.dataset, split, spec.data_dir or None, spec.eval_fraction,
                         spec.split_seed, spec.tfds_download)
    return load("train"), load("eval")


def make_problem(data_spec: DataSpec, model_spec: ModelSpec) -> Problem:
    """Load the data and build the model (see configs/default.py for the fields)."""
    train, evalset = load_data(data_spec)
    model = models.get(model_spec.name)
    num_classes = max(train.num_classes, evalset.num_classes)
    params = model.init(jax.random.key(model_spec.seed), train.input_shape, num_classes,
                        **dict(model_spec.options))
    layout = FlatLayout.of(params)
    factory = partial(make_grad_fn, model, layout)
    return Problem(layout, layout.ravel(params), factory(), factory, model.apply,
                   make_evaluate(model, layout, evalset), train, evalset, {})
