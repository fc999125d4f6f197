"""The statistical penalty of staleness, measured with injected staleness.

Asynchronous SGD applies gradients computed on old parameters. Here that is
isolated from everything else (threads, timing, memory traffic): one
sequential loop runs

    theta_{t+1} = theta_t - alpha(tau_t) * grad f_{B_t}(theta_{t - tau_t}),  tau_t ~ P,

keeping the last K iterates in a ring buffer (tau_t > t reads theta_0, i.e.
tau is clamped to t). alpha(tau) comes from the ``asgd.stepsize`` transforms
(``tx.update(g, state, theta, staleness=tau)``), so TAIL-tau learns its CDF
online exactly as in a real run. The penalty of a step-size rule under P is
the number of iterations to reach epsilon compared with sequential SGD
(tau = 0, constant alpha) on the same minibatch sequence.

Objectives (cheap, jit-friendly, flat float32 parameters):
  least_squares  f = 1/(2n) ||A x - b||^2, optimum by lstsq
  logistic       mean log-loss + l2/2 ||w||^2, optimum by Newton's method
  digits_mlp     cross-entropy of a small MLP on sklearn digits (optimum
                 unknown: f* = 0, so epsilon is relative to the initial loss)

"Reached epsilon" means f(theta_t) - f* <= epsilon * (f(theta_0) - f*),
checked every ``eval_every`` iterations.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asgd import rules, stepsize

METHODS = ("constant", "inverse", "fleet", "tail_tau", "mindthestep")


class Objective(NamedTuple):
    """A problem to run injected-staleness SGD on.

    theta0: float32 [d] start; grad: (theta, key) -> minibatch gradient [d];
    loss: (theta) -> full objective; f_star: optimum (0 where unknown);
    alpha, epsilon, eval_every: defaults that converge sequentially in a few
    thousand iterations.
    """

    name: str
    theta0: jax.Array
    grad: Callable
    loss: Callable
    f_star: float
    alpha: float
    epsilon: float
    eval_every: int


def _minibatch(key, n: int, batch: int) -> jax.Array:
    return jax.random.randint(key, (batch,), 0, n)


def least_squares(n: int = 512, d: int = 32, noise: float = 0.5, batch: int = 8,
                  condition: float = 100.0, seed: int = 0) -> Objective:
    """Gaussian design with column scales from 1 down to 1/sqrt(condition), so
    the Hessian's condition number is about ``condition``: the step size is
    limited by the large curvature (where staleness destabilises) and the
    iterations by the small one. f = 1/(2n)||A x - b||^2; f* from lstsq."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) * np.logspace(0.0, -0.5 * math.log10(condition), d)
    b = a @ rng.normal(size=d) + noise * rng.normal(size=n)
    x_star = np.linalg.lstsq(a, b, rcond=None)[0]
    f_star = float(0.5 * np.mean((a @ x_star - b) ** 2))
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def loss(x):
        return 0.5 * jnp.mean((a32 @ x - b32) ** 2)

    def grad(x, key):
        idx = _minibatch(key, n, batch)
        ab, bb = a32[idx], b32[idx]
        return ab.T @ (ab @ x - bb) / batch

    return Objective("least_squares", jnp.zeros(d, jnp.float32), grad, loss, f_star,
                     alpha=0.15, epsilon=0.01, eval_every=1)


