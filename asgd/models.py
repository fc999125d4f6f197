"""Pure-JAX models: each is a pair of functions ``init`` and ``apply``.

``init(key, input_shape, num_classes, **options) -> params`` builds a pytree of
float32 arrays from an explicit PRNG key; ``apply(params, x) -> logits`` is a
pure function of it, so workers can jit and differentiate it freely.
Inputs are NHWC images, ``input_shape = (height, width, channels)``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax


class Model(NamedTuple):
    """A model as two pure functions."""

    init: Callable[..., dict]
    apply: Callable[[dict, jax.Array], jax.Array]


# ---------------------------------------------------------------- layers ----

def _dense_init(key, fan_in: int, fan_out: int) -> dict:
    """He-normal weights (suited to ReLU) and zero biases."""
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32)
    return {"w": w * math.sqrt(2.0 / fan_in), "b": jnp.zeros((fan_out,), jnp.float32)}


def _conv_init(key, size: int, c_in: int, c_out: int) -> dict:
    """He-normal HWIO kernel and zero biases."""
    fan_in = size * size * c_in
    w = jax.random.normal(key, (size, size, c_in, c_out), jnp.float32)
    return {"w": w * math.sqrt(2.0 / fan_in), "b": jnp.zeros((c_out,), jnp.float32)}


def _dense(p: dict, x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def _conv(p: dict, x: jax.Array, padding: str) -> jax.Array:
    y = jax.lax.conv_general_dilated(
            x, p["w"], window_strides=(1, 1), padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


def _max_pool(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 (odd sizes are floored, as in VALID pooling)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


# ------------------------------------------------------------------- MLP ----

def mlp_init(key, input_shape: Sequence[int], num_classes: int,
             hidden: Sequence[int] = (128, 128, 128)) -> dict:
    """MLP with ReLU hidden layers; the default is the study's 3x128."""
    sizes = [math.prod(input_shape), *hidden, num_classes]
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"dense{i}": _dense_init(k, a, b)
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    h = _flatten(x)
    n = len(params)
    for i in range(n):
        h = _dense(params[f"dense{i}"], h)
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


# ------------------------------------------------------------------- CNN ----

def cnn_init(key, input_shape: Sequence[int], num_classes: int) -> dict:
    """The small convnet of the Leashed-SGD study.

    conv 3x3 -> 4 channels, max-pool 2, conv 3x3 -> 8 channels, max-pool 2,
    dense 128 ReLU, dense -> classes. Convolutions use SAME padding.
    """
    h, w, c = input_shape
    k1, k2, k3, k4 = jax.random.split(key, 4)
    flat = (h // 2 // 2) * (w // 2 // 2) * 8
    return {"conv0": _conv_init(k1, 3, c, 4), "conv1": _conv_init(k2, 3, 4, 8),
            "dense0": _dense_init(k3, flat, 128), "dense1": _dense_init(k4, 128, num_classes)}


def cnn_apply(params: dict, x: jax.Array) -> jax.Array:
    h = _max_pool(jax.nn.relu(_conv(params["conv0"], x, "SAME")))
    h = _max_pool(jax.nn.relu(_conv(params["conv1"], h, "SAME")))
    h = jax.nn.relu(_dense(params["dense0"], _flatten(h)))
    return _dense(params["dense1"], h)


# ----------------------------------------------------------------- LeNet ----

def _lenet_paddings(height: int) -> tuple[str, str]:
    """Padding of LeNet-5's two 5x5 convolutions for an input height.

    32x32 (CIFAR-10) uses VALID throughout, as the original; 28x28 (MNIST) pads
    the first convolution (the classic "pad MNIST to 32"); smaller inputs such
    as the 8x8 digits pad both so the feature maps do not vanish.
    """
    first = "VALID" if height >= 32 else "SAME"
    after_first = height - 4 if first == "VALID" else height
    second = "VALID" if after_first // 2 >= 10 else "SAME"
    return first, second


def lenet_init(key, input_shape: Sequence[int], num_classes: int) -> dict:
    """LeNet-5 style: conv5x5-6, pool, conv5x5-16, pool, dense 120, 84, classes."""
    h, w, c = input_shape
    first, second = _lenet_paddings(h)
    size = lambda n, pad: n - 4 if pad == "VALID" else n
    h2 = size(size(h, first) // 2, second) // 2
    w2 = size(size(w, first) // 2, second) // 2
    k = jax.random.split(key, 5)
    return {"conv0": _conv_init(k[0], 5, c, 6), "conv1": _conv_init(k[1], 5, 6, 16),
            "dense0": _dense_init(k[2], h2 * w2 * 16, 120), "dense1": _dense_init(k[3], 120, 84),
            "dense2": _dense_init(k[4], 84, num_classes)}


def lenet_apply(params: dict, x: jax.Array) -> jax.Array:
    first, second = _lenet_paddings(x.shape[1])
    h = _max_pool(jax.nn.relu(_conv(params["conv0"], x, first)))
    h = _max_pool(jax.nn.relu(_conv(params["conv1"], h, second)))
    h = jax.nn.relu(_dense(params["dense0"], _flatten(h)))
    h = jax.nn.relu(_dense(params["dense1"], h))
    return _dense(params["dense2"], h)


MODELS = {
    "mlp": Model(mlp_init, mlp_apply),
    "cnn": Model(cnn_init, cnn_apply),
    "lenet": Model(lenet_init, lenet_apply),
}


def get(name: str) -> Model:
    """Look a model up by name; raises ValueError listing the valid names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


# ------------------------------------------------------- loss and accuracy ---

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of argmax predictions equal to the labels."""
    return (jnp.argmax(logits, axis=-1) == labels).mean()
