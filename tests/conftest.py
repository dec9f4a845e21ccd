"""Shared test configuration for the plugin's own tests."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def _load_the_whole_kubernetes_client() -> None:
    """Import every class of the Kubernetes client now, before any test runs.

    The client (v37) imports its API and model classes lazily, on first use.
    The ``pytester`` fixture removes from ``sys.modules`` whatever a test
    imported for the first time, also in the outer process: a model first used
    inside such a test (a restore that lists nodes) is imported again later
    as a second class of the same name, and the API classes loaded with the
    first copy then refuse the second ("Input should be a valid dictionary or
    instance of V1Pod ... input_type=V1Pod"), failing unrelated later tests.
    Loaded here, before any snapshot is taken, every class has one copy for the session.
    """
    import kubernetes.client

    for name in kubernetes.client.__all__:
        getattr(kubernetes.client, name)


_load_the_whole_kubernetes_client()
