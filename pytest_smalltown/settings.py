"""User-facing settings, shared by the pytest plugin and the ``smalltown`` CLI.

Each setting can be given as a ``--smalltown-*`` command-line option, a
``SMALLTOWN_*`` environment variable or an ini key (``smalltown_*``), and
that is also the order of precedence: command line > environment > ini >
default. Values are validated here, once, with messages that say what to do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_smalltown import contract
from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.launch.accel import ACCEL_MODES
from pytest_smalltown.shard import Shard, parse_shard
from pytest_smalltown.snapshots import MODES as SNAPSHOT_MODES


class SettingsError(SmalltownError, ValueError):
    """A setting has a value that cannot work; the message names the setting and its sources."""


@dataclass(frozen=True)
class Option:
    """One setting: its names in every source, default and parser."""

    name: str  # e.g. "accel" -> --smalltown-accel, SMALLTOWN_ACCEL, smalltown_accel
    default: str
    help: str
    parse: Callable[[str], Any] = str
    metavar: str = "VALUE"
    #: Shapes the clusters a launch makes (the CLI's cluster commands take it too, as :attr:`cli_flag`);
    #: the others are about a pytest session.
    cluster: bool = False

    @property
    def flag(self) -> str:
        return "--smalltown-" + self.name.replace("_", "-")

    @property
    def cli_flag(self) -> str:
        """The ``smalltown`` command's flag, e.g. ``--node-memory``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "SMALLTOWN_" + self.name.upper()

    @property
    def ini(self) -> str:
        return "smalltown_" + self.name


def _positive_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a finite number greater than zero")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


#: Seconds a cluster may take to become ready (``--smalltown-boot-timeout``'s default), and the
#: default deadline of a node's reboot (a kept cluster's too: its own timeout is not recorded).
DEFAULT_BOOT_TIMEOUT = 600.0

#: Below this a reference node cannot hold etcd, the apiserver and the
#: kubelet at once; it would boot until the deadline instead of failing.
MIN_NODE_MEMORY_MIB = 1024


def _node_memory(value: str) -> int:
    number = int(value)
    if number < MIN_NODE_MEMORY_MIB:
        raise ValueError(f"must be at least {MIN_NODE_MEMORY_MIB} MiB (a Kubernetes control plane does not fit in less)")
    return number


