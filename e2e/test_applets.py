"""The test image's applets, called as users' pod scripts call them: through ``sh -c``, in a pod.

A pod's command is most often ``sh -c "..."``, and busybox's ash runs its own
applets for the names in it, whatever PATH holds; an applet built without an
option then crashes or refuses it in the user's test, not in ours. One pod
runs the whole applet table (:data:`pytest_smalltown.images.applets.APPLET_TABLE`)
as one script, against a busybox httpd pod behind a Service, and every row
that crashed, refused an option or printed the wrong thing is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.images.applets import APPLET_TABLE, judge, table_script, web_server_script
from pytest_smalltown.kube import busybox_pod, pod_logs, wait_pod_phase

pytestmark = pytest.mark.smalltown(nodes=1)

#: Until kube-proxy has programmed the new Service, connections to it fail:
#: wait for it (a minute at most) with the plainest ``nc``, before any row runs.
WAIT_FOR_WEB = ('i=0; while [ "$i" -lt 60 ] && ! nc -w 1 "$WEB_HOST" "$WEB_PORT" < /dev/null > /dev/null 2>&1; '
                'do i=$((i + 1)); sleep 1; done\n')


def test_every_applet_row_passes_through_sh_c_in_a_pod(
    run_pod: Callable[..., Any], core: k8s.CoreV1Api, smalltown_kube: Any, smalltown_namespace: str
) -> None:
    web = run_pod("web", ["sh", "-c", web_server_script("/www", "80")])
    core.create_namespaced_service(smalltown_namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1ServiceSpec(selector={"app": "web"}, ports=[k8s.V1ServicePort(port=80, target_port=80)]),
    ))  # fmt: skip
    env = f"export WEB_HOST=web WEB_IP={web.status.pod_ip} WEB_PORT=80\n"
    script = env + WAIT_FOR_WEB + table_script(APPLET_TABLE)
    core.create_namespaced_pod(smalltown_namespace, busybox_pod("applets", ["sh", "-c", script]), _request_timeout=30)
    wait_pod_phase(smalltown_kube, smalltown_namespace, "applets", ("Succeeded", "Failed"), timeout=600)
    failures = judge(APPLET_TABLE, pod_logs(smalltown_kube, smalltown_namespace, "applets"))
    assert not failures, f"{len(failures)} of {len(APPLET_TABLE)} applet rows failed:\n" + "\n".join(failures)
