"""``python3 -m pytest_smalltown.node``: the node VM's init (under tini), or a host-mode run.

Host mode (``--host-root DIR --ip ADDR``) runs the same boot sequence without
touching the machine: no mounts, hostname or DHCP, everything under DIR, and
ports shifted by ``--port-offset`` so that it coexists with anything else.
It is how the control plane is iterated on without booting a VM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from pytest_smalltown.node.config import ALL_COMPONENTS, AgentConfig, Binaries, Ports


def parse_config(argv: list[str]) -> AgentConfig:
    p = argparse.ArgumentParser(prog="python3 -m pytest_smalltown.node")
    p.add_argument("--host-root", type=Path, help="host mode: keep all state under this directory")
    p.add_argument("--ip", help="host mode: the node IP to use instead of DHCP")
    p.add_argument("--port-offset", type=int, default=0, help="added to every listening port")
    p.add_argument("--bin-dir", type=Path, help="directory with kube, etcd, coredns (default /usr/local/bin)")
    p.add_argument("--components", default=",".join(ALL_COMPONENTS),
                   help="comma-separated components to run")
    p.add_argument("--enrolment", type=Path, help="enrolment file instead of the fw_cfg path")
    args = p.parse_args(argv)

    cfg = AgentConfig()
    if args.host_root is not None:
        if not args.ip:
            p.error("--host-root needs --ip")
        cfg.root = args.host_root.resolve()
        cfg.init = False
        cfg.static_ip = args.ip
        cfg.enrolment_path = cfg.root / "enrolment.pb"
    if args.port_offset:
        cfg.ports = Ports(**{f.name: getattr(cfg.ports, f.name) + args.port_offset
                             for f in dataclasses.fields(Ports)})
    if args.bin_dir is not None:
        b = args.bin_dir.resolve()
        cfg.bins = Binaries(kube=str(b / "kube"), etcd=str(b / "etcd"), coredns=str(b / "coredns"))
    if args.enrolment is not None:
        cfg.enrolment_path = args.enrolment
    cfg.components = tuple(c for c in args.components.split(",") if c)
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    # Components inherit this PATH; tini starts us with a minimal environment.
    os.environ.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if cfg.init:
        os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        os.environ.setdefault("HOME", "/root")
    from pytest_smalltown.node.agent import Agent, install_signal_handlers

    agent = Agent(cfg)
    install_signal_handlers(agent)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
