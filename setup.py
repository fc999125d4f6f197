# Compiles the C parameter store (asgd._pstore) at install time:
#   pip install -e .      (or pip install ., python -m build)
# Metadata lives in pyproject.toml. The extension uses the stable ABI (cffi
# builds it with Py_LIMITED_API), so the wheel is tagged abi3 from cp310 on:
# one wheel per platform serves Python 3.10 and later.
from setuptools import setup

setup(cffi_modules=["ckernels/build_store.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp310"}})
