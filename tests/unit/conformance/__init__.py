"""The conformance runner's tests, one file per module of ``pytest_smalltown/conformance/``."""