def logistic(n: int = 512, d: int = 16, l2: float = 1e-2, batch: int = 8,
             seed: int = 0) -> Objective:
    """Labels from a planted logistic model; f* by Newton's method in float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-x @ rng.normal(size=d)))).astype(np.float64)

    def f64(w):
        z = x @ w
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    w = np.zeros(d)
    for _ in range(50):  # Newton: strongly convex and smooth, converges in a handful
        p = 1.0 / (1.0 + np.exp(-x @ w))
        g = x.T @ (p - y) / n + l2 * w
        h = (x.T * (p * (1 - p))) @ x / n + l2 * np.eye(d)
        w = w - np.linalg.solve(h, g)
    f_star = f64(w)
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

    def loss_on(w, xb, yb):
        z = xb @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - yb * z) + 0.5 * l2 * jnp.dot(w, w)

    def grad(w, key):
        idx = _minibatch(key, n, batch)
        return jax.grad(loss_on)(w, x32[idx], y32[idx])

    return Objective("logistic", jnp.zeros(d, jnp.float32), grad,
                     lambda w: loss_on(w, x32, y32), f_star,
                     alpha=0.3, epsilon=0.03, eval_every=1)


def digits_mlp(hidden: Sequence[int] = (32,), batch: int = 16, seed: int = 0) -> Objective:
    """The project's MLP on the digits training split (f* unknown, taken as 0)."""
    from asgd import data, models
    from asgd.params import FlatLayout

    train = data.load("digits", "train")
    model = models.get("mlp")
    params = model.init(jax.random.key(seed), train.input_shape, train.num_classes,
                        hidden=tuple(hidden))
    layout = FlatLayout.of(params)
    xs, ys = jnp.asarray(train.x), jnp.asarray(train.y)
    n = int(ys.shape[0])

    def loss_on(flat, xb, yb):
        return models.cross_entropy(model.apply(layout.unravel(flat), xb), yb)

    def grad(flat, key):
        idx = _minibatch(key, n, batch)
        return jax.grad(loss_on)(flat, xs[idx], ys[idx])

    return Objective("digits_mlp", jnp.asarray(layout.ravel(params)), grad,
                     lambda flat: loss_on(flat, xs, ys), 0.0,
                     alpha=0.1, epsilon=0.1, eval_every=25)


OBJECTIVES = {"least_squares": least_squares, "logistic": logistic, "digits_mlp": digits_mlp}


# ----------------------------------------------------------- the SGD loops ----

def ring_size(max_tau: int) -> int:
    """Ring-buffer length: the smallest power of two > max_tau (few recompiles)."""
    return 1 << int(max(int(max_tau), 0)).bit_length()


def injected_sgd(obj: Objective, tx, taus, key, ring: int, eval_every: int):
    """SGD with injected staleness; traceable (jit/vmap it).

    Args:
      obj: the objective.
      tx: a step-size transform from ``asgd.stepsize`` (takes ``staleness=``).
      taus: int32 [steps] staleness of each step; clamped to [0, min(t, ring-1)].
      key: PRNG key; step t samples its minibatch with ``fold_in(key, t)``.
      ring: ring-buffer length (> the largest tau wanted).
      eval_every: the full loss is recorded every this many steps; must
        divide steps.

    Returns:
      (final theta, losses [steps // eval_every + 1]); losses[k] is
      f(theta_{k * eval_every}).
    """
    taus = jnp.asarray(taus, jnp.int32)
    steps = taus.shape[0]
    if steps % eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({eval_every})")

    def step(carry, x):
        theta, buf, state = carry
        t, tau = x
        tau = jnp.minimum(jnp.minimum(tau, t), ring - 1)
        g = obj.grad(buf[(t - tau) % ring], jax.random.fold_in(key, t))
        updates, state = tx.update(g, state, theta, staleness=tau)
        theta = theta + updates
        return (theta, buf.at[(t + 1) % ring].set(theta), state), None

    def chunk(carry, x):
        carry, _ = jax.lax.scan(step, carry, x)
        return carry, obj.loss(carry[0])

    theta0 = obj.theta0
    buf = jnp.broadcast_to(theta0, (ring, theta0.shape[0]))
    xs = (jnp.arange(steps, dtype=jnp.int32).reshape(-1, eval_every),
          taus.reshape(-1, eval_every))
    (theta, _, _), losses = jax.lax.scan(chunk, (theta0, buf, tx.init(theta0)), xs)
    return theta, jnp.concatenate([obj.loss(theta0)[None], losses])


def plain_sgd(obj: Objective, tx, steps: int, key) -> jax.Array:
    """Sequential SGD theta_{t+1} = theta_t + tx.update(grad f_{B_t}(theta_t), staleness=0),
    with no ring buffer: the reference that injected SGD with tau = 0 must
    equal bit for bit. Traceable; returns the final theta."""

    def step(carry, t):
        theta, state = carry
        g = obj.grad(theta, jax.random.fold_in(key, t))
        updates, state = tx.update(g, state, theta, staleness=jnp.int32(0))
        return (theta + updates, state), None

    (theta, _), _ = jax.lax.scan(step, (obj.theta0, tx.init(obj.theta0)),
                                 jnp.arange(steps, dtype=jnp.int32))
    return theta


# ------------------------------------------------------------- experiment ----

