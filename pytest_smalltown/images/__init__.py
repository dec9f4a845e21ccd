"""Builders of the reference images (kernel, tiny VM, Nanoswitch, node).

Every image is built from real upstream parts (Debian packages, Go modules)
and cached under :func:`pytest_smalltown.base.paths.cache_root`, keyed by a
hash of everything that goes into it, so it is rebuilt only when that changes.
"""
