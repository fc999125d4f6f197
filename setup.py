# Compiles the C parameter store (asgd._pstore) at install time:
#   pip install -e .      (or pip install .)
# Metadata lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["ckernels/build_store.py:ffibuilder"])