def make_stepsize(name: str, alpha: float, model, threads: int):
    """The step-size transform ``name`` (one of METHODS) for staleness model P.

    Built by ``asgd.rules`` from the default config's step-size fields, as
    ``train.py`` builds it, with this name, alpha and m; MindTheStep is given
    the true injected P (an oracle fit) and derives its target from it.
    """
    if name not in METHODS:
        raise ValueError(f"unknown step size {name!r}; choose from {list(METHODS)}")
    from asgd.run import default_config, stepsize_spec
    cfg = default_config()
    cfg.stepsize, cfg.learning_rate, cfg.threads = name, float(alpha), int(threads)
    return rules.transform(stepsize_spec(cfg), model=model)


def iterations_to(losses: np.ndarray, f_star: float, epsilon: float, eval_every: int) -> float:
    """First recorded iteration with f - f* <= epsilon (f0 - f*); inf if never
    (or if the run diverged first)."""
    losses = np.asarray(losses, np.float64)
    gap = (losses - f_star) / max(losses[0] - f_star, 1e-300)
    hit = np.flatnonzero(gap <= epsilon)
    bad = np.flatnonzero(~np.isfinite(gap))
    if hit.size == 0 or (bad.size and bad[0] < hit[0]):
        return math.inf
    return float(hit[0] * eval_every)


def sample_taus(model, steps: int, seeds: int, seed: int) -> np.ndarray:
    """int32 [seeds, steps]: tau ~ P, one numpy Generator per (seed, s)."""
    return np.stack([np.asarray(model.sample(np.random.default_rng([seed, s]), steps), np.int32)
                     for s in range(seeds)])


def penalty(obj: Objective, model, methods: Sequence[str] = METHODS, threads: int | None = None,
            alpha: float | None = None, epsilon: float | None = None, steps: int = 3000,
            seeds: int = 5, seed: int = 0, eval_every: int | None = None) -> dict:
    """Iterations to epsilon under injected staleness P, per step-size rule.

    Every rule and the sequential baseline (tau = 0, constant alpha) see the
    same minibatch keys and, per seed, the same tau sequence (common random
    numbers), and run vmapped over seeds in one jitted call per rule.

    Args:
      obj: the objective; its alpha/epsilon/eval_every are the defaults.
      model: staleness model P (``asgd.staleness``), e.g. Poisson(m - 1).
      methods: names from METHODS.
      threads: m for FLeet; default round(E[tau]) + 1.
      steps: iterations per run (a multiple of eval_every); runs that do not
        reach epsilon count as inf.
      seeds, seed: number of repetitions and the base seed.

    Returns:
      {"objective", "model", "alpha", "epsilon", "steps", "seeds",
       "sequential": [iters per seed],
       "methods": {name: {"iters": [per seed], "ratio": [iters / sequential],
                          "reached": count, "mean", "std", "ratio_mean", "ratio_std"}}}
      mean/std are over the seeds that reached epsilon (None if none did).
    """
    alpha = obj.alpha if alpha is None else float(alpha)
    epsilon = obj.epsilon if epsilon is None else float(epsilon)
    eval_every = obj.eval_every if eval_every is None else int(eval_every)
    if steps <= 0 or steps % eval_every:
        raise ValueError(f"steps must be a positive multiple of eval_every ({eval_every}), got {steps}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    threads = int(round(model.mean())) + 1 if threads is None else int(threads)
    taus = sample_taus(model, steps, seeds, seed)
    keys = jax.random.split(jax.random.key(seed), seeds)
    ring = ring_size(int(taus.max()))

    def run(tx, taus):
        fn = jax.jit(jax.vmap(lambda t, k: injected_sgd(obj, tx, t, k, ring, eval_every)[1]))
        losses = np.asarray(fn(jnp.asarray(taus), keys))
        return [iterations_to(l, obj.f_star, epsilon, eval_every) for l in losses]

    seq = run(stepsize.constant(alpha), np.zeros_like(taus))
    out = {"objective": obj.name, "model": repr(model), "alpha": alpha, "epsilon": epsilon,
           "steps": steps, "seeds": seeds, "threads": threads, "sequential": seq,
           "sequential_stats": _stats(seq), "methods": {}}
    for name in methods:
        iters = run(make_stepsize(name, alpha, model, threads), taus)
        ratio = [a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.inf
                 for a, b in zip(iters, seq)]
        out["methods"][name] = {"iters": iters, "ratio": ratio, **_stats(iters),
                                **{f"ratio_{k}": v for k, v in _stats(ratio).items()
                                   if k in ("mean", "std")}}
    return out


def _stats(values) -> dict:
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    return {"reached": int(v.size), "mean": float(v.mean()) if v.size else None,
            "std": float(v.std()) if v.size else None}
