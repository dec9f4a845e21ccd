"""``smalltown(fresh=True)``: every test starts on a pristine cluster of its own.

Each test first looks for what any other test of this module left behind,
then leaves something behind itself: a namespace carrying the module's label,
never deleted. On clusters of their own neither test finds anything; had the
two shared a cluster, whichever ran second would find the other's namespace
and fail, in either order (and with ``-n``, on whichever worker). Objects of
the test's own namespace fixture would prove nothing: it deletes them.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

pytestmark = pytest.mark.smalltown(nodes=1, fresh=True)

#: The label every namespace this module leaves behind carries; its value names the test.
LEFT_BY = "e2e.smalltown.test/left-by-fresh-test"


@pytest.mark.parametrize("test", ["first", "second"])
def test_a_fresh_cluster_has_nothing_another_test_left(core: k8s.CoreV1Api, test: str) -> None:
    left = core.list_namespace(label_selector=LEFT_BY).items
    assert [ns.metadata.name for ns in left] == [], "another test's namespace is on this test's fresh cluster"

    name = f"left-by-{test}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels={LEFT_BY: test})))
    mine = core.list_namespace(label_selector=LEFT_BY).items
    assert [ns.metadata.name for ns in mine] == [name], "the label selector finds what a test leaves"
