"""Progress lines: how long steps (image builds, boots, saves) say what they are doing.

Every step that can take more than a few seconds takes a :data:`Progress`
callable, so that the pytest plugin can print through pytest's capture, the
CLI to stderr, and tests can collect the lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

#: Where a long step reports progress: called with one line of text, no newline.
Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Default progress reporter: one line on stderr, visible under pytest -s too."""
    print(f"[smalltown] {message}", file=sys.stderr, flush=True)
