"""Step-size transforms: formulas, MindTheStep identities, chaining, jit, schedule, config."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgd import staleness as st
from asgd import stepsize as ss
from asgd import mindthestep as mt

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
          st.ConwayMaxwellPoisson(1.95, 0.37), st.Empirical(np.arange(1.0, 13.0), smoothing=0.5)]
TARGETS = [mt.uniform_quantile(), ss.uniform(60), ss.geometric(0.8), ss.tilted(0.4),
           st.Poisson(2.0)]
TARGET_IDS = ["uniform_quantile", "uniform", "geometric", "tilted", "model"]


def _model_probs(model, k):
    """P(tau) for tau < k and the lumped tail P(tau >= k)."""
    return np.append(model.pmf(np.arange(k)), np.exp(model.logsf(k - 1)))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("cap", [1.0, 2.0, 10.0])
def test_mindthestep_expected_step_is_alpha_and_no_step_is_zero(model, target, cap):
    a = ss.mindthestep_table(0.1, model, target, cap=cap)
    assert np.all(np.isfinite(a)) and a.min() > 0 and a.max() <= cap * 0.1 * (1 + 1e-12)
    assert np.dot(_model_probs(model, K), a) == pytest.approx(0.1, rel=1e-9)
    assert mt.expected_step(a, model) == pytest.approx(0.1, rel=1e-9)
    assert np.all(np.asarray(a, np.float32) > 0)  # as the C store holds it, too
    if cap == 1.0:
        np.testing.assert_allclose(a, 0.1)  # a cap of 1 leaves the constant step


def test_a_target_that_ends_early_pools_and_one_with_gaps_is_refused():
    # Poisson(7)'s bulk is [2, 14]; uniform(10) ends at 10: tau >= 10 share Q(10)/P(T >= 10)
    a = ss.mindthestep_table(0.1, st.Poisson(7.0), ss.uniform(10), cap=100.0)
    np.testing.assert_allclose(a[10:], 0.1 / 11 / st.Poisson(7.0).sf(9), rtol=1e-9)
    assert mt.expected_step(a, st.Poisson(7.0)) == pytest.approx(0.1, rel=1e-9)
    with pytest.raises(ValueError, match=r"no mass to some staleness in P's bulk \[2, 10\]"):
        ss.mindthestep_table(0.1, st.Poisson(7.0), [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("model", MODELS[:3], ids=lambda m: m.name)
def test_mindthestep_is_alpha_q_over_p_in_the_bulk_and_mass_ratios_in_the_tails(model):
    target = ss.geometric(0.9)
    a = ss.mindthestep_table(0.1, model, target, cap=1e6, max_staleness=200)
    lo, hi = mt.bulk(model, max_staleness=200)
    tau = np.arange(lo + 1, hi)
    np.testing.assert_allclose(a[tau], 0.1 * target.pmf(tau) / model.pmf(tau), rtol=1e-9)
    head = 0.1 * target.cdf(lo) / model.cdf(lo)
    tail = 0.1 * target.sf(hi - 1) / model.sf(hi - 1)
    np.testing.assert_allclose(a[:lo + 1], head, rtol=1e-9)
    np.testing.assert_allclose(a[hi:], tail, rtol=1e-9)
    assert a.max() < 1e6 * 0.1  # nothing clipped: k = 1


def test_mindthestep_poisson_uniform_closed_form():
    lam, T, alpha = 3.0, 8, 0.1  # Poisson(3)'s bulk is [0, 8]
    assert mt.bulk(st.Poisson(lam)) == (0, 8)
    tx = ss.mindthestep(alpha, st.Poisson(lam), ss.uniform(T), cap=100.0)
    for tau in range(T):
        closed = alpha * math.exp(lam) * math.factorial(tau) / ((T + 1) * lam ** tau)
        assert step(tx, tau) == pytest.approx(closed, rel=1e-6)
    pooled = alpha / (T + 1) / st.Poisson(lam).sf(T - 1)  # tau >= 8 share one bin
    assert [step(tx, t) for t in (T, T + 1, 10**6)] == pytest.approx([pooled] * 3, rel=1e-6)


def test_tilted_is_exponential_decay_normalised_to_alpha():
    model, theta = st.ConwayMaxwellPoisson(1.95, 0.37), 0.3
    a = ss.mindthestep_table(0.1, model, ss.tilted(theta), cap=100.0, max_staleness=300)
    lo, hi = mt.bulk(model, max_staleness=300)
    tau = np.arange(lo, hi)
    np.testing.assert_allclose(a[tau[1:]] / a[tau[:-1]], math.exp(-theta), rtol=1e-9)
    assert np.all(np.diff(a) <= 0)  # staler never gets a larger step
    assert mt.expected_step(a, model) == pytest.approx(0.1, rel=1e-9)


def test_clipping_renormalises_with_one_common_factor():
    model = st.Poisson(3.0)
    a = ss.mindthestep_table(0.1, model, ss.uniform(12), cap=2.0)
    assert a.max() == pytest.approx(0.2)
    assert mt.expected_step(a, model) == pytest.approx(0.1, rel=1e-9)
    lo, hi = mt.bulk(model)
    tau = np.arange(lo + 1, hi)
    free = a[tau] < 0.2 - 1e-12
    k = a[tau][free] / (0.1 / 13 / model.pmf(tau[free]))
    np.testing.assert_allclose(k, k[0], rtol=1e-9)  # one common factor
    assert k[0] > 1  # the clipped step mass went back to the unclipped tau
    assert mt.cap_share(a, model, 0.2) == pytest.approx(
        _model_probs(model, K)[a >= 0.2 * (1 - 1e-9)].sum())


def test_rare_staleness_far_below_the_mean_does_not_get_its_own_extreme_step():
    """m = 8 with a Poisson(7) prior: P(0) = 9e-4. The pointwise ratio gave tau = 0 the
    largest step (10 alpha, the cap); now tau <= 2 (P's lowest 1 %) share the step of
    their pooled mass, and no step exceeds the cap of 2 alpha."""
    model = st.Poisson(7.0)
    lo, hi = mt.bulk(model)
    assert (lo, hi) == (2, 14)
    for target in (mt.uniform_quantile(), ss.geometric(7 / 8), ss.tilted(ss.fleet_beta(8))):
        a = ss.mindthestep_table(1.0, model, target)
        assert a.max() <= 2.0 * (1 + 1e-12)
        assert a[0] == a[1] == a[2]  # pooled: the rarest get no step of their own
        assert a[0] <= a[lo:hi + 1].max()  # and nothing larger than what the bulk gets
        q = mt.as_target(target, model)
        unclipped = min(1.0, 2.0)  # the pooled step is the mass ratio unless clipped
        assert a[0] <= max(q.cdf(lo) / model.cdf(lo), unclipped * 2.0)


@pytest.mark.parametrize("model", [st.Poisson(7.0), st.Geometric(0.5),
                                   st.ConwayMaxwellPoisson(3.0, 1.5)], ids=lambda m: m.name)
def test_mindthestep_finite_and_positive_for_tau_up_to_a_million(model):
    a = ss.mindthestep_table(0.1, model, ss.geometric(0.9), cap=10.0, max_staleness=10**6)
    assert a.shape == (10**6 + 1,) and np.all(np.isfinite(a)) and a.min() > 0
    assert a[-1] == a[mt.bulk(model, max_staleness=10**6)[1]]  # the pooled upper tail
    tx = ss.mindthestep(0.1, model, ss.geometric(0.9), cap=10.0)
    assert math.isfinite(step(tx, 10**6)) and step(tx, 10**6) == pytest.approx(a[-1], rel=1e-6)


def test_mindthestep_online_fit_replaces_the_prior_and_keeps_refitting():
    window, k = 50, 16
    tx = ss.mindthestep(0.1, st.Poisson(3.0), mt.uniform_quantile(), cap=100.0,
                        max_staleness=k, window=window)
    s = tx.init(None)
    prior = np.asarray(s.table)
    update = jax.jit(tx.update)
    taus = np.concatenate([st.Poisson(1.0).sample(0, window), st.Poisson(6.0).sample(1, window)])
    for tau in taus[:window]:
        u, s = update(jnp.ones(1), s, staleness=int(tau))
        assert -float(u[0]) == pytest.approx(prior[min(int(tau), k)], rel=1e-6)
    assert int(s.count) == window and int(s.refits) == 0
    first = np.bincount(taus[:window], minlength=k + 1).astype(np.float32)
    for tau in taus[window:]:  # the refit happens at the first of these
        _, s = update(jnp.ones(1), s, staleness=int(tau))
    assert int(s.refits) == 1
    np.testing.assert_allclose(s.fit_hist, first)
    lam = st.Poisson.fit_hist(first).lam
    np.testing.assert_allclose(
        s.table, ss.mindthestep_table(0.1, st.Poisson(lam), mt.uniform_quantile(), 100.0, k),
        rtol=1e-6)
    assert not np.allclose(s.table, prior)
    # the second refit weighs the new window 1 and the first 1/2: it follows the change
    _, s = update(jnp.ones(1), s, staleness=0)
    second = np.bincount(taus[window:], minlength=k + 1) + 0.5 * first
    assert int(s.refits) == 2
    np.testing.assert_allclose(s.fit_hist, second)
    lam2 = st.Poisson.fit_hist(second).lam
    assert lam2 > lam + 2
    np.testing.assert_allclose(
        s.table, ss.mindthestep_table(0.1, st.Poisson(lam2), mt.uniform_quantile(), 100.0, k),
        rtol=1e-6)


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
    assert int(sched.state.refits) == 1
    lam = st.Poisson.fit_hist(np.asarray(sched.state.fit_hist)).lam
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
    (lambda: ss.tail_tau(0.1, amplitude=1.0), "amplitude"),
    (lambda: ss.tilted(-1.0), "theta"),
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
    assert int(sched.state.count) == 100 and int(sched.state.refits) == 0
    lam = st.Poisson.fit_hist(np.asarray(sched.state.hist)).lam
    expected = ss.mindthestep_table(0.1, st.Poisson(lam), ss.uniform(4), 100.0, 16)
    np.testing.assert_allclose(sched.alpha_table(), expected, rtol=1e-6)
    assert sched.observe([3]) is False and int(sched.state.refits) == 1  # the same table
