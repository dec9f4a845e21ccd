"""The real ``e2e.test`` we build: its version, and that the smoke subset selects exactly its specs."""

from __future__ import annotations

import re
import subprocess

from pytest_smalltown.conformance.command import build_suite
from pytest_smalltown.conformance.smoke import SMOKE_TESTS, smoke_focus
from pytest_smalltown.images.gobuild import KUBERNETES_VERSION


def test_e2e_test_is_stamped_with_the_cluster_version() -> None:
    suite = build_suite()
    out = subprocess.run([str(suite.e2e), "--version"], capture_output=True, text=True, timeout=120)
    assert KUBERNETES_VERSION in out.stdout + out.stderr


def test_smoke_focus_selects_every_smoke_spec_and_nothing_else() -> None:
    suite = build_suite()
    out = subprocess.run(
        [str(suite.e2e), "--ginkgo.dry-run", "--ginkgo.no-color", "--ginkgo.v", f"--ginkgo.focus={smoke_focus()}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert f"Will run {len(SMOKE_TESTS)} of " in out.stdout, out.stdout[-2000:]
    # Verbose dry runs print each selected spec's full name followed by its labels.
    selected = {name for name in SMOKE_TESTS if re.search(re.escape(name) + r" \[", out.stdout)}
    assert selected == set(SMOKE_TESTS)
