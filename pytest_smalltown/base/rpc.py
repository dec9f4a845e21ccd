"""``grpc``, imported with gRPC's fork handlers off: every process the harness forks execs at once.

Since grpcio 1.81 (grpc/grpc#43055, open upstream), gRPC's fork handler
restarts its poller thread in a forked child. ``subprocess`` then closes
that thread's epoll descriptor before ``exec`` (``close_fds``), and the
child aborts ("epoll_wait error: Bad file descriptor", exit -6) before it
runs what it was started for. A CI run lost the conformance suite's dry run
this way. Our children never use gRPC, so its fork support buys nothing: off
(``GRPC_ENABLE_FORK_SUPPORT=false``, unless the environment says otherwise),
gRPC installs no fork handlers at all. It must be set before gRPC is first
imported: host-side modules import ``grpc`` from here.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402

__all__ = ["grpc"]
