"""The host programs the image builds run: found before use, run supervised, failures explained.

Every builder (Debian packages, kernel, rootfs, disk, UEFI disk, OCI and
conformance images) goes through these two functions, so that a missing tool
is always a :class:`MissingToolError` naming the package to install, and a
failing one is always a :class:`BuildError` that carries the tool's own
message (the exit status alone tells a user nothing).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pytest_smalltown.launch.reaper import run_supervised, timeout_message


class BuildError(RuntimeError):
    """A step of an image build failed; the message says which, why, and what to do."""


class MissingToolError(BuildError):
    """A host program an image build needs is not installed."""


def require_tool(name: str, needed_for: str, package: str) -> str:
    """The path of program ``name``, or a :class:`MissingToolError` saying what it is for and how to install it."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"'{name}' is not installed; {needed_for} "
                               f"(apt-get install {package}, or run scripts/setup-host)")
    return path


def run_tool(argv: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
             input: str | None = None, hint: str = "", error: type[BuildError] = BuildError,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under the reaper (it dies with the session); a non-zero exit raises ``error``.

    The message names ``what`` was being done, the command, the tail of the
    tool's output and, if given, ``hint``: what the user can do about it. A
    tool still running after ``timeout`` seconds (default: the reaper's
    :data:`~pytest_smalltown.launch.reaper.TOOL_TIMEOUT`) is stopped, and
    ``error`` says so in the same terms.
    """
    try:
        proc = run_supervised(argv, cwd=cwd, env=env, input=input, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        raise error(timeout_message(what, expired, hint)) from None
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-4000:]
        raise error(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{output}"
                    + (f"\n{hint}" if hint else ""))
    return proc
