"""The machine model, calibration bookkeeping, injected staleness on a real problem, predict."""

import json
import math
import shutil

import numpy as np
import pytest

from asgd import staleness as st
from asgd.dynamics import calibrate as cal, cli, convergence, machine as mc, predict as pr
from asgd.dynamics import simulator as sim

DISCIPLINES = ("lock", "hogwild", "leashed")


def _step(discipline, compute=1.0, gil=0.0, read=0.0, update=0.0):
    return mc.Step(compute, gil=gil, read=read if discipline == "lock" else 0.0, update=update)


# ------------------------------------------------------- hand-worked limits ----

@pytest.mark.parametrize("discipline", DISCIPLINES)
@pytest.mark.parametrize("machine", [mc.Machine(1), mc.Machine(4, intra_op=2.0, contention=(1, 3)),
                                     mc.Machine(64, copy_streams=1.0)])
def test_one_worker_runs_exactly_the_calibrated_step(discipline, machine):
    step = _step(discipline, compute=1.0, gil=0.25, read=0.1, update=0.05)
    r = mc.simulate(machine, step, 1, discipline, 500)
    assert r.throughput == pytest.approx(1.0 / step.time, rel=1e-9)
    assert step.time == pytest.approx(1.3 + (0.1 if discipline == "lock" else 0.0))
    assert np.all(r.sim.staleness == 0) and np.all(r.sim.attempts == 1)
    assert r.peak_buffers == {"lock": 2, "hogwild": 1, "leashed": 2}[discipline]
    assert r.gil_busy == pytest.approx(0.25 / step.time, rel=1e-9)


@pytest.mark.parametrize("discipline", DISCIPLINES)
def test_up_to_p_workers_without_shared_resources_scale_linearly(discipline):
    p = 8
    for m in (1, 2, 4, 8):
        r = mc.simulate(mc.Machine(p), _step(discipline, compute=2.0), m, discipline, 400)
        assert r.throughput == pytest.approx(m / 2.0, rel=1e-9)
    # beyond P the cores are time-sliced: 2P workers do what P do
    r = mc.simulate(mc.Machine(p), _step(discipline, compute=2.0), 2 * p, discipline, 400)
    assert r.throughput == pytest.approx(p / 2.0, rel=1e-9)
    assert r.runnable_mean == pytest.approx(2 * p)


@pytest.mark.parametrize("discipline", DISCIPLINES)
def test_a_gil_bound_step_saturates_at_one_over_the_gil_time(discipline):
    gil = 0.5
    step = _step(discipline, compute=sim.Exponential(1.0), gil=gil, update=0.01, read=0.01)
    rates = [mc.simulate(mc.Machine(64), step, m, discipline, 4000).throughput
             for m in (1, 2, 4, 8, 32)]
    assert rates[0] == pytest.approx(1 / step.time, rel=0.05)
    assert all(a < b * 1.01 for a, b in zip(rates, rates[1:]))  # never slower with more threads
    assert rates[-1] == pytest.approx(1 / gil, rel=0.01) and rates[-1] <= 1 / gil * 1.001
    # without the GIL the same step scales with m again
    free = mc.simulate(mc.Machine(64, gil=False), step, 32, discipline, 4000).throughput
    assert free > 10 / gil


def test_time_slicing_one_core_runs_one_step_at_a_time():
    # One core does all the work (waiting threads sleep), so m workers of any
    # discipline without CAS retries complete 1 / step updates per time unit.
    for discipline in ("lock", "hogwild"):
        step = _step(discipline, compute=1.0, gil=0.3, read=0.2, update=0.1)
        for m in (2, 5):
            r = mc.simulate(mc.Machine(1), step, m, discipline, 3000)
            assert r.throughput == pytest.approx(1 / step.time, rel=1e-3)


