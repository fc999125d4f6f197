"""A run's step-size spec -> the optax transform and the executors' update rule.

The one factory behind ``train.py``'s ``stepsize*`` fields, the study and
``asgd.dynamics penalty``: ``transform(spec)`` builds the rule named by
``spec.name`` from ``asgd.stepsize``; ``check(spec)`` validates the same
parameters with numpy only (``asgd.run`` calls it before JAX starts);
``update_rule(spec)`` is what an executor applies per update.

Derived parameters (a field <= 0 asks for them):
  MindTheStep's model P:  Poisson/CMP lam = m - 1, geometric p = 1/m (mean m - 1);
                          ``empirical`` is fitted online and starts from Poisson(m - 1).
  MindTheStep's target Q: uniform T = P's 0.99-quantile (``mindthestep.uniform_horizon``),
                          geometric mu = 1 - 1/m.
With one worker (m = 1) and a derived model, staleness is always 0 and
MindTheStep is the constant alpha.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from asgd import mindthestep
from asgd import staleness as st
from asgd.specs import StepSizeSpec

STEPSIZES = ("constant", "inverse", "fleet", "tail_tau", "mindthestep", "dc_asgd")
MODELS = ("poisson", "geometric", "cmp", "empirical")
TARGETS = ("uniform", "geometric")
TAIL_TAU_WINDOW = 1000  # TAIL-tau's CDF window when spec.window <= 0


class MindTheStepParts(NamedTuple):
    """P (the prior when fitted online), Q, and the online fit (None: P as given)."""

    model: Any
    target: Any
    fit: Callable | None


class UpdateRule(NamedTuple):
    """What an executor applies per update, x <- x + s(tau) * g'.

    ``transform`` gives s(tau) (``-alpha(tau)``; the C store takes it as a
    table); g' is the gradient, or with ``dc_lambda > 0`` DC-ASGD's
    ``stepsize.delay_compensation`` of it, computed per CAS attempt from
    theta_now and theta_read, or with an ``optimizer`` (not plain SGD) the
    optimizer's direction, whose state the store versions with x
    (``asgd.optimizers``).
    """

    transform: Any
    dc_lambda: float
    optimizer: Any = None    # OptimizerSpec of a stateful optimizer, or None


def _model(spec: StepSizeSpec):
    """P from the spec (empirical starts from Poisson)."""
    name = "poisson" if spec.model == "empirical" else spec.model
    param, m = float(spec.model_param), int(spec.threads)
    if param <= 0 and m < 2:
        raise ValueError(f"stepsize_model={spec.model} needs threads >= 2 or stepsize_model_param > 0")
    if name == "geometric":
        return st.Geometric(param if param > 0 else 1.0 / m)
    lam = param if param > 0 else float(m - 1)
    return st.ConwayMaxwellPoisson(lam, 1.0) if name == "cmp" else st.Poisson(lam)


def mindthestep_parts(spec: StepSizeSpec, model=None) -> MindTheStepParts:
    """MindTheStep's model, target and online fit as the spec asks (numpy only).

    ``model`` replaces the spec's P (e.g. the true injected staleness of
    ``asgd.dynamics.penalty``); the target is derived from it all the same.
    """
    if spec.model not in MODELS:
        raise ValueError(f"unknown stepsize_model {spec.model!r}; valid: {list(MODELS)}")
    if spec.target not in TARGETS:
        raise ValueError(f"unknown stepsize_target {spec.target!r}; valid: {list(TARGETS)}")
    fit = None
    if spec.model == "empirical":
        if spec.window <= 0:
            raise ValueError("stepsize_model=empirical needs stepsize_window > 0 "
                             "(it is fitted online from the run's staleness)")
        fit = st.Empirical.fit_hist
    model = _model(spec) if model is None else model
    param = float(spec.target_param)
    if spec.target == "uniform":
        T = int(round(param)) if param > 0 else mindthestep.uniform_horizon(model)
        target = mindthestep.uniform(T)
    else:
        target = mindthestep.geometric(param if param > 0 else 1.0 - 1.0 / max(spec.threads, 2))
    return MindTheStepParts(model, target, fit)


def _is_constant_mindthestep(spec: StepSizeSpec) -> bool:
    """One worker and a derived model: tau is always 0, alpha(0) = alpha."""
    return spec.threads == 1 and spec.model_param <= 0 and spec.model != "empirical"


def check(spec: StepSizeSpec) -> None:
    """Every parameter of the rule, without JAX; ValueError (one line) if unusable."""
    if spec.name not in STEPSIZES:
        raise ValueError(f"unknown stepsize {spec.name!r}; valid: {list(STEPSIZES)}")
    mindthestep.check_alpha(spec.alpha)
    mindthestep.check_int("threads", spec.threads, 1)
    if spec.name == "tail_tau" and not 0.0 <= spec.tail_amplitude <= 1.0:
        raise ValueError(f"tail_amplitude must be in [0, 1], got {spec.tail_amplitude!r}")
    if spec.name == "dc_asgd" and not spec.dc_lambda >= 0:
        raise ValueError(f"dc_lambda must be finite and >= 0, got {spec.dc_lambda!r}")
    if spec.name == "mindthestep" and not _is_constant_mindthestep(spec):
        parts = mindthestep_parts(spec)
        mindthestep.table(spec.alpha, parts.model, parts.target, spec.cap)  # cap feasible


def transform(spec: StepSizeSpec, model=None):
    """The optax transform of the rule (``asgd.stepsize``); tau is its ``staleness=``.

    ``model``: MindTheStep's P instead of the one the spec derives.

    Example:
      >>> spec = StepSizeSpec("inverse", 0.1, 4, "poisson", 0.0, "uniform", 0.0,
      ...                     10.0, 0.5, 0, 0.1)
      >>> tx = transform(spec)   # alpha / (tau + 1)
    """
    import optax

    from asgd import stepsize
    check(spec)
    alpha = spec.alpha
    constant_mts = spec.name == "mindthestep" and model is None and _is_constant_mindthestep(spec)
    if spec.name == "constant" or constant_mts:
        return stepsize.constant(alpha)
    if spec.name == "inverse":
        return stepsize.inverse(alpha)
    if spec.name == "fleet":
        return stepsize.fleet(alpha, spec.threads)
    if spec.name == "tail_tau":
        window = spec.window if spec.window > 0 else TAIL_TAU_WINDOW
        return stepsize.tail_tau(alpha, spec.tail_amplitude, window)
    if spec.name == "dc_asgd":
        return optax.chain(stepsize.dc_asgd(spec.dc_lambda), stepsize.constant(alpha))
    parts = mindthestep_parts(spec, model)
    return stepsize.mindthestep(alpha, parts.model, parts.target, spec.cap,
                                window=max(spec.window, 0), fit=parts.fit)


def update_rule(spec: StepSizeSpec, optimizer=None) -> UpdateRule:
    """The executors' form of the rule: a tabulable step size, plus DC-ASGD's
    lambda or a stateful optimizer (an ``OptimizerSpec``; "sgd" means none)."""
    stateful = optimizer if optimizer is not None and optimizer.name != "sgd" else None
    if spec.name == "dc_asgd":
        from asgd import stepsize
        check(spec)
        return UpdateRule(stepsize.constant(spec.alpha), float(spec.dc_lambda), stateful)
    return UpdateRule(transform(spec), 0.0, stateful)
