"""The params pytree <-> one contiguous float32 vector.

The parameter store holds exactly one flat float32 vector. Workers pass that
vector (a zero-copy view of a store buffer) *into* a jitted gradient and get
the gradient back as a pytree: on XLA:CPU a jitted function that *returns*
one concatenated vector hits a slow fusion path (~45 ms instead of ~0.35 ms
for a batch-16 MLP step, jax 0.10), while slicing a flat input is fast.
The gradient leaves, in ``jax.tree.leaves`` order, concatenate to the flat
layout, so the store can apply them segment by segment without a concat.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np


class FlatLayout(NamedTuple):
    """Where each leaf of a params pytree lives in the flat vector."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def of(cls, params) -> "FlatLayout":
        leaves, treedef = jax.tree.flatten(params)
        shapes = tuple(tuple(leaf.shape) for leaf in leaves)
        sizes = [math.prod(s) for s in shapes]
        offsets = tuple(int(o) for o in np.cumsum([0, *sizes[:-1]]))
        return cls(treedef, shapes, offsets, int(sum(sizes)))

    def ravel(self, params) -> np.ndarray:
        """Copy a params pytree into a new contiguous float32 vector."""
        leaves = jax.tree.leaves(params)
        return np.concatenate([np.asarray(leaf, np.float32).reshape(-1) for leaf in leaves])

    def unravel(self, flat):
        """Params pytree of views/slices of ``flat``; traceable under jit."""
        leaves = [flat[o:o + math.prod(s)].reshape(s) for o, s in zip(self.offsets, self.shapes)]
        return jax.tree.unflatten(self.treedef, leaves)
