"""The C parameter store's sources (pstore.c/.h), its stress test and Makefile.

Installed as the package ``asgd.ckernels`` so that ``python -m asgd.stress``
can build and run the stress tests from an installed package too; the
compiled kernel itself is the extension module ``asgd._pstore``.
"""
