"""Writing credentials on the host: the debug kubeconfig, golden tickets."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (0600), never briefly wider.

    The file is created with mode 0600 instead of being chmod-ed after the
    write, so there is no moment at which another local user could read it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    return path
