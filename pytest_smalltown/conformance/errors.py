"""The one error of the conformance runner."""

from __future__ import annotations

from pytest_smalltown.base.errors import SmalltownError


class ConformanceError(SmalltownError, RuntimeError):
    """The suite could not be run at all (as opposed to: it ran and specs failed)."""
