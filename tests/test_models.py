import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd import models
from asgd.params import FlatLayout
from asgd.problem import make_grad_fn

SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_output_shapes(name, dataset):
    model = models.get(name)
    params = model.init(jax.random.key(0), SHAPES[dataset], 10)
    x = jnp.zeros((3, *SHAPES[dataset]), jnp.float32)
    logits = model.apply(params, x)
    assert logits.shape == (3, 10)
    assert bool(jnp.isfinite(logits).all())


def test_study_mlp_has_the_papers_size():
    params = models.get("mlp").init(jax.random.key(0), (28, 28, 1), 10)
    assert FlatLayout.of(params).size == 134_794  # 784-128-128-128-10


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.get("resnet")


def test_init_is_a_function_of_the_key():
    init = models.get("cnn").init
    a, b = init(jax.random.key(1), (8, 8, 1), 10), init(jax.random.key(1), (8, 8, 1), 10)
    c = init(jax.random.key(2), (8, 8, 1), 10)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not np.array_equal(a["conv0"]["w"], c["conv0"]["w"])


def test_flatten_unflatten_round_trip():
    params = models.get("lenet").init(jax.random.key(0), (28, 28, 1), 10)
    layout = FlatLayout.of(params)
    flat = layout.ravel(params)
    assert flat.dtype == np.float32 and flat.shape == (layout.size,)
    back = layout.unravel(flat)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The gradient leaves concatenate to the flat layout, in order.
    assert np.array_equal(np.concatenate([np.ravel(l) for l in jax.tree.leaves(back)]), flat)


def enable_x64():
    """jax.enable_x64(True), or on older jax (before the top-level name) the experimental one."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64
    return experimental_enable_x64(True)


def test_gradient_matches_finite_differences_in_float64():
    with enable_x64():
        model = models.get("mlp")
        params = model.init(jax.random.key(0), (3, 2, 1), 4, hidden=(5,))
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        layout = FlatLayout.of(params)
        flat = jnp.concatenate([jnp.ravel(p) for p in jax.tree.leaves(params)])
        x = jax.random.normal(jax.random.key(1), (7, 3, 2, 1), jnp.float64)
        y = jnp.arange(7) % 4
        loss = lambda f: models.cross_entropy(model.apply(layout.unravel(f), x), y)
        grad = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(
            make_grad_fn(model, layout)(flat, x, y)[1])])
        eps = 1e-6
        numeric = np.array([(loss(flat.at[i].add(eps)) - loss(flat.at[i].add(-eps))) / (2 * eps)
                            for i in range(flat.size)])
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-6, atol=1e-9)


def test_loss_and_accuracy():
    logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    labels = jnp.array([0, 1, 1])
    assert float(models.accuracy(logits, labels)) == pytest.approx(2 / 3)
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-3.0)), np.log1p(np.exp(1.0))])
    assert float(models.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-5)
