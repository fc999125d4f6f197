"""The README's Python example runs as written and computes what it says."""

import os
import re

import numpy as np

from asgd import mindthestep, staleness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_block(containing: str) -> str:
    """The README's one Python example that contains ``containing``."""
    with open(os.path.join(REPO, "README.md")) as f:
        (block,) = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if containing in b]
    return block


def test_readme_python_example_takes_one_mindthestep_step():
    block = python_block("stepsize.mindthestep")
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    # w = 1 - alpha(2) * 0.1: the clip (norm 0.17 < 1) leaves the gradient alone, and
    # alpha(tau) is MindTheStep's table for Poisson(3) against uniform(8), at tau = 2.
    alpha = mindthestep.table(0.05, staleness.Poisson(3.0), mindthestep.uniform(8))
    np.testing.assert_allclose(namespace["params"]["w"], 1.0 - alpha[2] * 0.1, rtol=1e-6)
    assert alpha[2] != 0.05  # the step depends on tau: the test would notice a constant


def test_readme_saved_model_example_reproduces_the_eval_accuracy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example's run goes to ./runs/
    namespace = {}
    exec(compile(python_block("load_params"), "README.md", "exec"), namespace)
    assert namespace["accuracy"] == namespace["summary"]["eval_accuracy"]
    assert namespace["summary"]["run_dir"].startswith(str(tmp_path))
