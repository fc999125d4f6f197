"""Staleness models: exact pmfs, stable large-tau values, ML fits, goodness of fit."""

import math

import jax
import numpy as np
import pytest

from asgd import staleness as st


def test_geometric_pmf_cdf_mean_by_hand():
    m = st.Geometric(0.25)
    np.testing.assert_allclose(m.pmf([0, 1, 2]), [0.25, 0.1875, 0.140625])
    np.testing.assert_allclose(m.cdf([0, 1, 2]), [0.25, 0.4375, 0.578125])
    np.testing.assert_allclose(m.logsf(1), math.log(0.5625))
    assert m.mean() == pytest.approx(3.0)
    assert m.pmf(-1) == 0.0


def test_poisson_pmf_cdf_mean_by_hand():
    m = st.Poisson(2.0)
    e = math.exp(-2.0)
    np.testing.assert_allclose(m.pmf([0, 1, 2, 3]), [e, 2 * e, 2 * e, 4 / 3 * e])
    np.testing.assert_allclose(m.cdf(2), 5 * e)
    np.testing.assert_allclose(m.logsf(2), math.log(1 - 5 * e))
    assert m.mean() == 2.0


def test_empirical_smoothing_by_hand():
    m = st.Empirical([3, 0, 1], smoothing=1.0)
    np.testing.assert_allclose(m.pmf([0, 1, 2, 3]), [4 / 7, 1 / 7, 2 / 7, 0.0])
    np.testing.assert_allclose(m.cdf([0, 1, 5]), [4 / 7, 5 / 7, 1.0])
    assert m.mean() == pytest.approx(5 / 7 * 1 + 0)  # 0*4/7 + 1*1/7 + 2*2/7
    assert st.Empirical([2, 2], smoothing=0).pmf(1) == 0.5


@pytest.mark.parametrize("model", [st.Geometric(0.3), st.Poisson(3.0),
                                   st.ConwayMaxwellPoisson(3.0, 0.7), st.Empirical([5, 1, 0, 2])])
def test_large_tau_is_finite_not_nan(model):
    tau = np.array([0, 10, 1000, 10**5, 10**6])
    logp = model.logpmf(tau)
    assert not np.any(np.isnan(logp)) and not np.any(logp == np.inf)
    p = model.pmf(tau)
    assert np.all(np.isfinite(p)) and np.all(p >= 0) and p[-1] < 1e-300
    assert np.all(np.isfinite(model.cdf(tau)))
    assert abs(float(model.cdf(10**6)) - 1.0) < 1e-12


@pytest.mark.parametrize("lam,nu", [(3.0, 1.0), (3.0, 0.6), (20.0, 2.0), (0.3, 3.0), (50.0, 1.5)])
def test_cmp_normalizer_matches_brute_force(lam, nu):
    log_z, _ = st.cmp_log_normalizer(lam, nu)
    brute = math.fsum(math.exp(t * math.log(lam) - nu * math.lgamma(t + 1)) for t in range(3000))
    assert log_z == pytest.approx(math.log(brute), rel=1e-12, abs=1e-12)
    m = st.ConwayMaxwellPoisson(lam, nu)
    assert m.pmf(np.arange(3000)).sum() == pytest.approx(1.0, abs=1e-12)


def test_cmp_with_nu_one_is_poisson_and_large_lambda_is_stable():
    np.testing.assert_allclose(st.ConwayMaxwellPoisson(4.0, 1.0).pmf(np.arange(30)),
                               st.Poisson(4.0).pmf(np.arange(30)), rtol=1e-10)
    log_z, _ = st.cmp_log_normalizer(500.0, 1.0)  # Z = e^500: overflows as a float
    assert log_z == pytest.approx(500.0, rel=1e-12)


