"""The worker actor: compute gradients on the freshest parameters it holds, push them, repeat.

Asynchronous algorithms never wait on the network while there is work: the
worker holds two tickets, computes the gradient of one while the push of
the previous one is in flight, and computes on the freshest version it
already has, which ``Pulls`` keeps refreshing with at most k pulls in flight
per shard (on the primary, one rides on the push's reply). The version each gradient was computed on travels with its push,
so the server measures staleness exactly. Sync waits for each round (every
gradient of a round must read the same version).

Parameters and gradients move as object references: a version is read
zero-copy from this node's object store, a gradient piece is ``ray.put``
once and the server reads it from its node's store.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Callable

import numpy as np


class Pulls:
    """The freshest version of every shard this worker has, with at most ``k`` pulls in flight per shard.

    On the primary (shard 0) one of the k is the pull that rides on the
    reply of the push in flight (``offer``), so k = 1 makes no extra call.
    """

    def __init__(self, servers: list, k: int):
        self.servers = servers
        self.k = [k - 1] + [k] * (len(servers) - 1)  # explicit pulls kept in flight per shard
        self.in_flight = [collections.deque() for _ in servers]
        self.latest: list[tuple[int, object]] = [(-1, None)] * len(servers)  # (version, ref)
        self.cached: tuple[list, np.ndarray | None] = ([], None)  # (refs, the vector they make)

    def freshest(self) -> tuple[np.ndarray, list[int]]:
        """(flat parameters, version of each shard): the newest pulled so far; waits only for a first."""
        import ray
        for s, queue in enumerate(self.in_flight):
            if self.latest[s][1] is None and not queue:
                queue.append(self.servers[s].pull.remote())
            while queue:  # oldest first; a first version is waited for, later ones are not
                wait = self.latest[s][1] is None
                if not wait and not ray.wait([queue[0]], timeout=0)[0]:
                    break
                version, (ref,) = ray.get(queue.popleft())
                if version > self.latest[s][0]:
                    self.latest[s] = (version, ref)
            while len(queue) < self.k[s]:
                queue.append(self.servers[s].pull.remote())
        return self._joined()

    def offer(self, s: int, version: int, refs: list) -> None:
        """A version of shard s that arrived another way (a push's reply)."""
        if refs and version > self.latest[s][0]:
            self.latest[s] = (version, refs[0])

    def _joined(self) -> tuple[np.ndarray, list[int]]:
        import ray
        refs = [ref for _, ref in self.latest]
        if refs != self.cached[0]:
            parts = ray.get(refs)  # zero-copy views of the node's object store
            self.cached = (refs, parts[0] if len(parts) == 1 else np.concatenate(parts))
        return self.cached[1], [version for version, _ in self.latest]


class Worker:
    """Computes gradients until the servers say stop.

    Args:
      k: this worker's index.
      server_names: the names of the shard actors, primary first (handles,
        like any object reference among a restartable actor's constructor
        arguments, make Ray warn that a restart could fail).
      bounds: the shards' boundaries in the flat vector (S + 1 numbers).
      sync: synchronous rounds instead of asynchronous pushes.
      pulls_in_flight: k, the asynchronous pulls kept in flight per shard.
      make_grad_fn: builds the jitted (flat params, x, y) -> (loss, gradient
        pytree) in this process (e.g. ``problem.grad_factory``).
      input_shape: the shape of one example (to compile before the data arrive).
      batch_size, seed: the seeded minibatch stream of ``asgd.data.Batches``,
        so ticket i is the same minibatch as in a local run.

    The training set comes with ``run`` (an object reference, likewise kept
    out of the constructor), one copy per node and zero-copy here.
    """

    def __init__(self, k: int, server_names: list[str], bounds: list[int], sync: bool,
                 pulls_in_flight: int, make_grad_fn: Callable[[], Callable],
                 input_shape: tuple, batch_size: int, seed: int):
        import jax
        import ray
        self.k, self.servers = k, [ray.get_actor(name) for name in server_names]
        self.bounds, self.sync, self.pulls_in_flight = bounds, sync, pulls_in_flight
        self.batch_size, self.seed, self.batches = batch_size, seed, None
        self.grad_fn = make_grad_fn()
        x = np.zeros((batch_size, *input_shape), np.float32)  # compile now, not on the clock
        y = np.zeros(batch_size, np.int32)
        jax.block_until_ready(self.grad_fn(np.zeros(bounds[-1], np.float32), x, y))

    def ready(self) -> tuple[int, str]:
        """(process id, Ray node id): where this incarnation runs."""
        import ray
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, incarnation: int, train_ref: list) -> int:
        """Work until told to stop; returns the number of gradients pushed.

        ``train_ref``: [object reference of the training set].
        """
        import ray

        from asgd.data import Batches
        if self.batches is None:
            self.batches = Batches(ray.get(train_ref[0]), self.batch_size, self.seed)
        return self._rounds(incarnation) if self.sync else self._overlapped(incarnation)

    def _gradient(self, params: np.ndarray, ticket: int) -> tuple[float, np.ndarray]:
        """(loss, flat gradient) of minibatch ``ticket``."""
        import jax
        x, y = self.batches.get(ticket)
        loss, grads = self.grad_fn(params, x, y)
        leaves = jax.block_until_ready(jax.tree.leaves(grads))
        return float(loss), np.concatenate([np.asarray(leaf).reshape(-1) for leaf in leaves])

    def _pieces(self, grad: np.ndarray) -> list:
        """One object ref per shard's piece of the gradient, each put once."""
        import ray
        b = self.bounds
        return [ray.put(grad[b[s]:b[s + 1]]) for s in range(len(b) - 1)]

    def _overlapped(self, incarnation: int) -> int:
        """Asynchronous: compute ticket i+1 while the push of ticket i is in flight.

        When a push brings no next ticket the worker asks ``start`` again,
        which waits for a free ticket or the stop.
        """
        import ray
        clock, pushed = time.perf_counter, 0
        primary, others = self.servers[0], self.servers[1:]
        pulls = Pulls(self.servers, self.pulls_in_flight)
        while queue := collections.deque(ray.get(primary.start.remote(self.k, incarnation))):
            push = None
            while queue or push is not None:
                ticket = queue.popleft() if queue else None
                if ticket is not None:
                    began = clock()
                    params, versions = pulls.freshest()
                    pulled = clock()
                    loss, grad = self._gradient(params, ticket)
                    computed = clock()
                    del params
                    pieces = self._pieces(grad)
                if push is not None:  # the previous push's reply: the next ticket, a fresh version
                    (following, version, refs), push = ray.get(push), None
                    pulls.offer(0, version, refs)
                    if following is not None:
                        queue.append(following)
                if ticket is not None:
                    applied = [s.apply.remote(piece, v)
                               for s, piece, v in zip(others, pieces[1:], versions[1:])]
                    push = primary.push.remote(self.k, incarnation, ticket, versions[0], loss,
                                               pulled - began, computed - pulled, pieces[0], *applied)
                    pushed += 1
        return pushed

    def _rounds(self, incarnation: int) -> int:
        """Sync: every shard's round hands out the same minibatch and version; push, then wait."""
        import ray
        clock, pushed = time.perf_counter, 0
        shares = ray.get([s.join_round.remote(self.k, incarnation) for s in self.servers])
        while all(share is not None for share in shares):
            batch = shares[0][0]
            began = clock()
            parts = ray.get([share[2][0] for share in shares])  # zero-copy
            params = parts[0] if len(parts) == 1 else np.concatenate(parts)
            pulled = clock()
            loss, grad = self._gradient(params, batch)
            computed = clock()
            del params, parts
            pieces = self._pieces(grad)
            shares = ray.get([s.exchange.remote(self.k, incarnation, batch, loss, pulled - began,
                                                computed - pulled, piece)
                              for s, piece in zip(self.servers, pieces)])
            pushed += 1
        return pushed
