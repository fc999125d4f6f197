"""Step-size transforms: formulas, MindTheStep identities, chaining, jit, schedule, config."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgd import staleness as st
from asgd import stepsize as ss
from asgd.mindthestep import as_target

K = ss.MAX_STALENESS


def step(tx, tau, state=None, g=1.0, **kw):
    """alpha(tau) as the transform applies it to a unit gradient (sign flipped)."""
    state = tx.init(None) if state is None else state
    u, _ = tx.update(jnp.array([g], jnp.float32), state, staleness=tau, **kw)
    return -float(u[0])


# ------------------------------------------------------------- formulas ----

def test_constant_and_descent_sign():
    tx = ss.constant(0.1)
    params = {"w": jnp.array([1.0, 2.0])}
    grads = {"w": jnp.array([1.0, -1.0])}
    u, _ = tx.update(grads, tx.init(params), params, staleness=7)
    new = optax.apply_updates(params, u)
    np.testing.assert_allclose(new["w"], [0.9, 2.1], rtol=1e-6)
    assert step(tx, 0) == pytest.approx(0.1) and step(ss.constant(0.1), 99) == pytest.approx(0.1)


def test_inverse_by_hand():
    tx = ss.inverse(0.3)
    assert [step(tx, t) for t in (0, 1, 2, 5)] == pytest.approx([0.3, 0.15, 0.1, 0.05])


def test_fleet_by_hand():
    # m = 4: beta = 2/5 ln(1 + 5/2) = 0.4 ln 3.5 = 0.501104...
    assert ss.fleet_beta(4) == pytest.approx(0.4 * math.log(3.5))
    tx = ss.fleet(0.1, 4)
    assert step(tx, 0) == pytest.approx(0.1)
    assert step(tx, 2) == pytest.approx(0.1 * math.exp(-0.8 * math.log(3.5)), rel=1e-6)
    assert step(tx, 2) == pytest.approx(0.1 * 3.5 ** -0.8, rel=1e-6)


def test_tail_tau_by_hand():
    tx = ss.tail_tau(0.1, amplitude=0.5, window=4, max_staleness=8)
    s = tx.init(None)
    assert step(tx, 3, s) == pytest.approx(0.1)  # nothing seen: F = 1/2
    for tau in (0, 2, 2, 6):  # the window
        _, s = tx.update(jnp.ones(1), s, staleness=tau)
    assert int(s.count) == 4 and list(np.flatnonzero(s.hist)) == [0, 2, 6]
    # F(0) = 1/4, F(2) = 3/4, F(6) = 1: alpha (1 + A (1 - 2F))
    assert step(tx, 0, s) == pytest.approx(0.1 * 1.25)
    assert step(tx, 2, s) == pytest.approx(0.1 * 0.75)
    assert step(tx, 4, s) == pytest.approx(0.1 * 0.75)
    assert step(tx, 6, s) == pytest.approx(0.1 * 0.5)
    frozen = s
    _, s = tx.update(jnp.ones(1), s, staleness=0)  # after the window, F is frozen
    np.testing.assert_array_equal(s.hist, frozen.hist)
    assert int(s.count) == 4 and int(s.window) == 4


def test_dc_asgd_by_hand_and_chained():
    tx = ss.dc_asgd(0.5)
    g, now, read = jnp.array([2.0, -1.0]), jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])
    u, _ = tx.update(g, tx.init(now), now, params_read=read, staleness=4)
    np.testing.assert_allclose(u, [2 + 0.5 * 4 * 1, -1 + 0.5 * 1 * 2])
    chained = optax.chain(ss.dc_asgd(0.5), ss.inverse(0.1))
    u, _ = chained.update(g, chained.init(now), now, params_read=read, staleness=1)
    np.testing.assert_allclose(u, [-0.05 * 4.0, -0.05 * 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="params_read"):
        tx.update(g, tx.init(now), now, staleness=0)


# ----------------------------------------------------------- MindTheStep ----

MODELS = [st.Poisson(7.0), st.Geometric(0.2), st.ConwayMaxwellPoisson(5.0, 0.7),
          st.Empirical(np.arange(1.0, 13.0), smoothing=0.5)]
TARGETS = [ss.uniform(10), ss.geometric(0.8), np.array([0.2, 0.3, 0.5])]


def _model_probs(model, k):
    """P(tau) for tau < k and the lumped tail P(tau >= k)."""
    return np.append(model.pmf(np.arange(k)), np.exp(model.logsf(k - 1)))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("target", TARGETS, ids=["uniform", "geometric", "pmf"])
@pytest.mark.parametrize("cap", [10.0, 1000.0])
def test_mindthestep_expected_step_is_alpha(model, target, cap):
    q = _model_probs(as_target(target), K)
    on_support = _model_probs(model, K)[q > 0].sum()
    if cap * on_support < 1.0:  # infeasible: P cannot reach alpha on Q's support under the cap
        with pytest.raises(ValueError, match=f"cap {cap} is too small"):
            ss.mindthestep_table(0.1, model, target, cap=cap)
        return
    a = ss.mindthestep_table(0.1, model, target, cap=cap)
    assert np.all(np.isfinite(a)) and a.max() <= cap * 0.1 * (1 + 1e-12) and a.min() >= 0
    assert np.dot(_model_probs(model, K), a) == pytest.approx(0.1, rel=1e-9)


def test_mindthestep_infeasible_cap_raises_clearly():
    with pytest.raises(ValueError, match="cap 10.0 is too small"):
        ss.mindthestep_table(0.1, st.Poisson(7.0), [0.2, 0.3, 0.5], cap=10.0)


@pytest.mark.parametrize("model", MODELS[:3], ids=lambda m: m.name)
def test_mindthestep_is_alpha_q_over_p_before_clipping(model):
    target = ss.geometric(0.9)
    a = ss.mindthestep_table(0.1, model, target, cap=1e6, max_staleness=20)
    tau = np.arange(20)
    expected = 0.1 * target.pmf(tau) / model.pmf(tau)
    assert expected.max() < 1e6 * 0.1  # nothing clipped
    np.testing.assert_allclose(a[:20], expected, rtol=1e-9)


def test_mindthestep_poisson_uniform_closed_form():
    lam, T, alpha = 3.0, 6, 0.1
    tx = ss.mindthestep(alpha, st.Poisson(lam), ss.uniform(T), cap=100.0)
    for tau in range(T + 1):
        closed = alpha * math.exp(lam) * math.factorial(tau) / ((T + 1) * lam ** tau)
        assert step(tx, tau) == pytest.approx(closed, rel=1e-6)
    assert step(tx, T + 1) == 0.0 and step(tx, 10**6) == 0.0  # beyond the target: 0


def test_mindthestep_clipping_renormalises_and_beyond_model_support_is_cap():
    # uniform(12) over Poisson(3): 0.1 Q/P reaches ~ 0.1 * 2.8e3 > cap, so clip
    a = ss.mindthestep_table(0.1, st.Poisson(3.0), ss.uniform(12), cap=5.0)
    assert a.max() == pytest.approx(0.5)
    assert np.dot(_model_probs(st.Poisson(3.0), K), a) == pytest.approx(0.1, rel=1e-9)
    unclipped = a[:13] < 0.5 - 1e-12
    ratio = a[:13][unclipped] / (0.1 / 13 / st.Poisson(3.0).pmf(np.arange(13))[unclipped])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)  # one common factor k >= 1
    assert ratio[0] > 1
    # a finite-support model: Q > 0 = P beyond it gives the cap
    b = ss.mindthestep_table(0.1, st.Empirical([1, 1, 1], smoothing=0), ss.geometric(0.5),
                             cap=4.0, max_staleness=8)
    np.testing.assert_allclose(b[3:], 0.4)


@pytest.mark.parametrize("model", [st.Poisson(7.0), st.Geometric(0.5),
                                   st.ConwayMaxwellPoisson(3.0, 1.5)], ids=lambda m: m.name)
def test_mindthestep_finite_for_tau_up_to_a_million(model):
    a = ss.mindthestep_table(0.1, model, ss.geometric(0.9), cap=10.0, max_staleness=10**6)
    assert a.shape == (10**6 + 1,) and np.all(np.isfinite(a))
    assert a[-1] == pytest.approx(1.0)  # P underflows long before: the cap
    tx = ss.mindthestep(0.1, model, ss.geometric(0.9))
    assert math.isfinite(step(tx, 10**6)) and step(tx, 10**6) == pytest.approx(1.0)


def test_mindthestep_online_fit_replaces_the_prior_after_the_window():
    tx = ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(4), cap=100.0, max_staleness=16,
                        window=50)
    s = tx.init(None)
    prior = np.asarray(s.table)
    update = jax.jit(tx.update)
    for tau in st.Poisson(1.0).sample(0, 50):
        u, s = update(jnp.ones(1), s, staleness=int(tau))
        assert -float(u[0]) == pytest.approx(prior[min(int(tau), 16)], rel=1e-6)
    assert int(s.count) == 50 and not bool(s.fitted)
    _, s = update(jnp.ones(1), s, staleness=0)  # the refit happens here
    assert bool(s.fitted)
    lam = st.Poisson.fit_hist(np.asarray(s.hist)).lam
    expected = ss.mindthestep_table(0.1, st.Poisson(lam), ss.uniform(4), 100.0, 16)
    np.testing.assert_allclose(s.table, expected, rtol=1e-6)
    assert not np.allclose(s.table, prior)


# --------------------------------------------------- chain, jit, schedule ----

def test_chain_passes_staleness_through_clip_then_scale():
    tx = optax.chain(optax.clip_by_global_norm(1.0), ss.inverse(0.2))
    g = {"a": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to [0.6, 0.8]
    u, _ = tx.update(g, tx.init(g), g, staleness=1)
    np.testing.assert_allclose(u["a"], [-0.06, -0.08], rtol=1e-6)
    tx = optax.chain(ss.tail_tau(0.1, 0.5, window=2), optax.scale(2.0))
    s = tx.init(None)
    for tau in (0, 3):
        _, s = tx.update(jnp.ones(1), s, staleness=tau)
    assert int(s[0].count) == 2


@pytest.mark.parametrize("make", [
    lambda: ss.constant(0.1), lambda: ss.inverse(0.1), lambda: ss.fleet(0.1, 8),
    lambda: ss.tail_tau(0.1, 0.5, window=3),
    lambda: ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(6)),
    lambda: ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(6), window=3),
])
def test_jit_with_traced_tau_compiles_once(make):
    tx = make()
    traces = []

    @jax.jit
    def f(g, s, tau):
        traces.append(1)
        return tx.update(g, s, staleness=tau)

    s = tx.init(None)
    outs = []
    for tau in (0, 1, 5, 2, 1000, 10**6):
        u, s = f(jnp.ones(3), s, jnp.int32(tau))
        outs.append(float(u[0]))
    assert len(traces) == 1
    assert all(math.isfinite(x) for x in outs)


@pytest.mark.parametrize("make", [
    lambda: ss.inverse(0.1), lambda: ss.fleet(0.1, 8),
    lambda: ss.mindthestep(0.1, st.Poisson(3.0), ss.geometric(0.7), max_staleness=32),
    lambda: optax.chain(ss.inverse(0.5), optax.scale(0.1)),
])
def test_schedule_table_matches_transform(make):
    tx = make()
    sched = ss.schedule(tx, max_staleness=32)
    table = sched.table()
    assert table.dtype == np.float32 and table.shape == (33,)
    s = tx.init(jnp.zeros(()))
    kw = {"params_read": jnp.zeros(1)}
    for tau in range(33):
        u, _ = tx.update(jnp.ones(1), s, jnp.zeros(1), staleness=tau, **kw)
        assert table[tau] == pytest.approx(float(u[0]), rel=1e-6)
    assert np.all(table <= 0)
    np.testing.assert_allclose(sched.alpha_table(), -table)
    assert sched.observe(np.array([1, 2, 3])) is False  # nothing to learn


def test_schedule_observe_tracks_tail_tau_state():
    tx = ss.tail_tau(0.1, amplitude=0.5, window=300, max_staleness=16)
    sched = ss.schedule(tx, max_staleness=16)
    np.testing.assert_allclose(sched.table(), -0.1)
    taus = st.Poisson(4.0).sample(0, 400)
    assert sched.observe(taus[:100]) is True
    assert sched.observe(taus[100:]) is True  # crosses the window: F frozen
    assert sched.observe(taus[:50]) is False
    s = tx.init(None)
    for tau in taus:
        _, s = tx.update(jnp.ones(1), s, staleness=int(tau))
    expected = [-step(tx, t, s) for t in range(17)]
    np.testing.assert_allclose(sched.table(), expected, rtol=1e-6)


def test_schedule_observe_refits_mindthestep():
    tx = ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(4), cap=100.0, max_staleness=16,
                        window=100)
    sched = ss.schedule(tx, max_staleness=16)
    before = sched.table()
    assert sched.observe(st.Poisson(1.0).sample(1, 150)) is True
    assert bool(sched.state.fitted)
    lam = st.Poisson.fit_hist(np.asarray(sched.state.hist)).lam
    np.testing.assert_allclose(sched.alpha_table(),
                               ss.mindthestep_table(0.1, st.Poisson(lam), ss.uniform(4), 100.0, 16),
                               rtol=1e-6)
    assert not np.allclose(before, sched.table())


# ------------------------------------------------- the table contract ----

@pytest.mark.parametrize("tx, reason", [
    (optax.adam(1e-3), "its state depends on the gradient"),
    (optax.chain(optax.clip_by_global_norm(0.5), ss.constant(0.1)), "not linear in the gradient"),
    (optax.chain(optax.clip(0.5), ss.constant(0.1)), "not one scalar times the gradient"),
    (optax.sgd(0.1, momentum=0.9), "its state depends on the gradient"),
    (optax.chain(optax.add_decayed_weights(1e-2), ss.constant(0.1)), "depends on the parameters"),
    (optax.chain(ss.dc_asgd(0.3), ss.constant(0.05)), "depends on the parameters"),
], ids=["adam", "clip_by_global_norm", "clip", "momentum", "weight_decay", "dc_asgd"])
def test_schedule_refuses_what_the_c_store_cannot_apply(tx, reason):
    with pytest.raises(ValueError) as err:
        ss.schedule(tx)
    message = str(err.value)
    assert "\n" not in message and reason in message
    assert "x <- x + s(tau) g" in message and "mindthestep" in message


@pytest.mark.parametrize("tx", [optax.sgd(0.1), optax.scale(-0.2),
                                optax.chain(ss.tail_tau(0.1, window=5), optax.scale(2.0))],
                         ids=["sgd", "scale", "tail_tau_scaled"])
def test_schedule_accepts_linear_transforms(tx):
    table = ss.schedule(tx, max_staleness=4).table()
    assert table.shape == (5,) and np.all(np.isfinite(table)) and np.all(table != 0)


@pytest.mark.parametrize("make,match", [
    (lambda: ss.constant(0.0), "alpha must be"),
    (lambda: ss.inverse(-1.0), "alpha must be"),
    (lambda: ss.fleet(0.1, 0), "fleet m"),
    (lambda: ss.tail_tau(0.1, amplitude=1.5), "amplitude"),
    (lambda: ss.tail_tau(0.1, window=0), "window"),
    (lambda: ss.uniform(-1), "uniform target T"),
    (lambda: ss.geometric(1.0), "mu must be in"),
    (lambda: ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(3), cap=0.5), "cap"),
    (lambda: ss.mindthestep(0.1, st.Poisson(3.0), [0.5, -0.1]), "target pmf"),
    (lambda: ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(3), window=-1), "window"),
    (lambda: ss.dc_asgd(-0.1), "lambda"),
])
def test_invalid_parameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_table_uses_the_refit_as_soon_as_the_window_is_full():
    tx = ss.mindthestep(0.1, st.Poisson(3.0), ss.uniform(4), cap=100.0, max_staleness=16,
                        window=100)
    sched = ss.schedule(tx, max_staleness=16)
    assert sched.observe(st.Poisson(1.0).sample(1, 100)) is True  # exactly the window
    assert int(sched.state.count) == 100 and not bool(sched.state.fitted)
    lam = st.Poisson.fit_hist(np.asarray(sched.state.hist)).lam
    expected = ss.mindthestep_table(0.1, st.Poisson(lam), ss.uniform(4), 100.0, 16)
    np.testing.assert_allclose(sched.alpha_table(), expected, rtol=1e-6)
    assert sched.observe([3]) is False and bool(sched.state.fitted)  # refit kept, same table