def test_intra_op_threads_and_contention():
    # A gradient alone keeps 2 cores busy; two on 2 cores get one core each:
    # each takes twice as long and together they do what one did alone.
    two = mc.Machine(2, intra_op=2.0)
    assert mc.simulate(two, _step("hogwild"), 2, "hogwild", 400).throughput == pytest.approx(1.0)
    # gradients beside each other run c(n) slower
    slow = mc.Machine(8, contention=(1.0, 1.5))
    assert mc.simulate(slow, _step("hogwild"), 4, "hogwild", 400).throughput == \
        pytest.approx(4 / 1.5)


def test_copies_share_the_memory_bandwidth():
    # Updates dominate; one copy stream: the copies run one at a time in effect.
    step = _step("hogwild", compute=0.01, update=1.0)
    r = mc.simulate(mc.Machine(64, copy_streams=1.0), step, 16, "hogwild", 2000)
    assert r.throughput == pytest.approx(1.0, rel=0.02)
    r2 = mc.simulate(mc.Machine(64, copy_streams=4.0), step, 16, "hogwild", 2000)
    assert r2.throughput == pytest.approx(4.0, rel=0.02)
    assert r2.copies_mean > 15


def test_lock_holds_serialise_updates():
    step = _step("lock", compute=sim.Exponential(1.0), read=0.2, update=0.3)
    r = mc.simulate(mc.Machine(64), step, 32, "lock", 5000)
    assert r.throughput == pytest.approx(1 / 0.5, rel=0.01)
    assert mc.ceilings(mc.Machine(64), step, 32, "lock")["mutex"] == pytest.approx(2.0)


@pytest.mark.parametrize("discipline", ["lock", "leashed"])
def test_without_shared_resources_it_is_the_staleness_simulator(discipline):
    # Same random stream, same staleness rule: the same updates, in the same order.
    kw = dict(read=0.02) if discipline == "lock" else {}
    r = mc.simulate(mc.Machine(1000), _step(discipline, sim.Exponential(1.0), update=0.05, **kw),
                    8, discipline, 5000, burn_in=100, rng=3)
    s = sim.simulate(8, sim.Exponential(1.0), 0.05, discipline, 5000, read_time=kw.get("read", 0.0),
                     burn_in=100, rng=3)
    np.testing.assert_array_equal(r.sim.staleness, s.staleness)
    np.testing.assert_array_equal(r.sim.attempts, s.attempts)
    assert r.throughput == pytest.approx(s.throughput, rel=1e-9)


def test_hogwild_staleness_matches_the_simulator_in_distribution():
    r = mc.simulate(mc.Machine(1000), _step("hogwild", sim.Exponential(1.0), update=0.05), 8,
                    "hogwild", 40_000, rng=1)
    s = sim.simulate(8, sim.Exponential(1.0), 0.05, "hogwild", 40_000, burn_in=200, rng=2)
    assert st.total_variation(r.sim.hist / r.sim.hist.sum(), s.hist) < 0.02


def test_leashed_buffers_stay_within_the_store_bound_and_drops_follow_persistence():
    step = _step("leashed", sim.LogNormal(1.0, 0.5), gil=0.05, update=0.2)
    for m in (2, 4, 16):
        r = mc.simulate(mc.Machine(8), step, m, "leashed", 3000, rng=m)
        assert 3 <= r.peak_buffers <= 2 * m + 1  # ckernels/README.md: at most 2m + 1
        assert r.sim.dropped == 0
    dropping = mc.simulate(mc.Machine(64), step, 16, "leashed", 3000, persistence=0)
    assert dropping.sim.dropped > 0 and dropping.sim.attempts.max() == 1


