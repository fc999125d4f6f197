"""The README's Python example runs as written and computes what it says."""

import os
import re

import numpy as np

from asgd import mindthestep, staleness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_takes_one_mindthestep_step():
    with open(os.path.join(REPO, "README.md")) as f:
        (block,) = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    # w = 1 - alpha(2) * 0.1: the clip (norm 0.17 < 1) leaves the gradient alone, and
    # alpha(tau) is MindTheStep's table for Poisson(3) against uniform(8), at tau = 2.
    alpha = mindthestep.table(0.05, staleness.Poisson(3.0), mindthestep.uniform(8))
    np.testing.assert_allclose(namespace["params"]["w"], 1.0 - alpha[2] * 0.1, rtol=1e-6)
    assert alpha[2] != 0.05  # the step depends on tau: the test would notice a constant
