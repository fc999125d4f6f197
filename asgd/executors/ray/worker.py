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
      ps: the parameter-server actor handle.
      make_grad_fn: builds the jitted (flat params, x, y) -> (loss, gradient
        pytree) in this process (e.g. ``problem.grad_factory``).
      d: the number of parameters.
      train_ref: [object ref of the training set], one copy per node,
        zero-copy here (in a list so Ray passes the reference: a restarted
        actor fetches it again, and Ray does not warn about by-value
        arguments of restartable actors).
      batch_size, seed: the seeded minibatch stream of ``asgd.data.Batches``,
        so ticket i is the same minibatch as in a local run.
    """

    def __init__(self, k: int, ps, make_grad_fn: Callable[[], Callable], d: int, train_ref: list,
                 batch_size: int, seed: int):
        import jax
        import ray

        from asgd.data import Batches
        self.k, self.ps = k, ps
        self.grad_fn = make_grad_fn()
        self.batches = Batches(ray.get(train_ref[0]), batch_size, seed)
        x, y = self.batches.get(0)  # compile now, not on the clock
        jax.block_until_ready(self.grad_fn(np.zeros(d, np.float32), x, y))

    def ready(self) -> int:
        return os.getpid()

    def run(self, incarnation: int) -> int:
        """Work until told to stop; returns the number of gradients pushed."""
        import jax
        import ray
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