def test_bad_machine_and_step_input_raises():
    with pytest.raises(ValueError, match="cores"):
        mc.Machine(0)
    with pytest.raises(ValueError, match="intra_op"):
        mc.Machine(2, intra_op=3.0)
    with pytest.raises(ValueError, match="contention"):
        mc.Machine(2, contention=(1.0, 0.0))
    with pytest.raises(ValueError, match="copy_streams"):
        mc.Machine(2, copy_streams=0.5)
    with pytest.raises(ValueError, match="gil time"):
        mc.Step(1.0, gil=-1.0)
    with pytest.raises(ValueError, match="gil_split"):
        mc.Step(1.0, gil_split=2.0)
    with pytest.raises(ValueError, match="discipline"):
        mc.simulate(mc.Machine(2), mc.Step(1.0), 2, "mutex")
    with pytest.raises(ValueError, match="3 steps for 2"):
        mc.simulate(mc.Machine(2), [mc.Step(1.0)] * 3, 2, "lock")


# ---------------------------------------------------- injected staleness ----

@pytest.fixture(scope="module")
def digits():
    from asgd import rules, stepsize
    from asgd.data import Batches
    from asgd.run import default_config, parse, problem_of
    cfg = default_config()
    problem = problem_of(cfg)
    scales = stepsize.schedule(rules.update_rule(parse(cfg).stepsize).transform).table()
    return problem, Batches(problem.train, cfg.batch_size, 0), np.asarray(scales, np.float32)


def test_injected_staleness_reads_the_delayed_iterate(digits):
    import jax
    problem, batches, scales = digits
    steps, tau = 40, 3
    res = convergence.run(problem.grad_fn, problem.init_flat, batches, scales,
                          np.full(steps, tau), epsilon=-1.0, window=10)
    assert res.updates == math.inf and not res.diverged and res.losses.size == steps
    # reference: keep every iterate, read theta_{max(t - tau, 0)}
    thetas, losses = [problem.init_flat.copy()], []
    for t in range(steps):
        loss, grads = problem.grad_fn(thetas[max(t - tau, 0)], *batches.get(t))
        g = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(grads)])
        thetas.append(thetas[-1] + scales[tau] * g)
        losses.append(float(loss))
    np.testing.assert_allclose(res.losses, losses, rtol=1e-5)


def test_staleness_costs_updates_to_epsilon(digits):
    problem, batches, scales = digits
    fresh = convergence.run(problem.grad_fn, problem.init_flat, batches, scales,
                            np.zeros(600, np.int64), epsilon=0.5, window=10)
    stale = convergence.run(problem.grad_fn, problem.init_flat, batches, scales,
                            np.full(600, 12), epsilon=0.5, window=10)
    assert fresh.updates < stale.updates
    assert fresh.updates % 10 == 0 and fresh.losses[-10:].mean() <= 0.5


def test_draw_staleness():
    rng = np.random.default_rng(0)
    assert np.all(convergence.draw_staleness([0, 0, 5], 100, rng) == 2)
    assert np.all(convergence.draw_staleness([], 10, rng) == 0)
    taus = convergence.draw_staleness([1, 1], 20_000, rng)
    assert taus.mean() == pytest.approx(0.5, abs=0.02)


# ------------------------------------------------------------- calibration ----

