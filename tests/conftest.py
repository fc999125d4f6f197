"""Shared fixtures: small configs and the optional real MNIST folder."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")


@pytest.fixture
def config(tmp_path):
    """The default config, quiet, writing into a temporary workdir."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("default_config", os.path.join(REPO, "configs", "default.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.workdir = str(tmp_path)
    cfg.quiet = True
    return cfg


@pytest.fixture
def shared_mnist():
    if not os.path.exists(os.path.join(SHARED_MNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("../shared/data/mnist is not present")
    return SHARED_MNIST
