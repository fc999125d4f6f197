"""Shared fixtures: small configs, compiled problems shared by the session, real MNIST."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")


@pytest.fixture
def config(tmp_path):
    """The default config, quiet, writing into a temporary workdir."""
    from asgd.run import default_config
    cfg = default_config()
    cfg.workdir = str(tmp_path)
    cfg.quiet = True
    return cfg


@pytest.fixture(scope="session")
def problems():
    """Problems by (data spec, model spec), each loaded and compiled once per session."""
    from asgd.problem import make_problem
    cache = {}

    def get(specs):
        key = (specs.data, specs.model)
        if key not in cache:
            cache[key] = make_problem(*key)
        return cache[key]

    return get


@pytest.fixture
def train(problems):
    """``asgd.run.train`` reusing the session's compiled problems (same results, less compiling)."""
    from asgd.run import execute, parse

    def run(cfg, run_dir=None):
        specs = parse(cfg)
        return execute(specs, cfg.to_dict(), run_dir, problems(specs))

    return run


@pytest.fixture
def shared_mnist():
    if not os.path.exists(os.path.join(SHARED_MNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("../shared/data/mnist is not present")
    return SHARED_MNIST
