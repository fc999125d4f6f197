"""MindTheStep's contract: tables that cannot silently destroy training, fits to measured staleness.

Histograms under tests/fixtures/staleness/ were measured on the development
machine (MNIST 10k, the MLP; lock and leashed, m = 2, 4, 8); each file
records the command that produced it.
"""

import glob
import json
import os

import numpy as np
import pytest
from scipy.special import gammaln

from asgd import mindthestep, rules, stepsize
from asgd import staleness as st
from asgd.executors.base import WorkerLog
from asgd.executors.scales import ScaleController, schedule
from asgd.run import default_config, stepsize_spec

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "staleness",
                                         "*.json")))
K = stepsize.MAX_STALENESS
THREADS = (1, 2, 4, 8)
ALPHA = 0.05


def measured(name: str) -> np.ndarray:
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "staleness", name + ".json")) as f:
        return np.asarray(json.load(f)["staleness_hist"], np.float64)


def spec_of(**fields):
    cfg = default_config()
    for key, value in fields.items():
        cfg[key] = value
    return stepsize_spec(cfg)


def dispersion(hist: np.ndarray) -> float:
    tau = np.arange(hist.size)
    mean = np.dot(hist, tau) / hist.sum()
    return float(np.dot(hist, (tau - mean) ** 2) / hist.sum() / mean)


# -------------------------------------------------------- the table contract ----

@pytest.mark.parametrize("m", THREADS)
@pytest.mark.parametrize("name", rules.STEPSIZES)
def test_every_rule_table_is_positive_and_finite(name, m):
    """The table the C store applies (``schedule``), as train.py builds it."""
    tx = rules.update_rule(spec_of(stepsize=name, threads=m, learning_rate=ALPHA)).transform
    sched = schedule(tx)
    if name in ("tail_tau", "mindthestep"):  # after TAIL-tau's window, MindTheStep's first refit
        window = rules.TAIL_TAU_WINDOW if name == "tail_tau" else rules.MINDTHESTEP_WINDOW
        sched.observe(st.Poisson(max(m - 1, 0.1)).sample(m, window + 1))
    table = np.asarray(sched.alpha_table())
    assert table.shape == (K + 1,) and np.all(np.isfinite(table))
    assert np.all(np.float32(table) > 0), f"{name}, m={m}: a step of 0"


MODEL_FIELDS = ["fitted", "poisson", "geometric", "cmp", "empirical"]


def window_of(m: int, size: int) -> np.ndarray:
    """The histogram of the first ``size`` updates of a measured run with m workers."""
    hist = measured(f"lock-m{m}-b16" if m in (2, 8) else f"leashed-m{m}-b16")
    taus = np.repeat(np.arange(hist.size), hist.astype(int))
    np.random.default_rng(m).shuffle(taus)
    return np.bincount(taus[:size]).astype(np.float64)


@pytest.mark.parametrize("m", THREADS)
@pytest.mark.parametrize("model", MODEL_FIELDS)
@pytest.mark.parametrize("target", mindthestep.TARGETS)
def test_every_mindthestep_variant_expects_alpha_under_its_model(target, model, m):
    """Before the first refit under the prior, after it under the model fitted to a
    measured histogram: no zero, finite, at most cap * alpha, and E_P[alpha(tau)] = alpha."""
    spec = spec_of(stepsize="mindthestep", stepsize_target=target, stepsize_model=model,
                   threads=m, learning_rate=ALPHA)
    if m == 1:  # tau is always 0: every step is alpha
        tx = rules.transform(spec)
        for tau in (0, 1, 7, K):
            u, _ = tx.update(np.ones(1, np.float32), tx.init(None), staleness=tau)
            assert -float(u[0]) == float(np.float32(ALPHA))
        return
    parts = rules.mindthestep_parts(spec)
    assert parts.fit is not None and parts.window == rules.MINDTHESTEP_WINDOW
    for p in (parts.model, parts.fit(window_of(m, parts.window))):
        table = np.float32(mindthestep.table(ALPHA, p, parts.target, spec.cap))
        assert table.shape == (K + 1,) and np.all(np.isfinite(table)) and np.all(table > 0)
        assert table.max() <= np.float32(spec.cap * ALPHA)
        assert mindthestep.expected_step(table, p) == pytest.approx(ALPHA, rel=1e-6)


def test_the_store_gets_exactly_these_tables():
    """What train.py's executors apply is ``mindthestep.table`` of the prior, then of the fit."""
    spec = spec_of(stepsize="mindthestep", threads=8, learning_rate=ALPHA)
    parts = rules.mindthestep_parts(spec)
    sched = schedule(rules.transform(spec))
    np.testing.assert_allclose(sched.alpha_table(),
                               mindthestep.table(ALPHA, parts.model, parts.target, spec.cap),
                               rtol=1e-6)
    hist = measured("lock-m8-b16")
    taus = np.repeat(np.arange(hist.size), hist.astype(int))
    np.random.default_rng(8).shuffle(taus)
    sched.observe(taus[:parts.window + 1])
    fitted = parts.fit(window_of(8, parts.window))
    np.testing.assert_allclose(sched.alpha_table(),
                               mindthestep.table(ALPHA, fitted, parts.target, spec.cap), rtol=1e-6)


