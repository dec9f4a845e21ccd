"""The one error of the conformance runner."""

from __future__ import annotations


class ConformanceError(RuntimeError):
    """The suite could not be run at all (as opposed to: it ran and specs failed)."""
