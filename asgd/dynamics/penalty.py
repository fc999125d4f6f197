"""The statistical penalty of staleness, measured with injected staleness.

Asynchronous SGD applies gradients computed on old parameters. Here that is
isolated from everything else (threads, timing, memory traffic): one
sequential loop runs

    theta_{t+1} = theta_t - alpha(tau_t) * grad f_{B_t}(theta_{t - tau_t}),  tau_t ~ P,

keeping the last K iterates in a ring buffer (tau_t > t reads theta_0, i.e.
tau is clamped to t). alpha(tau) comes from the ``asgd.stepsize`` transforms
built as train.py builds them (``make_stepsize``), so TAIL-tau learns its CDF
and MindTheStep fits its model online exactly as in a real run. Every step
size here is s(tau) g with a state that does not depend on g, so a rule is
run as its per-step step sizes along the tau sequence (``step_sizes``), bit
for bit the same iterates, and all rules share one compiled, vmapped loop
(``trajectories``). The penalty of a step-size rule under P is the number of
iterations to reach epsilon compared with sequential SGD (tau = 0, constant
alpha) on the same minibatch sequence: ``penalty`` for one objective and P,
``sweep`` for the grid of docs/mindthestep.md (objectives x staleness
sources x alpha / alpha*, relative to sequential SGD at its best alpha*).

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
import optax

from asgd import rules, stepsize

# The rules the sweep compares: the baselines and every MindTheStep variant
# (``mindthestep:TARGET``); "mindthestep" alone is the default variant.
RULES = ("constant", "inverse", "fleet", "tail_tau", "mindthestep:tilted",
         "mindthestep:uniform", "mindthestep:geometric")
METHODS = RULES + ("mindthestep",)


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

def make_stepsize(name: str, alpha: float, threads: int):
    """The step-size transform ``name`` (one of METHODS) as ``train.py`` builds it.

    Built by ``asgd.rules`` from the default config's step-size fields with
    this name, alpha and m (``mindthestep:TARGET`` picks a variant's target);
    the injected staleness is never 0, so the rule is not replaced by alpha.
    MindTheStep is fitted online from the injected tau, as in a run: the
    Poisson(m - 1) prior for the first window, then the best fit, refitted.
    """
    if name not in METHODS:
        raise ValueError(f"unknown step size {name!r}; choose from {list(METHODS)}")
    import dataclasses

    from asgd.run import default_config, stepsize_spec
    rule, _, target = name.partition(":")
    cfg = default_config()
    cfg.stepsize, cfg.learning_rate, cfg.threads = rule, float(alpha), max(int(threads), 2)
    if target:
        cfg.stepsize_target = target
    spec = dataclasses.replace(stepsize_spec(cfg), staleness_free=False)
    return rules.transform(spec)


def step_sizes(tx, taus) -> np.ndarray:
    """float32 [seeds, steps]: alpha_t of every step, each row ``tx`` along its tau sequence.

    The transform applied to a unit gradient, its state advanced by each tau
    as in ``injected_sgd`` (all of ``asgd.stepsize``'s step sizes are s(tau) g
    with a state that does not depend on g, so this is exactly what they
    apply there; TAIL-tau and MindTheStep learn online along the sequence).
    """
    taus = jnp.asarray(taus, jnp.int32)

    def one(row):
        def body(state, tau):
            u, state = tx.update(jnp.ones((), jnp.float32), state, staleness=tau)
            return state, -u
        return jax.lax.scan(body, tx.init(jnp.zeros((), jnp.float32)), row)[1]

    return np.asarray(jax.jit(jax.vmap(one))(taus), np.float32)


def scheduled(steps) -> optax.GradientTransformationExtraArgs:
    """The update -steps[t] g at the t-th call (steps: float32 [T], may be traced)."""
    steps = jnp.asarray(steps, jnp.float32)

    def update(updates, count, params=None, **extra_args):
        del params, extra_args
        return stepsize._descend(updates, steps[count]), count + 1

    return optax.GradientTransformationExtraArgs(lambda params: jnp.int32(0), update)


def clamped(taus: np.ndarray, ring: int) -> np.ndarray:
    """tau_t as ``injected_sgd`` uses it: at most t and at most ring - 1."""
    taus = np.asarray(taus, np.int32)
    return np.minimum(np.minimum(taus, np.arange(taus.shape[-1], dtype=np.int32)), ring - 1)


_RUNS: dict = {}


def trajectories(obj: Objective, steps: np.ndarray, taus: np.ndarray, keys, ring: int,
                 eval_every: int) -> np.ndarray:
    """Losses [rows, seeds, T // eval_every + 1] of injected SGD for every (row, seed).

    steps, taus: [rows, seeds, T]; keys: [seeds] (row r, seed s uses keys[s],
    so every row sees the same minibatches). One jitted, vmapped call,
    compiled once per (objective, ring, eval_every, shapes).
    """
    key = (id(obj), ring, eval_every)
    if key not in _RUNS:
        def one(st, ta, k):
            return injected_sgd(obj, scheduled(st), ta, k, ring, eval_every)[1]
        _RUNS[key] = (obj, jax.jit(jax.vmap(jax.vmap(one), in_axes=(0, 0, None))))
    return np.asarray(_RUNS[key][1](jnp.asarray(steps, jnp.float32), jnp.asarray(taus, jnp.int32),
                                    keys), np.float64)


# A run that reached f - f* > BLOWUP (f0 - f*), or a non-finite loss, before epsilon diverged.
BLOWUP = 10.0


def outcome(losses: np.ndarray, f_star: float, epsilon: float, eval_every: int
            ) -> tuple[float, bool]:
    """(iterations to epsilon or inf, diverged): first recorded iteration with
    f - f* <= epsilon (f0 - f*), unless the run blew up (non-finite, or a gap
    above BLOWUP times the initial one) before; then (inf, True)."""
    losses = np.asarray(losses, np.float64)
    gap = (losses - f_star) / max(losses[0] - f_star, 1e-300)
    hit = np.flatnonzero(gap <= epsilon)
    bad = np.flatnonzero(~np.isfinite(gap) | (gap > BLOWUP))
    first_hit = hit[0] if hit.size else math.inf
    if bad.size and bad[0] < first_hit:
        return math.inf, True
    return (float(first_hit * eval_every) if hit.size else math.inf), False


def iterations_to(losses: np.ndarray, f_star: float, epsilon: float, eval_every: int) -> float:
    """First recorded iteration with f - f* <= epsilon (f0 - f*); inf if never
    (or if the run diverged first)."""
    return outcome(losses, f_star, epsilon, eval_every)[0]


def sample_taus(model, steps: int, seeds: int, seed: int) -> np.ndarray:
    """int32 [seeds, steps]: tau ~ P, one numpy Generator per (seed, s)."""
    return np.stack([np.asarray(model.sample(np.random.default_rng([seed, s]), steps), np.int32)
                     for s in range(seeds)])


def ratio_interval(iters, reference) -> dict:
    """The penalty iters / reference per seed, over the seeds where both are finite:
    geometric mean and its 95 % t-interval (on the log ratio), and the count."""
    logs = np.array([math.log(a / b) for a, b in zip(iters, reference)
                     if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0])
    out = {"n": int(logs.size), "gmean": None, "low": None, "high": None}
    if logs.size:
        out["gmean"] = float(math.exp(logs.mean()))
    if logs.size >= 2:
        from scipy import stats
        half = stats.t.ppf(0.975, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
        out["low"], out["high"] = float(math.exp(logs.mean() - half)), float(math.exp(logs.mean() + half))
    return out


# versus(): a paired ratio counts as a difference only beyond 10 % either way.
PRACTICAL = 1.1


def versus(rule: dict, reference: dict, margin: int = 2) -> str:
    """"better", "worse", "same" or "none" (neither reached epsilon once): ``rule`` vs
    ``reference``, two summaries of the same seeds.

    A rule is better if it reached epsilon on at least ``margin`` more seeds, or,
    on the seeds both reached, the 95 % t-interval of its paired iteration
    ratio lies below 1 and its geometric mean below 1/PRACTICAL (10 % fewer
    iterations); worse is the mirror image; anything else is "same".
    """
    a, b = rule["iters"], reference["iters"]
    if rule["reached"] == 0 and reference["reached"] == 0:
        return "none"
    if rule["reached"] >= reference["reached"] + margin:
        return "better"
    if rule["reached"] <= reference["reached"] - margin:
        return "worse"
    r = ratio_interval(a, b)
    if r["low"] is not None and r["high"] < 1.0 and r["gmean"] < 1.0 / PRACTICAL:
        return "better"
    if r["low"] is not None and r["low"] > 1.0 and r["gmean"] > PRACTICAL:
        return "worse"
    return "same"


def _summarise(results: Sequence[tuple[float, bool]], reference) -> dict:
    iters = [r[0] for r in results]
    diverged = sum(r[1] for r in results)
    return {"iters": iters, "reached": sum(math.isfinite(i) for i in iters),
            "diverged": diverged, "not_reached": len(iters) - diverged
            - sum(math.isfinite(i) for i in iters),
            "ratio": ratio_interval(iters, reference), **_stats(iters)}


def penalty(obj: Objective, model, methods: Sequence[str] = METHODS, threads: int | None = None,
            alpha: float | None = None, epsilon: float | None = None, steps: int = 3000,
            seeds: int = 5, seed: int = 0, eval_every: int | None = None) -> dict:
    """Iterations to epsilon under injected staleness P, per step-size rule.

    Every rule and the sequential baseline (tau = 0, constant alpha) see the
    same minibatch keys and, per seed, the same tau sequence (common random
    numbers), and run vmapped in one jitted call.

    Args:
      obj: the objective; its alpha/epsilon/eval_every are the defaults.
      model: staleness model P (``asgd.staleness``), e.g. Poisson(m - 1).
      methods: names from METHODS.
      threads: m for FLeet and MindTheStep's prior and targets; default round(E[tau]) + 1.
      steps: iterations per run (a multiple of eval_every); runs that do not
        reach epsilon count as inf.
      seeds, seed: number of repetitions and the base seed.

    Returns:
      {"objective", "model", "alpha", "epsilon", "steps", "seeds", "threads",
       "sequential": [iters per seed], "sequential_stats",
       "methods": {name: {"iters": [per seed], "reached", "diverged", "not_reached",
                          "ratio": {"gmean", "low", "high", "n"} (iters / sequential's),
                          "mean", "std"}}}
      mean/std are over the seeds that reached epsilon (None if none did).
    """
    alpha = obj.alpha if alpha is None else float(alpha)
    epsilon = obj.epsilon if epsilon is None else float(epsilon)
    eval_every = obj.eval_every if eval_every is None else int(eval_every)
    if steps <= 0 or steps % eval_every:
        raise ValueError(f"steps must be a positive multiple of eval_every ({eval_every}), got {steps}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown step size {name!r}; choose from {list(METHODS)}")
    threads = int(round(model.mean())) + 1 if threads is None else int(threads)
    raw = sample_taus(model, steps, seeds, seed)
    ring = ring_size(int(raw.max()))
    taus = clamped(raw, ring)
    keys = jax.random.split(jax.random.key(seed), seeds)
    rows = [np.full((seeds, steps), alpha, np.float32)]
    rows += [alpha * step_sizes(make_stepsize(name, 1.0, threads), taus) for name in methods]
    row_taus = [np.zeros_like(taus)] + [taus] * len(methods)
    losses = trajectories(obj, np.stack(rows), np.stack(row_taus), keys, ring, eval_every)
    results = [[outcome(l, obj.f_star, epsilon, eval_every) for l in row] for row in losses]
    seq = [r[0] for r in results[0]]
    out = {"objective": obj.name, "model": repr(model), "alpha": alpha, "epsilon": epsilon,
           "steps": steps, "seeds": seeds, "threads": threads, "sequential": seq,
           "sequential_stats": _stats(seq), "methods": {}}
    for name, res in zip(methods, results[1:]):
        out["methods"][name] = _summarise(res, seq)
    return out


def _stats(values) -> dict:
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    return {"reached": int(v.size), "mean": float(v.mean()) if v.size else None,
            "std": float(v.std()) if v.size else None}


# ------------------------------------------------------------------ sweep ----

# alpha grid for the sequential optimum: the objective's alpha times 2^(k/2).
ALPHA_GRID = tuple(2.0 ** (k / 2) for k in range(-6, 7))
MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)
# Per objective: (epsilon, eval_every, steps) of the sweep.
SWEEP_SETTINGS = {"least_squares": (0.01, 1, 2000), "logistic": (0.03, 1, 2000),
                  "digits_mlp": (0.05, 10, 2000)}


def sequential_optimum(obj: Objective, epsilon: float, eval_every: int, steps: int,
                       seeds: int, seed: int, grid: Sequence[float] = ALPHA_GRID) -> dict:
    """alpha* = the alpha of ``obj.alpha * grid`` with the fewest iterations to epsilon
    for sequential SGD (geometric mean over seeds; every seed must reach it),
    and its iterations per seed."""
    keys = jax.random.split(jax.random.key(seed), seeds)
    alphas = [obj.alpha * g for g in grid]
    steps_rows = np.stack([np.full((seeds, steps), a, np.float32) for a in alphas])
    losses = trajectories(obj, steps_rows, np.zeros(steps_rows.shape, np.int32), keys, 1,
                          eval_every)
    table = []
    for a, row in zip(alphas, losses):
        iters = [outcome(l, obj.f_star, epsilon, eval_every)[0] for l in row]
        ok = all(math.isfinite(i) and i > 0 for i in iters)
        table.append({"alpha": a, "iters": iters,
                      "gmean": float(np.exp(np.mean(np.log(iters)))) if ok else math.inf})
    best = min(table, key=lambda r: r["gmean"])
    if not math.isfinite(best["gmean"]):
        raise ValueError(f"{obj.name}: sequential SGD reaches epsilon={epsilon} in {steps} "
                         "steps at no alpha of the grid")
    return {"alpha": best["alpha"], "iters": best["iters"], "grid": table}


def sweep(objectives: Sequence[Objective], sources: Sequence[tuple[str, object]],
          methods: Sequence[str] = RULES, multiples: Sequence[float] = MULTIPLES,
          seeds: int = 10, seed: int = 0, settings: dict | None = None,
          progress: Callable[[str], None] | None = None) -> dict:
    """The penalty grid: every objective x staleness source x alpha multiple x rule.

    For each objective, alpha* is sequential SGD's optimum (``sequential_optimum``);
    each cell runs every rule at alpha = multiple * alpha* under the source's
    staleness, and reports iterations to epsilon relative to sequential SGD
    at alpha* on the same seeds and minibatches (``ratio_interval``: the
    geometric mean and its 95 % interval), with the seeds that diverged or
    never reached epsilon. The per-step step sizes of a rule depend only on
    the tau sequence, so they are computed once per source at alpha = 1 and
    scaled (every rule here is linear in alpha).

    Args:
      objectives: the problems.
      sources: (label, staleness model) pairs; m = round(E tau) + 1.
      methods: names from METHODS.
      multiples: alpha / alpha*.
      seeds, seed: repetitions (the tau sequences and minibatches of seed s
        are the same for every objective, source-wise, and every rule).
      settings: objective name -> (epsilon, eval_every, steps); SWEEP_SETTINGS by default.

    Returns:
      {"seeds", "methods", "multiples", "objectives": {name: {"alpha_star", "epsilon",
       "steps", "eval_every", "sequential_grid", "sources": {label: {"threads", "mean",
       "cells": {multiple: {"sequential": summary, method: summary}}}}}}}
    """
    settings = SWEEP_SETTINGS if settings is None else settings
    say = progress or (lambda text: None)
    horizon = max(settings[o.name][2] for o in objectives)
    shapes, source_taus = {}, {}
    for label, model in sources:  # every rule's alpha_t / alpha along each tau sequence
        threads = int(round(model.mean())) + 1
        raw = sample_taus(model, horizon, seeds, seed)
        ring = ring_size(int(raw.max()))
        taus = clamped(raw, ring)
        source_taus[label] = (taus, ring, threads, float(model.mean()))
        shapes[label] = {name: step_sizes(make_stepsize(name, 1.0, threads), taus)
                         for name in methods}
        say(f"step sizes: {label}")
    out = {"seeds": seeds, "seed": seed, "methods": list(methods), "multiples": list(multiples),
           "objectives": {}}
    keys = jax.random.split(jax.random.key(seed), seeds)
    for obj in objectives:
        epsilon, eval_every, steps = settings[obj.name]
        best = sequential_optimum(obj, epsilon, eval_every, steps, seeds, seed)
        reference = best["iters"]
        entry = {"alpha_star": best["alpha"], "epsilon": epsilon, "eval_every": eval_every,
                 "steps": steps, "sequential_grid": best["grid"], "sources": {}}
        say(f"{obj.name}: alpha* = {best['alpha']:.4g}")
        for label, _ in sources:
            taus, ring, threads, mean = source_taus[label]
            taus = taus[:, :steps]
            cells = {}
            for multiple in multiples:
                alpha = multiple * best["alpha"]
                rows = [np.full((seeds, steps), alpha, np.float32)]
                rows += [alpha * shapes[label][name][:, :steps] for name in methods]
                row_taus = [np.zeros_like(taus)] + [taus] * len(methods)
                losses = trajectories(obj, np.stack(rows), np.stack(row_taus), keys, ring,
                                      eval_every)
                results = [[outcome(l, obj.f_star, epsilon, eval_every) for l in row]
                           for row in losses]
                cell = {"sequential": _summarise(results[0], reference)}
                for name, res in zip(methods, results[1:]):
                    cell[name] = _summarise(res, reference)
                cells[str(multiple)] = cell
            entry["sources"][label] = {"threads": threads, "mean": mean, "cells": cells}
            say(f"{obj.name}: {label}")
        out["objectives"][obj.name] = entry
    return out
