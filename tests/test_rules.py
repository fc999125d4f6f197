"""asgd.rules: a run's step-size fields -> the transform and the executors' update rule."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgd import mindthestep, rules, stepsize
from asgd import staleness as st
from asgd.executors.asynchronous import delay_compensated
from asgd.run import ConfigError, default_config, stepsize_spec


def spec_of(**fields):
    cfg = default_config()
    cfg.threads = fields.pop("threads", 4)
    for key, value in fields.items():
        cfg[key] = value
    return stepsize_spec(cfg)


def alpha(tx, tau, state=None):
    """alpha(tau) as the transform applies it to a unit gradient."""
    state = tx.init(None) if state is None else state
    u, _ = tx.update(jnp.ones(1), state, staleness=tau)
    return -float(u[0])


def test_each_stepsize_from_the_config_fields():
    lr = {"learning_rate": 0.1}
    assert alpha(rules.transform(spec_of(stepsize="constant", **lr)), 3) == pytest.approx(0.1)
    assert alpha(rules.transform(spec_of(stepsize="inverse", **lr)), 3) == pytest.approx(0.025)
    assert alpha(rules.transform(spec_of(stepsize="fleet", **lr)), 2) == pytest.approx(0.1 * 3.5 ** -0.8)
    tail = rules.transform(spec_of(stepsize="tail_tau", **lr))
    assert alpha(tail, 2) == pytest.approx(0.1)
    assert int(tail.init(None).window) == rules.TAIL_TAU_WINDOW  # stepsize_window = 0
    # mindthestep, a fixed Poisson(lam = 3) and uniform(T = 8): alpha e^3 tau! / (9 * 3^tau)
    mts = rules.transform(spec_of(stepsize="mindthestep", stepsize_model="poisson",
                                  stepsize_model_param=3.0, stepsize_target="uniform",
                                  stepsize_target_param=8, stepsize_cap=100.0, **lr))
    assert alpha(mts, 2) == pytest.approx(0.1 * math.exp(3) * 2 / (9 * 9), rel=1e-6)
    assert int(mts.init(None).window) == 0  # a fixed model: no online fit
    geo = rules.transform(spec_of(stepsize="mindthestep", stepsize_target="geometric",
                                  stepsize_model="geometric", stepsize_model_param=0.25,
                                  stepsize_target_param=0.75, **lr))
    assert alpha(geo, 5) == pytest.approx(0.1)  # P = Q = Geometric(1/4)


def test_default_mindthestep_is_tilted_and_fitted_online():
    spec = spec_of(stepsize="mindthestep", threads=8)
    parts = rules.mindthestep_parts(spec)
    assert parts.model == st.Poisson(7.0)  # the prior, until the first fit
    assert parts.fit is st.fit_best and parts.window == rules.MINDTHESTEP_WINDOW
    assert repr(parts.target) == f"tilted({stepsize.fleet_beta(8):.4g})"
    tx = rules.transform(spec)
    assert int(tx.init(None).window) == rules.MINDTHESTEP_WINDOW
    a = stepsize.schedule(tx).alpha_table()
    assert np.all(np.diff(a) <= 1e-9)  # tilted: a staler gradient never gets a larger step
    assert mindthestep.expected_step(a, st.Poisson(7.0)) == pytest.approx(0.05, rel=1e-6)


def test_derived_uniform_target_is_the_model_quantile():
    parts = rules.mindthestep_parts(spec_of(stepsize="mindthestep", stepsize_target="uniform",
                                            threads=8))
    T = int(np.argmax(st.Poisson(7.0).cdf(np.arange(100)) >= 0.99))
    q = mindthestep.as_target(parts.target, parts.model)
    assert q.hist.size == T + 1 and np.all(q.hist == 1)
    q = mindthestep.as_target(parts.target, st.Poisson(2.0))  # re-derived from a refit P
    assert q.hist.size == int(np.argmax(st.Poisson(2.0).cdf(np.arange(100)) >= 0.99)) + 1


@pytest.mark.parametrize("model", ["fitted", "poisson", "geometric", "cmp"])
def test_mindthestep_with_one_thread_is_constant(model):
    """m=1 means tau = 0 always: alpha(tau) = alpha."""
    tx = rules.transform(spec_of(stepsize="mindthestep", threads=1, stepsize_model=model,
                                 learning_rate=0.1))
    assert [alpha(tx, tau) for tau in (0, 1, 50)] == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.parametrize("fields, match", [
    ({"stepsize": "adam"}, "unknown stepsize 'adam'"),
    ({"stepsize": "mindthestep", "stepsize_model": "zipf"}, "unknown stepsize_model"),
    ({"stepsize": "mindthestep", "stepsize_target": "x"}, "unknown stepsize_target"),
    ({"stepsize": "mindthestep", "stepsize_model_param": 3.0}, "fitted takes no"),
    ({"stepsize": "mindthestep", "stepsize_target": "tilted", "stepsize_target_param": -0.0,
      "stepsize_cap": 1.0 - 1e-9}, "cap must be"),
    ({"stepsize": "mindthestep", "stepsize_target": "geometric", "stepsize_target_param": 1.5},
     "mu must be in"),
    ({"stepsize": "mindthestep", "stepsize_cap": 0.5}, "cap must be"),
    ({"stepsize": "tail_tau", "tail_amplitude": 2.0}, "tail_amplitude must be in"),
    ({"stepsize": "tail_tau", "tail_amplitude": 1.0}, "tail_amplitude must be in"),
    ({"stepsize": "dc_asgd", "dc_lambda": -1.0}, "dc_lambda"),
    ({"learning_rate": 0.0}, "alpha must be"),
])
def test_bad_step_size_fields_are_one_line_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match) as err:
        spec_of(**fields)
    assert "\n" not in str(err.value)


def test_update_rule_separates_the_table_from_dc_asgd():
    plain = rules.update_rule(spec_of(stepsize="inverse", learning_rate=0.2))
    assert plain.dc_lambda == 0.0 and alpha(plain.transform, 1) == pytest.approx(0.1)
    dc = rules.update_rule(spec_of(stepsize="dc_asgd", learning_rate=0.2, dc_lambda=0.5))
    assert dc.dc_lambda == 0.5 and alpha(dc.transform, 7) == pytest.approx(0.2)
    stepsize.schedule(dc.transform)  # the step size alone is a table


def test_dc_asgd_per_attempt_rule_is_the_optax_transform():
    """The executors' per-CAS-attempt rule equals optax's dc_asgd chained with the step."""
    rng = np.random.default_rng(0)
    g, read, now = (rng.normal(size=6).astype(np.float32) for _ in range(3))
    lam, scales = 0.7, np.array([-0.1, -0.05, -0.025], np.float32)
    out = now.copy()
    delay_compensated([g[:2], g[2:]], read, scales, lam)(out, 1)
    tx = optax.chain(stepsize.dc_asgd(lam), stepsize.constant(0.05))
    u, _ = tx.update(jnp.asarray(g), tx.init(now), jnp.asarray(now), params_read=jnp.asarray(read),
                     staleness=1)
    np.testing.assert_allclose(out, now + np.asarray(u), rtol=1e-5, atol=1e-7)
    # and the compensation is really there: without it the result differs
    plain = now + scales[1] * g
    assert not np.allclose(out, plain, rtol=1e-4)
    np.testing.assert_allclose(out - plain, scales[1] * lam * g * g * (now - read), rtol=1e-4,
                               atol=1e-7)
