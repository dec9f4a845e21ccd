"""Acting as root on a build tree without being root: a user namespace, as ``podman unshare`` does.

A Debian root file system holds files of several owners (root, ``_apt``,
``mail``, setuid-root programs), and the ext4 disk made from it must keep them.
Only root can create such a tree. A developer runs the tests as themselves, so
for anyone else the steps that need root run in a user namespace where

* root is the caller: what that root writes belongs to the caller outside,
  so the cache stays the caller's to read, move and delete;
* ids 1-65535 are the caller's subordinate ids (``/etc/subuid``,
  ``/etc/subgid``, granted once by the host's admin; ``scripts/setup-host``
  does it), so dpkg can give ``_apt`` or ``mail`` their files.

Inside, mmdebstrap runs in its ordinary root mode, ``chroot`` works, and
``mke2fs -d`` reads the owners the image must have. As root (CI) commands run
as they are. Trees made the two ways differ on disk (outside the namespace
their owners read differently), so :data:`OWNERSHIP` is part of every cache key
that holds such a tree.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.programs import find_program
from pytest_smalltown.images.tools import BuildError, run_tool

#: How many subordinate ids a build needs: every id a Debian package may own, up to nobody (65534).
SUBID_COUNT = 65536

#: How this process's build trees are owned on disk: "root" (real ids) or "userns" (mapped ids).
OWNERSHIP = "root" if os.geteuid() == 0 else "userns"

SETUP_HINT = ("a non-root build needs subordinate ids and newuidmap: run scripts/setup-host once (with sudo), or "
              "`sudo apt-get install uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids "
              "100000-165535 {user}`")


class UserNamespaceError(BuildError):
    """This user cannot act as root on a build tree here (the message says what to set up)."""


@dataclass(frozen=True)
class SubordinateIds:
    """The first block of at least :data:`SUBID_COUNT` subordinate uids and gids of a user."""

    uid_start: int
    gid_start: int


def _first_block(path: Path, user: str, uid: int) -> int | None:
    """Start of ``user``'s first block of :data:`SUBID_COUNT` or more ids in a subuid/subgid file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[1].isdigit() and fields[2].isdigit():
            if int(fields[2]) >= SUBID_COUNT:
                return int(fields[1])
    return None


#: Where the subordinate id files are (tests point it elsewhere).
ETC = Path("/etc")


def subordinate_ids(uid: int | None = None) -> SubordinateIds:
    """The subordinate ids of ``uid`` (default: this process), or a :class:`UserNamespaceError` saying how to get them."""
    return _read_subordinate_ids(os.geteuid() if uid is None else uid, ETC)


@functools.lru_cache(maxsize=8)
def _read_subordinate_ids(uid: int, etc: Path) -> SubordinateIds:
    """Read once per process: a tar writer asks for every file of a tree (:func:`inner_owner`)."""
    user = pwd.getpwuid(uid).pw_name
    uid_start = _first_block(etc / "subuid", user, uid)
    gid_start = _first_block(etc / "subgid", user, uid)
    if uid_start is None or gid_start is None:
        raise UserNamespaceError(f"user {user!r} has no block of {SUBID_COUNT} subordinate ids in "
                                 f"{etc / 'subuid'} and {etc / 'subgid'}; " + SETUP_HINT.format(user=user))
    return SubordinateIds(uid_start, gid_start)


def check() -> None:
    """Fail now, with what to do, if the root steps of a build cannot run (call before any slow step)."""
    if OWNERSHIP == "root":
        return
    user = pwd.getpwuid(os.geteuid()).pw_name
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            raise UserNamespaceError(f"'{tool}' is not installed; " + SETUP_HINT.format(user=user))
    unshare = find_program("unshare", "a non-root build acts as root in a user namespace", "util-linux")
    usage = subprocess.run([unshare, "--help"], capture_output=True, text=True, check=False).stdout
    if "--map-users" not in usage:
        raise UserNamespaceError(
            f"{unshare} cannot map ranges of ids (--map-users, util-linux 2.38 or later: Debian 12, Ubuntu 23.04); "
            "build the images as root once (sudo smalltown image build), or on a newer host"
        )
    subordinate_ids()


def as_root(argv: list[str]) -> list[str]:
    """``argv`` as it must run to act as root on a build tree: unchanged for root, else in the namespace.

    The namespace also has its own mounts and process ids, so that mmdebstrap
    can mount ``/proc`` in the tree it builds and nothing it mounts is seen
    outside.
    """
    if OWNERSHIP == "root":
        return argv
    ids = subordinate_ids()
    unshare = find_program("unshare", "a non-root build acts as root in a user namespace", "util-linux")
    return [unshare, "--map-user=0", "--map-group=0",
            f"--map-users={ids.uid_start},1,{SUBID_COUNT - 1}", f"--map-groups={ids.gid_start},1,{SUBID_COUNT - 1}",
            "--mount", "--pid", "--fork", "--kill-child", "--", *argv]


def inner_owner(uid: int, gid: int) -> tuple[int, int]:
    """The owner a file of ``uid``:``gid`` (as seen outside) has inside the namespace.

    For code that reads owners itself (a Python tar writer) instead of running
    inside the namespace. The caller's own ids are root; subordinate ids are 1-65535.
    """
    if OWNERSHIP == "root":
        return uid, gid
    ids = subordinate_ids()

    def inner(outer: int, own: int, start: int) -> int:
        if outer == own:
            return 0
        if start <= outer < start + SUBID_COUNT - 1:
            return outer - start + 1
        raise UserNamespaceError(f"id {outer} is outside this user's namespace (subordinate ids from {start})")

    return inner(uid, os.geteuid(), ids.uid_start), inner(gid, os.getegid(), ids.gid_start)


def remove_tree(path: Path) -> None:
    """Remove a build tree, also one holding directories a namespace's ``_apt`` made private."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        if OWNERSHIP == "root":
            raise
        run_tool(as_root(["rm", "-rf", "--one-file-system", str(path)]), f"removing {path}", error=UserNamespaceError)