def fake_calibration(cores=2, gil_s=60e-6, step_s=640e-6, update_s=30e-6, read_s=12e-6):
    """A calibration with round numbers (no timing), for the predict pipeline."""
    rng = np.random.default_rng(0)
    steps = {a: {"updates_per_s": [1 / step_s] * 3, "read_s": [read_s if a == "lock" else 3e-6] * 3,
                 "compute_s": [step_s - 80e-6] * 3, "update_s": [update_s] * 3,
                 "compute_samples": (rng.lognormal(0, 0.2, 500) * (step_s - 80e-6)).tolist()}
             for a in cal.ALGORITHMS}
    load = {"load_before": [0.05, 0.1, 0.1], "load_after": [0.1, 0.1, 0.1], "seconds": 1.0}
    gil = {a: {"probe_s": gil_s, "acquisitions": 10.0, "held_s": gil_s - 20e-6, "model_s": gil_s,
               "step_alone_s": step_s, "step_with_probe_s": step_s + 2e-3, "runqueue_share": 0.01}
           for a in cal.ALGORITHMS}
    gil.update({"switch_interval_s": 2e-4, "probe_cpu": 1, "handoff_pair_s": 4e-6,
                "gradient_call_s": 30e-6, "update_call_s": 6e-6,
                "check": {"hold_s": 1e-4, "measured_s": 1.08e-4}, **load})
    grad = [550e-6 * max(1.0, k * 1.2 / cores) * (1.0 if k == 1 else 1.1)
            for k in range(1, 2 * cores + 1)]
    return {"version": cal.CALIBRATION_VERSION, "cores": cores, "params": 11_274,
            "config": {"dataset": "digits", "data_dir": "", "eval_fraction": 0.2, "split_seed": 0,
                       "model": "mlp", "mlp_hidden": [128, 128, 128], "batch_size": 32,
                       "learning_rate": 0.05, "stepsize": "constant", "persistence": -1,
                       "cpus": 0, "seed": 0},
            "steps": {**steps, **load}, "gil": gil,
            "concurrency": {"threads": list(range(1, 2 * cores + 1)), "gradient_s": grad,
                            "speed": [grad[0] / t for t in grad], **load},
            "one_core": {"threads": [1], "gradient_s": [660e-6], "speed": [1.0], **load},
            "copies": {"threads": list(range(1, cores + 1)), "update_s": [20e-6] * cores,
                       "bytes": 135_288, "gbs": [6.8 * k for k in range(1, cores + 1)], **load},
            "batches": {"batch_size": [16, 32], "gradient_s": [300e-6, 400e-6],
                        "fit": {"fixed_s": 200e-6, "per_example_s": 6.25e-6}, **load},
            "machine": {"cpus": cores, "cpu_count": cores, "cpu_model": "test CPU",
                        "python": "3", "jax": "0", "store_build": None, "date": "today", **load}}


def test_the_calibrated_step_adds_up_to_the_measured_step():
    c = fake_calibration()
    for a in cal.ALGORITHMS:
        step = pr.step_of(c, a)
        assert step.time == pytest.approx(640e-6, rel=1e-6)
        assert step.gil == pytest.approx(60e-6) and step.update == pytest.approx(30e-6)
        assert step.read == (pytest.approx(12e-6) if a == "lock" else 0.0)
        assert step.gil_split == pytest.approx(1 - 36 / 60)  # the gradient and update calls' share
        r = mc.simulate(pr.calibrated_machine(c), step, 1, a, 3000)
        assert r.throughput == pytest.approx(1 / 640e-6, rel=0.01)  # resampled gradient times
    assert pr.intra_op(c) == pytest.approx(1.2)
    assert pr.contention(c)[0] == pytest.approx(1.0)
    assert pr.contention(c)[1:] == pytest.approx([1.1] * 3)
    target = pr.target_machine(c, 64, memory_gbs=68.0)
    assert target.contention == (1.0, pytest.approx(1.1)) and target.copy_streams == pytest.approx(10)
    assert pr.target_machine(c, 64, 68.0, grad_slowdown=1.0).contention == (1.0, 1.0)


def test_config_fields_round_trip(config):
    config.batch_size, config.mlp_hidden = 16, (8, 4)
    fields = cal.config_fields(config)
    json.dumps(fields)
    back = cal.run_config(fields, "hogwild", 3, 50, "/tmp/w", seed=4)
    assert back.batch_size == 16 and back.mlp_hidden == (8, 4) and back.threads == 3
    assert back.algorithm == "hogwild" and back.num_updates == 50 and back.seed == 4
    assert back.eval_every == 10**9 and back.quiet


@pytest.mark.slow
def test_gil_probe_measures_a_known_gil_hold():
    """As the calibration uses it: the probe on a CPU of its own, the load on another."""
    import os
    import sys
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("the probe needs a CPU of its own")
    switch = sys.getswitchinterval()
    os.sched_setaffinity(0, cpus[:1])  # this thread and the synthetic worker it starts
    sys.setswitchinterval(2e-4)
    try:
        empty = cal.synthetic_gil_cost(0.0, 1000, cpus[1])
        held = cal.synthetic_gil_cost(3e-4, 500, cpus[1])
    finally:
        sys.setswitchinterval(switch)
        os.sched_setaffinity(0, cpus)
    assert held - empty == pytest.approx(3e-4, rel=0.3)


