"""A run's step-size spec -> the optax transform and the executors' update rule.

The one factory behind ``train.py``'s ``stepsize*`` fields, the study and
``asgd.dynamics penalty``: ``transform(spec)`` builds the rule named by
``spec.name`` from ``asgd.stepsize``; ``check(spec)`` validates the same
parameters with numpy only (``asgd.run`` calls it before JAX starts);
``update_rule(spec)`` is what an executor applies per update.

Without staleness (``spec.staleness_free``: sequential, sync, or one
worker, where tau is always 0) every rule is the constant alpha: there is
nothing to adapt to, and MindTheStep's tables are built for tau > 0.

MindTheStep's model P (``stepsize_model``):
  fitted     (default) the best of geometric, Poisson and CMP by AIC
             (``staleness.fit_best``) on this run's staleness, refitted every
             ``window`` updates; Poisson(m - 1) until the first fit.
  poisson, geometric, cmp
             a parameter > 0 fixes the model (Poisson/CMP lam with CMP's
             nu = 1, geometric p); <= 0 fits that family online, starting
             from mean m - 1 (Poisson/CMP lam = m - 1, geometric p = 1/m).
  empirical  the smoothed histogram, fitted online from Poisson(m - 1).
MindTheStep's target Q (``stepsize_target``, the variants; docs/mindthestep.md):
  uniform    T given, or derived from each P as its 0.99-quantile;
  geometric  mu given, or mu = 1 - 1/m;
  tilted     P e^(-theta tau): theta given, or FLeet's beta(m).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from asgd import mindthestep
from asgd import staleness as st
from asgd.specs import StepSizeSpec

STEPSIZES = ("constant", "inverse", "fleet", "tail_tau", "mindthestep", "dc_asgd")
MODELS = ("fitted", "poisson", "geometric", "cmp", "empirical")
TARGETS = mindthestep.TARGETS
TAIL_TAU_WINDOW = 1000     # TAIL-tau's CDF window when spec.window <= 0
MINDTHESTEP_WINDOW = 100   # MindTheStep's updates between online refits when spec.window <= 0


class MindTheStepParts(NamedTuple):
    """P (the prior when fitted online), Q, the online fit (None: P as given)
    and its window (updates between refits; 0 without online fitting)."""

    model: Any
    target: Any
    fit: Callable | None
    window: int


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


def _prior(family: str, m: int):
    """The family's model with mean m - 1 (m >= 2)."""
    if m < 2:
        raise ValueError(f"a staleness model derived from threads needs threads >= 2, got {m}")
    if family == "geometric":
        return st.Geometric(1.0 / m)
    return st.ConwayMaxwellPoisson(m - 1.0, 1.0) if family == "cmp" else st.Poisson(m - 1.0)


def _model_and_fit(spec: StepSizeSpec):
    """(P or the prior, the online fit or None) as the spec asks."""
    name, param, m = spec.model, float(spec.model_param), int(spec.threads)
    if name == "fitted":
        if param > 0:
            raise ValueError("stepsize_model=fitted takes no stepsize_model_param (it is fitted "
                             "online); name a family (poisson, geometric, cmp) to fix a model")
        return _prior("poisson", m), st.fit_best
    if name == "empirical":
        return _prior("poisson", m), st.Empirical.fit_hist
    if param > 0:
        if name == "geometric":
            return st.Geometric(param), None
        return (st.ConwayMaxwellPoisson(param, 1.0) if name == "cmp" else st.Poisson(param)), None
    return _prior(name, m), st.MODELS[name].fit_hist


def mindthestep_parts(spec: StepSizeSpec, model=None) -> MindTheStepParts:
    """MindTheStep's model, target and online fit as the spec asks (numpy only).

    ``model`` replaces the spec's P by a fixed one (e.g. the true injected
    staleness of ``asgd.dynamics.penalty``), with no online fit.
    """
    if spec.model not in MODELS:
        raise ValueError(f"unknown stepsize_model {spec.model!r}; valid: {list(MODELS)}")
    if spec.target not in TARGETS:
        raise ValueError(f"unknown stepsize_target {spec.target!r}; valid: {list(TARGETS)}")
    if model is None:
        model, fit = _model_and_fit(spec)
    else:
        fit = None
    window = 0 if fit is None else (spec.window if spec.window > 0 else MINDTHESTEP_WINDOW)
    param, m = float(spec.target_param), max(int(spec.threads), 2)
    if spec.target == "uniform":
        target = (mindthestep.uniform(int(round(param))) if param > 0
                  else mindthestep.uniform_quantile())
    elif spec.target == "geometric":
        target = mindthestep.geometric(param if param > 0 else 1.0 - 1.0 / m)
    else:
        from asgd.stepsize import fleet_beta
        target = mindthestep.tilted(param if param > 0 else fleet_beta(m))
    return MindTheStepParts(model, target, fit, window)


def check(spec: StepSizeSpec) -> None:
    """Every parameter of the rule, without JAX; ValueError (one line) if unusable."""
    if spec.name not in STEPSIZES:
        raise ValueError(f"unknown stepsize {spec.name!r}; valid: {list(STEPSIZES)}")
    mindthestep.check_alpha(spec.alpha)
    mindthestep.check_int("threads", spec.threads, 1)
    if spec.name == "tail_tau" and not 0.0 <= spec.tail_amplitude < 1.0:
        raise ValueError(f"tail_amplitude must be in [0, 1), got {spec.tail_amplitude!r}")
    if spec.name == "dc_asgd" and not spec.dc_lambda >= 0:
        raise ValueError(f"dc_lambda must be finite and >= 0, got {spec.dc_lambda!r}")
    if spec.name == "mindthestep" and not spec.staleness_free:
        parts = mindthestep_parts(spec)
        mindthestep.table(spec.alpha, parts.model, parts.target, spec.cap)  # the prior's table


def transform(spec: StepSizeSpec, model=None):
    """The optax transform of the rule (``asgd.stepsize``); tau is its ``staleness=``.

    ``model``: MindTheStep's P instead of the one the spec derives (fixed,
    not fitted online, and used even when the spec is staleness-free).

    Example:
      >>> spec = StepSizeSpec("inverse", 0.1, 4, "poisson", 0.0, "uniform", 0.0,
      ...                     10.0, 0.5, 0, 0.1)
      >>> tx = transform(spec)   # alpha / (tau + 1)
    """
    import optax

    from asgd import stepsize
    check(spec)
    alpha = spec.alpha
    if spec.name == "constant" or (spec.staleness_free and model is None
                                   and spec.name != "dc_asgd"):
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
                                window=parts.window, fit=parts.fit)


def update_rule(spec: StepSizeSpec, optimizer=None) -> UpdateRule:
    """The executors' form of the rule: a tabulable step size, plus DC-ASGD's
    lambda or a stateful optimizer (an ``OptimizerSpec``; "sgd" means none)."""
    stateful = optimizer if optimizer is not None and optimizer.name != "sgd" else None
    if spec.name == "dc_asgd":
        from asgd import stepsize
        check(spec)
        return UpdateRule(stepsize.constant(spec.alpha), float(spec.dc_lambda), stateful)
    return UpdateRule(transform(spec), 0.0, stateful)