def test_fits_recover_parameters_from_seeded_samples():
    rng = np.random.default_rng(1)
    assert st.Geometric.fit(st.Geometric(0.2).sample(rng, 20_000)).p == pytest.approx(0.2, rel=0.03)
    assert st.Poisson.fit(st.Poisson(6.0).sample(rng, 20_000)).lam == pytest.approx(6.0, rel=0.03)
    for lam, nu in [(3.0, 0.7), (20.0, 2.0)]:
        fit = st.ConwayMaxwellPoisson.fit(st.ConwayMaxwellPoisson(lam, nu).sample(rng, 20_000))
        assert fit.nu == pytest.approx(nu, rel=0.08)
        assert fit.lam == pytest.approx(lam, rel=0.2)
    hist = np.bincount(st.Poisson(2.0).sample(rng, 50_000))
    emp = st.Empirical.fit_hist(hist, smoothing=0.0)
    np.testing.assert_allclose(emp.pmf(np.arange(5)), st.Poisson(2.0).pmf(np.arange(5)), atol=0.01)


def test_fit_from_hist_equals_fit_from_samples():
    samples = st.Poisson(3.0).sample(0, 1000)
    assert st.Poisson.fit(samples).lam == st.Poisson.fit_hist(np.bincount(samples)).lam
    assert st.Poisson.fit(samples).lam == pytest.approx(samples.mean())


def test_sampling_accepts_jax_keys_and_is_reproducible():
    m = st.Poisson(4.0)
    a = m.sample(jax.random.key(3), 100)
    np.testing.assert_array_equal(a, m.sample(jax.random.key(3), 100))
    np.testing.assert_array_equal(m.sample(7, 100), m.sample(np.random.default_rng(7), 100))
    assert a.dtype == np.int64 and a.min() >= 0


def test_sample_means_match_model_means():
    for m in [st.Geometric(0.4), st.Poisson(5.0), st.ConwayMaxwellPoisson(6.0, 1.3),
              st.Empirical([1, 2, 3])]:
        assert m.sample(0, 40_000).mean() == pytest.approx(m.mean(), rel=0.03)


def test_total_variation_and_kl_by_hand():
    hist = np.array([1.0, 1.0])
    pmf = np.array([0.75, 0.25])
    assert st.total_variation(pmf, hist) == pytest.approx(0.25)
    assert st.kl_divergence(pmf, hist) == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2))
    # a model's mass beyond the histogram counts towards TV
    g = st.Geometric(0.5)
    assert st.total_variation(g, [1.0]) == pytest.approx(0.5)
    assert st.kl_divergence(st.Empirical([1, 0], smoothing=0), [0.0, 1.0]) == math.inf
    assert st.kl_divergence(st.Empirical([1, 0], smoothing=0.5), [0.0, 1.0]) == pytest.approx(math.log(4))


def test_best_fit_picks_the_generating_family():
    rng = np.random.default_rng(2)
    name, model, scores = st.best_fit(np.bincount(st.Geometric(0.15).sample(rng, 5000)))
    assert name == "geometric" and isinstance(model, st.Geometric)
    assert set(scores) == {"geometric", "poisson", "cmp"}
    assert scores["poisson"]["tv"] > scores["geometric"]["tv"]
    name, _, _ = st.best_fit(np.bincount(st.ConwayMaxwellPoisson(20.0, 2.5).sample(rng, 5000)))
    assert name == "cmp"
    name, _, _ = st.best_fit(np.bincount(st.Poisson(4.0).sample(rng, 5000)), criterion="kl")
    assert name in ("poisson", "cmp")  # CMP nests Poisson, so KL alone may prefer it


@pytest.mark.parametrize("make,match", [
    (lambda: st.Geometric(0.0), "p must be in"),
    (lambda: st.Geometric(1.0), "p must be in"),
    (lambda: st.Poisson(0.0), "lam must be"),
    (lambda: st.Poisson(-1.0), "lam must be"),
    (lambda: st.Poisson(float("nan")), "lam must be"),
    (lambda: st.ConwayMaxwellPoisson(1.0, 0.0), "nu must be"),
    (lambda: st.ConwayMaxwellPoisson(0.0, 1.0), "lam must be"),
    (lambda: st.ConwayMaxwellPoisson(100.0, 0.05), "peaks near"),
    (lambda: st.Empirical([1, -1]), ">= 0"),
    (lambda: st.Empirical([0, 0], smoothing=0), "no observations"),
    (lambda: st.Empirical([1], smoothing=-1), "smoothing"),
    (lambda: st.Poisson.fit([1, -2]), "non-negative integers"),
    (lambda: st.best_fit([1, 2], families=("zipf",)), "unknown staleness model"),
])
def test_invalid_parameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
