"""How the image builds run host programs, and the error every build step raises.

Every builder (Debian packages, kernel, rootfs, disk, UEFI disk, OCI and
conformance images) finds its programs with
:func:`~pytest_smalltown.base.programs.find_program` and runs them through
:func:`run_tool`, so that a failing one is always a :class:`BuildError` that
carries the tool's own message (the exit status alone tells a user nothing).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.processes import run_supervised, timeout_message


class BuildError(SmalltownError, RuntimeError):
    """A step of an image build failed; the message says which, why, and what to do."""


def run_tool(argv: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
             input: str | None = None, hint: str = "", error: type[BuildError] = BuildError,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under the reaper (it dies with the session); a non-zero exit raises ``error``.

    The message names ``what`` was being done, the command, the tail of the
    tool's output and, if given, ``hint``: what the user can do about it. A
    tool still running after ``timeout`` seconds (default: the reaper's
    :data:`~pytest_smalltown.base.processes.TOOL_TIMEOUT`) is stopped, and
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