@pytest.mark.parametrize("m", THREADS)
@pytest.mark.parametrize("algorithm", ["sync", "sequential"])
def test_staleness_free_executors_with_mindthestep_use_alpha_exactly(algorithm, m):
    if algorithm == "sequential" and m > 1:
        pytest.skip("sequential runs one thread")
    for target in mindthestep.TARGETS:
        spec = spec_of(stepsize="mindthestep", algorithm=algorithm, threads=m,
                       stepsize_target=target, learning_rate=ALPHA)
        assert spec.staleness_free
        sched = schedule(rules.transform(spec))
        np.testing.assert_array_equal(sched.table(), np.float32(-ALPHA))
        assert sched.observe(np.zeros(500, int)) is False  # nothing to fit, nothing changes


def test_sync_with_mindthestep_trains_exactly_like_a_constant_step(config, train):
    """sync's tau is 0: with mindthestep it applies the very updates of the constant step."""
    summaries = []
    for rule in ("constant", "mindthestep"):
        config.algorithm, config.threads, config.stepsize = "sync", 4, rule
        config.num_updates, config.eval_every = 60, 30
        summaries.append(train(config))
    constant, mts = summaries
    assert mts["alpha_table"] == pytest.approx([config.learning_rate] * (K + 1), rel=1e-7)
    assert mts["updates"] == constant["updates"] == 60
    assert mts["eval_loss"] == constant["eval_loss"]  # the same parameters, bit for bit


# ------------------------------------------------- the cap, as it happened ----

def test_controller_reports_the_share_of_updates_at_the_cap_and_the_fit():
    tx = stepsize.mindthestep(1.0, st.Poisson(7.0), mindthestep.tilted(0.4), cap=2.0,
                              window=200)
    logs = [WorkerLog(), WorkerLog()]
    control = ScaleController(schedule(tx), logs)
    table = -control.array
    at_cap = np.flatnonzero(table >= 2.0 * (1 - 1e-6))
    assert at_cap.size and at_cap.max() < 7  # fresh gradients get the cap under tilting
    taus = st.Poisson(7.0).sample(0, 300)
    logs[0].staleness.extend(taus[:150].tolist())
    control.poll()  # counted against the prior's table, then the first refit (at 200) ...
    logs[1].staleness.extend(taus[150:].tolist())  # ... still to come: summary counts these
    report = control.summary()
    expected_prior = np.count_nonzero(table[np.minimum(taus[:150], K)] >= 2.0 * (1 - 1e-6))
    assert report["stepsize_cap_step"] == pytest.approx(2.0)
    refit = -control.array
    expected_rest = np.count_nonzero(refit[np.minimum(taus[150:], K)] >= 2.0 * (1 - 1e-6))
    assert report["stepsize_at_cap_share"] == pytest.approx(
        (expected_prior + expected_rest) / 300)
    assert report["stepsize_fit"] == {"model": "prior", "refits": 0}  # 150 < 200 observed
    logs[0].staleness.extend(st.Poisson(7.0).sample(1, 100).tolist())
    control.poll()
    fit = control.summary()["stepsize_fit"]
    assert fit["refits"] == 1 and fit["weight"] == 200
    assert set(fit["scores"]) == {"geometric", "poisson", "cmp"}
    assert fit["best_by_aic"] == min(fit["scores"], key=lambda k: fit["scores"][k]["aic"])
    assert {"nll", "aic", "bic", "tv", "kl", "params"} <= set(fit["scores"]["cmp"])


def test_controller_of_a_rule_without_cap_reports_none():
    control = ScaleController(schedule(stepsize.inverse(0.1)), [WorkerLog()])
    assert set(control.summary()) == {"alpha_table"}


# ----------------------------------------- fits to measured staleness ----

def test_fixtures_hold_over_and_under_dispersed_and_long_tailed_histograms():
    hists = [measured(os.path.basename(p)[:-5]) for p in FIXTURES]
    assert len(hists) >= 6
    assert min(dispersion(h) for h in hists) < 0.7   # under-dispersed (var < mean)
    assert max(dispersion(h) for h in hists) > 2.0   # over-dispersed
    assert max(h.size - 1 for h in hists) >= 60       # a long tail (preempted workers)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: os.path.basename(p)[:-5])
