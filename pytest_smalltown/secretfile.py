"""Writing credentials on the host: the debug kubeconfig, golden tickets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (0600), never briefly wider.

    The data goes into a new file in the same directory, which ``mkstemp``
    creates 0600 (``O_CREAT|O_EXCL|O_NOFOLLOW``, a fresh name), and that file
    is then renamed over ``path``. So the secret never sits in a file another
    user could read, nor in an old file someone opened while it was readable
    (a chmod does not close their descriptor), and a symlink planted at
    ``path`` is replaced, not followed to wherever it points.
    """
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path