# ------------------------------------------------------------------ predict ----

def test_predict_end_to_end_with_a_given_calibration(tmp_path, capsys):
    """Validation runs, predictions, tables, the figure and the docs' blocks filled."""
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps(fake_calibration()))
    docs = tmp_path / "dynamics.md"
    shutil.copy(cli_docs(), docs)
    out = tmp_path / "out"
    rc = cli.main(["predict", "--config", "default", "--calibrate", str(calibration),
                   "--cores", "16", "--threads", "1,4,16", "--measure-threads", "1,2",
                   "--measure-updates", "120", "--seeds", "0", "--sim-updates", "600",
                   "--max-updates", "300", "--window", "10", "--gil-free",
                   "--docs", str(docs), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "## validation" in text and "## predictions" in text
    result = json.loads((out / "predict.json").read_text())
    assert set(result["predictions"]) == {"this machine (P=2)", "P=16", "P=16, no GIL"}
    cells = result["predictions"]["P=16"]
    assert [c["threads"] for c in cells if c["algorithm"] == "lock"] == [1, 4, 16]
    assert all(c["updates_per_s"] <= 1 / 60e-6 * 1.001 for c in cells)  # the GIL ceiling
    free = result["predictions"]["P=16, no GIL"]
    assert max(c["updates_per_s"] for c in free) > max(c["updates_per_s"] for c in cells)
    v = result["validation"]
    assert [(r["algorithm"], r["threads"]) for r in v["rows"]] == [
        (a, m) for a in cal.ALGORITHMS for m in (1, 2)]
    assert all(r["updates_per_s_ratio"] > 0 for r in v["rows"])
    assert v["summary"]["updates_per_s"] is not None
    assert (out / "predict.png").stat().st_size > 10_000
    for name in ("calibration", "validation", "predictions", "claims"):
        assert (out / f"{name}.md").read_text().strip()
    filled = docs.read_text()
    assert "| lock | 2 | 1 |" in filled and "Not yet measured" not in filled
    assert (tmp_path / "predict" / "predict.png").exists()
    assert (out / "cells.csv").read_text().count("\n") == 1 + 3 * (4 + 3 + 3)  # m = 1, 2, 4, 16 here


def cli_docs():
    import os
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                        "dynamics.md")


@pytest.mark.parametrize("argv, message", [
    (["predict", "--config", "nosuch"], "cannot load config"),
    (["predict", "--set", "threads"], "bad --set"),
    (["predict", "--set", "batch_size=0"], "batch_size must be positive"),
    (["predict", "--threads", "0"], "--threads must be >= 1"),
    (["predict", "--epsilon", "-1"], "--epsilon must be a positive"),
    (["predict", "--calibrate", "/nonexistent.json", "--config", "default"], "cannot read calibration"),
])
def test_predict_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_predict_refuses_a_calibration_of_another_problem(tmp_path, capsys):
    c = fake_calibration()
    c["config"]["batch_size"] = 128
    path = tmp_path / "c.json"
    path.write_text(json.dumps(c))
    assert cli.main(["predict", "--config", "default", "--calibrate", str(path),
                     "--out", str(tmp_path)]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_fill_docs_replaces_only_its_blocks(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("a\n<!-- predict:claims -->\nold\n<!-- /predict:claims -->\nb\n")
    pr.fill_docs(str(doc), {"claims": "new\ntext"})
    assert doc.read_text() == "a\n<!-- predict:claims -->\nnew\ntext\n<!-- /predict:claims -->\nb\n"
    with pytest.raises(ValueError, match="predict:validation"):
        pr.fill_docs(str(doc), {"validation": "x"})
