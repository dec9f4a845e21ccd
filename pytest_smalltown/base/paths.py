"""Where pytest-smalltown keeps its files on the host: the cache root.

Image builds, saved clusters, the accelerator probe's verdict and the kept
cluster's state all live under one directory, so that a user can find (and
remove) everything of ours in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that moves the cache root.
CACHE_ENV = "SMALLTOWN_CACHE_DIR"


def cache_root() -> Path:
    """The user's cache directory for pytest-smalltown (created on demand).

    ``$SMALLTOWN_CACHE_DIR`` wins, then ``$XDG_CACHE_HOME/pytest-smalltown``,
    then ``~/.cache/pytest-smalltown``.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "pytest-smalltown"
    root.mkdir(parents=True, exist_ok=True)
    return root