def _max_nodes(value: str) -> int | None:
    """A node count, or None for ``auto`` (the plugin asks the host, see ``accel.node_capacity``)."""
    if value in ("auto", ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be 'auto' or a number of nodes") from None
    return contract.check_node_count(number, "the node count")


def _accel(value: str) -> str:
    if value not in ACCEL_MODES:
        raise ValueError(f"must be one of {', '.join(ACCEL_MODES)}")
    return value


def _snapshot_mode(value: str) -> str:
    if value not in SNAPSHOT_MODES:
        raise ValueError(f"must be one of {', '.join(SNAPSHOT_MODES)}")
    return value


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _optional_path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None


OPTIONS: tuple[Option, ...] = (
    Option("image", "reference", "node image: 'reference' (built from upstream parts on demand) or the path "
           "of a Smalltown disk image booted by UEFI", metavar="IMAGE", cluster=True),
    Option("accel", "auto", "accelerator: auto (probe KVM, fall back to TCG), kvm or tcg", _accel, "MODE", cluster=True),
    Option("ovmf_code", "/usr/share/OVMF/OVMF_CODE_4M.fd", "OVMF firmware code (UEFI images only)", Path, "PATH", True),
    Option("ovmf_vars", "/usr/share/OVMF/OVMF_VARS_4M.fd", "OVMF vars template (UEFI images only)", Path, "PATH", True),
    Option("tpm", "false", "attach a swtpm TPM 2.0 to each node", _bool, "BOOL", True),
    Option("node_memory", "2048", "guest memory per node VM in MiB", _node_memory, "MIB", True),
    Option("node_cpus", "2", "virtual CPUs per node VM", _positive_int, "N", True),
    Option("snapshots", "auto", "auto: restore a cluster saved by an earlier session with the same inputs, "
           "else boot it and save it once Ready; refresh: always boot and save anew; off: always boot, "
           "never save; require: restore, or fail the cluster's tests with the reason it was not restored",
           _snapshot_mode, "MODE", True),
    Option("boot_timeout", f"{DEFAULT_BOOT_TIMEOUT:g}", "seconds a cluster may take to become ready", _positive_float,
           "SECONDS", True),
    Option("artifacts", "", "directory for failure dumps (console logs, component logs, events)",
           _optional_path, "DIR"),
    Option("keep_namespace", "false", "keep a failed test's namespace for inspection", _bool, "BOOL"),
    Option("qemu", "qemu-system-x86_64", "QEMU binary", str, "PATH", True),
    Option("attach", "false", "run against the cluster 'smalltown up' keeps running (same spec) instead of "
           "booting one; nothing is torn down", _bool, "BOOL"),
    Option("keep_on_failure", "false", "when a test failed, keep that cluster running after the tests and "
           "wait (reach it with 'smalltown status/dbg', stop it with 'smalltown down' or Ctrl-C)", _bool, "BOOL"),
    Option("snapshot_on_failure", "false", "when a test fails, save its whole cluster (every VM's RAM and disk) "
           "into the test's artifact directory before teardown, then run on; restore it with 'smalltown up --from "
           "DIR'", _bool, "BOOL"),
    Option("shard", "", "run only shard I of N (e.g. 2/4): whole cluster specs per shard, balanced by the "
           "durations file", parse_shard, "I/N"),
    Option("durations", "", "JSON file of each spec's recorded seconds: read to balance shards, updated at "
           "the end of the session", _optional_path, "FILE"),
    Option("max_nodes", "auto", "run only the tests whose cluster has at most N nodes; the others are "
           "deselected (e.g. 1 for a quick pass, or for a second node image). auto: as many as this host "
           "carries (under TCG one node per host core, under KVM no limit)", _max_nodes, "N"),
)  # fmt: skip


def _default(name: str) -> Any:
    """The parsed default of option ``name``: :data:`OPTIONS` is the one place defaults are written."""
    (option,) = (option for option in OPTIONS if option.name == name)
    return option.parse(option.default)


@dataclass(frozen=True)
class Settings:
    """Resolved, validated settings (``Settings()`` is every default, as :func:`resolve` gives with no input)."""

    image: str = _default("image")
    accel: str = _default("accel")
    ovmf_code: Path = _default("ovmf_code")
    ovmf_vars: Path = _default("ovmf_vars")
    tpm: bool = _default("tpm")
    node_memory: int = _default("node_memory")
    node_cpus: int = _default("node_cpus")
    snapshots: str = _default("snapshots")
    boot_timeout: float = _default("boot_timeout")
    artifacts: Path | None = _default("artifacts")
    keep_namespace: bool = _default("keep_namespace")
    qemu: str = _default("qemu")
    attach: bool = _default("attach")
    keep_on_failure: bool = _default("keep_on_failure")
    snapshot_on_failure: bool = _default("snapshot_on_failure")
    shard: Shard | None = _default("shard")
    durations: Path | None = _default("durations")
    max_nodes: int | None = _default("max_nodes")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


def resolve(
    cli: Mapping[str, str | None],
    ini: Mapping[str, str | None],
    environ: Mapping[str, str] = os.environ,
    flag: Callable[[Option], str] = lambda option: option.flag,
) -> Settings:
    """Merge the sources by precedence and validate every value.

    ``cli`` and ``ini`` map option names to raw strings (None when unset);
    ``flag`` names an option's command-line flag in error messages (pytest's
    by default, ``Option.cli_flag`` for the ``smalltown`` command).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw: str | None
        if cli.get(option.name) is not None:
            raw, source = cli[option.name], flag(option)
        elif option.env in environ:
            raw, source = environ[option.env], f"${option.env}"
        elif ini.get(option.name) not in (None, ""):
            raw, source = ini[option.name], f"ini {option.ini}"
        else:
            raw, source = option.default, "default"
        assert raw is not None
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            raise SettingsError(
                f"{flag(option)} (from {source}) = {raw!r} is invalid: {error}. "
                f"Set it with {flag(option)}, ${option.env} or the ini key {option.ini}."
            ) from None
        sources[option.name] = source
    return Settings(**values, sources=sources)