def test_cmp_fit_converges_on_measured_histograms_and_beats_its_poisson_start(path):
    hist = measured(os.path.basename(path)[:-5])
    start = st.Poisson.fit_hist(hist)
    fit = st.ConwayMaxwellPoisson.fit_hist(hist)
    gain = fit.log_likelihood(hist) - start.log_likelihood(hist)
    assert gain > 5.0, f"CMP gained only {gain:.2f} nats over its Poisson start"
    # converged: the score equations hold, E[tau] and E[log tau!] match the data's means
    tau = np.arange(hist.size)
    _, moments, _ = fit._moments()
    data = [np.dot(hist, tau) / hist.sum(), np.dot(hist, gammaln(tau + 1)) / hist.sum()]
    np.testing.assert_allclose(moments, data, rtol=1e-6)
    # the maximum: no nearby parameters are more likely
    for d_log_lam, d_nu in [(0.02, 0), (-0.02, 0), (0, 0.02), (0, -0.02), (0.02, 0.01)]:
        near = st.ConwayMaxwellPoisson(fit.lam * np.exp(d_log_lam), fit.nu + d_nu)
        assert near.log_likelihood(hist) <= fit.log_likelihood(hist) + 1e-6
    name, best, scores = st.best_fit(hist)
    assert name == min(scores, key=lambda k: scores[k]["aic"])
    assert scores["cmp"]["nll"] == pytest.approx(-fit.log_likelihood(hist))


def test_cmp_fit_on_a_preempted_lock_m8_histogram():
    """A lock m = 8 histogram with a tail to tau ~ 100 from preempted workers: the
    quasi-Newton fit used to return its Poisson start (nu = 1, NLL ~10300); CMP(2, 0.4)
    alone is ~1400 nats more likely."""
    hist = np.zeros(110)
    hist[:20] = [8, 74, 265, 311, 297, 272, 221, 270, 219, 246, 231, 232, 168, 91, 47, 18, 9,
                 4, 4, 4]
    hist[[30, 45, 60, 80, 100, 109]] += 3
    fit = st.ConwayMaxwellPoisson.fit_hist(hist)
    assert fit.nu < 0.5
    assert -fit.log_likelihood(hist) <= -st.ConwayMaxwellPoisson(2.0, 0.4).log_likelihood(hist)
    assert -st.Poisson.fit_hist(hist).log_likelihood(hist) - (-fit.log_likelihood(hist)) > 1000
    assert st.best_fit(hist)[0] == "cmp"
    assert st.best_fit(hist, criterion="bic")[0] == "cmp"


def test_best_fit_criteria_penalise_parameters_on_one_likelihood():
    hist = np.bincount(st.Poisson(3.0).sample(4, 400))
    _, _, scores = st.best_fit(hist)
    n = hist.sum()
    for name, k in (("poisson", 1), ("geometric", 1), ("cmp", 2)):
        assert scores[name]["aic"] == pytest.approx(2 * k + 2 * scores[name]["nll"])
        assert scores[name]["bic"] == pytest.approx(k * np.log(n) + 2 * scores[name]["nll"])
    # CMP nests Poisson: never less likely, but only chosen when the gain pays for nu
    assert scores["cmp"]["nll"] <= scores["poisson"]["nll"] + 1e-9
    assert st.best_fit(hist, criterion="bic")[0] == "poisson"
    with pytest.raises(ValueError, match="criterion"):
        st.best_fit(hist, criterion="r2")


# ---------------------------------------------------- the warning, end to end ----

def test_stepsize_warning_names_the_regime_only_where_there_is_staleness():
    from asgd.run import WORSE_THAN_CONSTANT, stepsize_warning
    warning = stepsize_warning(spec_of(stepsize="mindthestep", threads=4))
    assert warning.startswith("stepsize=mindthestep: ") and "\n" not in warning
    assert "alpha*" in warning and "docs/mindthestep.md" in warning
    assert stepsize_warning(spec_of(stepsize="mindthestep", algorithm="sync", threads=4)) is None
    assert stepsize_warning(spec_of(stepsize="inverse", threads=1)) is None
    assert stepsize_warning(spec_of(stepsize="constant", threads=8)) is None
    assert set(WORSE_THAN_CONSTANT) == {"mindthestep", "inverse", "fleet", "tail_tau"}


def test_train_py_warns_once_and_reports_the_cap_share_and_the_fit(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "train.py", "--config=configs/default.py", "--config.quiet=True",
         f"--config.workdir={tmp_path}", "--config.stepsize=mindthestep", "--config.threads=2",
         "--config.num_updates=300", "--config.eval_every=300", "--noprint_summary"],
        cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "stepsize=mindthestep" in warnings[0]
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["stepsize_at_cap_share"] <= 1.0
    assert summary["stepsize_cap_step"] == pytest.approx(2.0 * 0.05)
    fit = summary["stepsize_fit"]
    assert fit["refits"] >= 2 and fit["best_by_aic"] in ("geometric", "poisson", "cmp")
    assert max(summary["alpha_table"]) <= 2.0 * 0.05 * (1 + 1e-6)
