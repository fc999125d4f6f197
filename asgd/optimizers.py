"""Stateful optimizers under asynchrony: optax directions whose state is versioned with the parameters.

An optimizer here is an optax transform *without* its learning rate (its
"direction": ``optax.trace`` for momentum, ``optax.scale_by_adam`` for Adam,
...). The store holds one vector per version, the parameters followed by the
optimizer state, flattened; an update reads the latest version, computes

    u, state' = direction.update(g, state, params)
    params'   = params + s(tau) * u,      s(tau) = -alpha(tau)

in JAX, and publishes params' and state' together as the next version. With
the constant step size this is exactly ``optax.chain(direction,
optax.scale_by_learning_rate(alpha))``, i.e. ``optax.adam(alpha)`` for
Adam; a staleness-adaptive step size scales the optimizer's learning rate by
alpha(tau)/alpha. What the version gives the state depends on the store
(docs/optimizers.md): Leashed-SGD and the lock publish parameters and state of
one update atomically; Hogwild! writes them in place and reports how many
updates each one overwrote.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd.params import FlatLayout
from asgd.specs import OptimizerSpec

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
# The learning rate each takes when optimizer_learning_rate is 0: the usual
# library defaults (Keras: SGD with momentum 0.01, Adam and RMSProp 0.001;
# Kingma & Ba's Adam 0.001), not tuned here.
DEFAULT_LEARNING_RATES = {"momentum": 0.01, "nesterov": 0.01, "adam": 1e-3, "adamw": 1e-3,
                          "rmsprop": 1e-3}


def check(spec: OptimizerSpec) -> None:
    """The optimizer's name and hyperparameters; ValueError (one line) if unusable."""
    if spec.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec.name!r}; valid: {list(OPTIMIZERS)}")
    for name in ("momentum", "b1", "b2", "decay"):
        value = getattr(spec, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"optimizer_{name} must be in [0, 1), got {value}")
    if not (math.isfinite(spec.eps) and spec.eps > 0):
        raise ValueError(f"optimizer_eps must be a finite number > 0, got {spec.eps}")
    if spec.name != "sgd" and not (math.isfinite(spec.learning_rate) and spec.learning_rate > 0):
        raise ValueError(f"optimizer_learning_rate must be a finite number > 0 (or 0 for the "
                         f"optimizer's default), got {spec.learning_rate}")
    if not (math.isfinite(spec.weight_decay) and spec.weight_decay >= 0):
        raise ValueError(f"optimizer_weight_decay must be finite and >= 0, got {spec.weight_decay}")


def direction(spec: OptimizerSpec) -> optax.GradientTransformation | None:
    """The optax transform of the optimizer without its learning rate; None for plain SGD.

    Example:
      >>> tx = optax.chain(direction(spec), optax.scale_by_learning_rate(0.01))  # = optax.adam(0.01)
    """
    check(spec)
    if spec.name == "sgd":
        return None
    if spec.name in ("momentum", "nesterov"):
        return optax.trace(decay=spec.momentum, nesterov=spec.name == "nesterov")
    if spec.name == "rmsprop":
        return optax.scale_by_rms(decay=spec.decay, eps=spec.eps)
    adam = optax.scale_by_adam(b1=spec.b1, b2=spec.b2, eps=spec.eps)
    if spec.name == "adam":
        return adam
    return optax.chain(adam, optax.add_decayed_weights(spec.weight_decay))


class StateLayout(NamedTuple):
    """An optimizer state pytree <-> float32 segments of the store's vector.

    Integer leaves (Adam's step count) are stored as float32, exact up to 2^24
    updates.
    """

    flat: FlatLayout
    dtypes: tuple

    @classmethod
    def of(cls, state) -> "StateLayout":
        leaves = jax.tree.leaves(state)
        return cls(FlatLayout.of(state), tuple(jnp.asarray(leaf).dtype for leaf in leaves))

    def ravel(self, state) -> np.ndarray:
        leaves = jax.tree.leaves(state)
        if not leaves:
            return np.zeros(0, np.float32)
        return np.concatenate([np.asarray(leaf, np.float32).reshape(-1) for leaf in leaves])

    def leaves(self, state) -> list:
        """The state's leaves as float32 arrays, in the flat layout's order."""
        return [jnp.asarray(leaf).astype(jnp.float32) for leaf in jax.tree.leaves(state)]

    def unravel(self, flat):
        state = self.flat.unravel(flat)
        leaves, treedef = jax.tree.flatten(state)
        return jax.tree.unflatten(treedef, [leaf.astype(dtype) for leaf, dtype in
                                            zip(leaves, self.dtypes)])


class Versioned(NamedTuple):
    """A problem's parameters and an optimizer's state as one store vector."""

    direction: Any          # the optax transform (no learning rate)
    params: FlatLayout      # the first params.size floats
    state: StateLayout      # the rest
    init: np.ndarray        # float32 [params.size + state size]: the first version

    @property
    def size(self) -> int:
        return self.init.size

    def step(self, base, grads, scale):
        """(version vector, gradient pytree, s(tau)) -> leaves of the next version.

        Traceable; the leaves (parameters', then state's) concatenate to the
        next version, so the store can take them as segments: no flat output
        (which XLA:CPU computes slowly), no copy.
        """
        d = self.params.size
        params = self.params.unravel(base[:d])
        state = self.state.unravel(base[d:])
        updates, new_state = self.direction.update(grads, state, params)
        new_params = jax.tree.map(lambda p, u: p + scale * u, params, updates)
        return jax.tree.leaves(new_params) + self.state.leaves(new_state)


def versioned(direction_tx, layout: FlatLayout, init_flat: np.ndarray) -> Versioned:
    """The versioned vector of ``direction_tx`` for parameters ``init_flat`` (laid out by ``layout``)."""
    state = direction_tx.init(layout.unravel(jnp.asarray(init_flat)))
    state_layout = StateLayout.of(state)
    init = np.concatenate([np.asarray(init_flat, np.float32), state_layout.ravel(state)])
    return Versioned(direction_tx, layout, state_layout, init)
