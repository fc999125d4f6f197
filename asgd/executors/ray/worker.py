"""The worker actor: pull a version, compute a gradient, push it, until told to stop."""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np


class Worker:
    """Computes gradients: pull -> compute -> push until the server says stop.

    Args:
      k: this worker's index.
      ps_name: the name of the parameter-server actor (a handle, like any
        object reference among a restartable actor's constructor arguments,
        makes Ray warn that a restart could fail).
      make_grad_fn: builds the jitted (flat params, x, y) -> (loss, gradient
        pytree) in this process (e.g. ``problem.grad_factory``).
      d: the number of parameters.
      input_shape: the shape of one example (to compile before the data arrive).
      batch_size, seed: the seeded minibatch stream of ``asgd.data.Batches``,
        so ticket i is the same minibatch as in a local run.

    The training set comes with ``run`` (an object reference, likewise kept
    out of the constructor), one copy per node and zero-copy here.
    """

    def __init__(self, k: int, ps_name: str, make_grad_fn: Callable[[], Callable], d: int,
                 input_shape: tuple, batch_size: int, seed: int):
        import jax
        import ray
        self.k, self.ps = k, ray.get_actor(ps_name)
        self.batch_size, self.seed, self.batches = batch_size, seed, None
        self.grad_fn = make_grad_fn()
        x = np.zeros((batch_size, *input_shape), np.float32)  # compile now, not on the clock
        y = np.zeros(batch_size, np.int32)
        jax.block_until_ready(self.grad_fn(np.zeros(d, np.float32), x, y))

    def ready(self) -> int:
        return os.getpid()

    def run(self, incarnation: int, train_ref: list) -> int:
        """Work until told to stop; returns the number of gradients pushed.

        ``train_ref``: [object reference of the training set].
        """
        import jax
        import ray

        from asgd.data import Batches
        if self.batches is None:
            self.batches = Batches(ray.get(train_ref[0]), self.batch_size, self.seed)
        clock, pushed = time.perf_counter, 0
        assignment = ray.get(self.ps.start.remote(self.k, incarnation))
        while assignment is not None:
            ticket, version, (ref,) = assignment
            began = clock()
            params = ray.get(ref)  # zero-copy from the node's object store
            pulled = clock()
            x, y = self.batches.get(ticket)
            loss, grads = self.grad_fn(params, x, y)
            leaves = jax.block_until_ready(jax.tree.leaves(grads))
            grad = np.concatenate([np.asarray(leaf).reshape(-1) for leaf in leaves])
            loss = float(loss)
            computed = clock()
            del params
            assignment = ray.get(self.ps.exchange.remote(
                self.k, incarnation, ticket, grad, version, loss, pulled - began, computed - pulled))
            pushed += 1
        return pushed
