"""The scale-table adapter: a transform as the C store's per-tau table, kept current."""

import jax.numpy as jnp
import numpy as np
import pytest

from asgd import stepsize
from asgd.executors.base import WorkerLog
from asgd.executors.scales import ScaleController, schedule


def logs_with(*taus_per_worker):
    logs = [WorkerLog() for _ in taus_per_worker]
    for log, taus in zip(logs, taus_per_worker):
        log.staleness.extend(taus)
    return logs


def test_controller_observes_each_applied_tau_once_and_swaps_the_table():
    tx = stepsize.tail_tau(0.1, amplitude=0.5, window=6, max_staleness=8)
    logs = logs_with([0, 2], [4])
    control = ScaleController(schedule(tx, max_staleness=8), logs)
    first = control.array
    np.testing.assert_allclose(first, -0.1)           # nothing seen: F = 1/2
    assert control.poll() is True and control.array is not first
    assert control.poll() is False                    # nothing new: nothing observed twice
    logs[0].staleness.extend([2, 6])
    logs[1].staleness.extend([0, 9])                  # the 7th tau is past the window
    assert control.poll() is True
    # The table is the transform's own state after the six taus of the window.
    state = tx.init(None)
    for tau in (0, 2, 4, 2, 6, 0):
        _, state = tx.update(jnp.ones(1), state, staleness=tau)
    expected = [tx.update(jnp.ones(1), state, staleness=tau)[0][0] for tau in range(9)]
    np.testing.assert_allclose(control.array, np.asarray(expected, np.float32), rtol=1e-6)
    assert int(control.schedule.state.count) == 6
    assert control.summary()["alpha_table"] == pytest.approx([-float(x) for x in expected])


def test_controller_of_a_fixed_rule_never_changes():
    control = ScaleController(schedule(stepsize.inverse(0.2), max_staleness=4), logs_with([0, 1, 3]))
    table = control.array
    assert control.poll() is False and control.array is table
    np.testing.assert_allclose(table, [-0.2, -0.1, -0.2 / 3, -0.05, -0.04], rtol=1e-6)
    assert table.dtype == np.float32 and table.flags.c_contiguous
