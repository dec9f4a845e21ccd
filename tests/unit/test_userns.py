"""How a non-root build acts as root on its trees (images/userns.py), without running one.

tests/integration/test_unprivileged.py builds and boots as a real non-root user.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from pytest_smalltown.images import userns

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def as_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process treated as a non-root user, with subordinate id files under ``tmp_path``."""
    monkeypatch.setattr(userns, "OWNERSHIP", "userns")
    monkeypatch.setattr(userns, "ETC", tmp_path)
    return tmp_path


def test_the_first_block_big_enough_is_used_by_name_or_uid(as_user: Path) -> None:
    (as_user / "subuid").write_text(f"other:100000:65536\n{ME}:200000:1000\n{ME}:300000:65536\n")
    (as_user / "subgid").write_text(f"{os.geteuid()}:400000:70000\n")
    assert userns.subordinate_ids() == userns.SubordinateIds(uid_start=300000, gid_start=400000)


def test_missing_ids_say_how_to_get_them(as_user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (as_user / "subuid").write_text(f"{ME}:100000:65536\n")  # no subgid file
    monkeypatch.setattr(userns.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(userns.UserNamespaceError, match=rf"user '{ME}' has no block of 65536 .*usermod --add-subuids"):
        userns.check()


def test_missing_newuidmap_is_named(as_user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns.shutil, "which", lambda tool: None)
    with pytest.raises(userns.UserNamespaceError, match="'newuidmap' is not installed; .*apt-get install uidmap"):
        userns.check()


def test_an_unshare_too_old_to_map_ranges_is_named(as_user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (as_user / "subuid").write_text(f"{ME}:100000:65536\n")
    (as_user / "subgid").write_text(f"{ME}:200000:65536\n")
    old = as_user / "bin" / "unshare"
    old.parent.mkdir()
    old.write_text("#!/bin/sh\necho ' --map-user=<uid|name>  map current user to uid'\n")  # util-linux 2.37's options
    old.chmod(0o755)
    real_which = shutil.which
    monkeypatch.setattr(userns.shutil, "which",
                        lambda tool: str(old) if tool == "unshare" else real_which(tool) or tool)
    with pytest.raises(userns.UserNamespaceError, match=r"cannot map ranges of ids \(--map-users, util-linux 2\.38"):
        userns.check()


def test_root_runs_commands_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "OWNERSHIP", "root")
    assert userns.as_root(["mke2fs", "-d", "tree"]) == ["mke2fs", "-d", "tree"]
    assert userns.inner_owner(42, 43) == (42, 43)


def test_a_user_runs_them_in_a_namespace_where_root_is_the_user(as_user: Path) -> None:
    (as_user / "subuid").write_text(f"{ME}:100000:65536\n")
    (as_user / "subgid").write_text(f"{ME}:200000:65536\n")
    argv = userns.as_root(["mke2fs", "-d", "tree"])
    assert Path(argv[0]).name == "unshare"
    assert {"--map-user=0", "--map-group=0", "--map-users=100000,1,65535", "--map-groups=200000,1,65535"} <= set(argv)
    assert argv[-4:] == ["--", "mke2fs", "-d", "tree"]
    # Owners read outside map to what the namespace (and so the image) sees.
    assert userns.inner_owner(os.geteuid(), os.getegid()) == (0, 0)
    assert userns.inner_owner(100041, 200041) == (42, 42)  # _apt, as dpkg made it
    with pytest.raises(userns.UserNamespaceError, match="outside this user's namespace"):
        userns.inner_owner(99, 0)


def test_remove_tree_removes_a_plain_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a/b").mkdir(parents=True)
    (tree / "a/b/file").write_text("x")
    userns.remove_tree(tree)
    assert not tree.exists()
    userns.remove_tree(tree)  # gone already: nothing to do
