"""Finding a host program before we run it: one function, one error.

Image builds (mmdebstrap, mke2fs, apt-get ...), launches (QEMU, swtpm) and
snapshots (zstd, qemu-img) all need programs of the host. Asking for them here
first turns "FileNotFoundError: [Errno 2] No such file or directory: 'zstd'"
somewhere deep in a build or a restore into a message that says what is
missing, what it is needed for and how to install it.
"""

from __future__ import annotations

import os
import shutil

from pytest_smalltown.base.errors import SmalltownError


class ProgramNotFoundError(SmalltownError, RuntimeError):
    """A host program we need is not installed (or the path given for it is no executable file)."""


def find_program(name: str, needed_for: str, package: str, otherwise: str = "") -> str:
    """The path of program ``name``, or a :class:`ProgramNotFoundError` saying how to get it.

    ``name`` is looked up on PATH, or taken as a path if it has a slash (a
    QEMU binary the user named). The message names the program,
    ``needed_for`` (what it is for, e.g. "the node disk is made with it"),
    the Debian ``package`` to install, and ``otherwise``: what else the user
    can do (e.g. "drop --smalltown-tpm").
    """
    path = shutil.which(name)
    if path is not None:
        return path
    missing = f"'{name}' is not an executable file" if os.sep in name else f"'{name}' is not installed"
    remedies = [f"apt-get install {package}", "or run scripts/setup-host"] + ([f"or {otherwise}"] if otherwise else [])
    raise ProgramNotFoundError(f"{missing}; {needed_for} ({', '.join(remedies)})")
