"""Unit tests of the node image builders' pure logic (no network, no VMs, no Go builds)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_smalltown import contract
from pytest_smalltown.base.paths import cache_root
from pytest_smalltown.images import applets, busybox, debian, gobuild, node, oci, rootfs, userns
from pytest_smalltown.images.kernel import MODULE_LIST, Kernel
from pytest_smalltown.images.tools import BuildError


# --- gobuild -------------------------------------------------------------------

def test_kube_flags_match_the_warm_go_build_cache() -> None:
    """Any drift from the flags the cache was warmed with turns a relink into a 30-minute build."""
    assert gobuild.PROGRAMS["kube"].ldflags == (
        "-s -w -X k8s.io/component-base/version.gitVersion=v1.34.4 "
        "-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 "
        "-X k8s.io/component-base/version.gitTreeState=clean "
        "-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z "
        "-X k8s.io/client-go/pkg/version.gitVersion=v1.34.4"
    )
    assert gobuild.PROGRAMS["etcd"].build_args(Path("/o")) == [
        "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", "/o", "."]
    assert gobuild.GO_ENV == {"GOWORK": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


def test_every_program_has_a_module() -> None:
    for program in gobuild.PROGRAMS.values():
        assert (program.module_dir / "go.mod").is_file()
        assert (program.module_dir / "go.sum").is_file()
        assert (program.module_dir / "main.go").is_file()


def test_program_key_follows_sources_flags_and_toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gobuild, "GO_DIR", tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "main.go").write_text("package main\n")
    program = gobuild.GoProgram("p", "-s -w")
    base = gobuild.program_key(program, "go version go1.26.8 linux/amd64")
    assert base == gobuild.program_key(program, "go version go1.26.8 linux/amd64")
    assert base != gobuild.program_key(program, "go version go1.26.9 linux/amd64")
    assert base != gobuild.program_key(gobuild.GoProgram("p", "-s"), "go version go1.26.8 linux/amd64")
    (tmp_path / "p" / "go.sum").write_text("x h1:abc\n")
    assert base != gobuild.program_key(program, "go version go1.26.8 linux/amd64")


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(gobuild.GoBuildError, match="Go toolchain"):
        gobuild.go_version()


def test_unknown_program_is_refused() -> None:
    with pytest.raises(gobuild.GoBuildError, match="unknown Go program"):
        gobuild.build_program("kubeadm")


# --- oci -----------------------------------------------------------------------

def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_docker_archive_layout_and_digests() -> None:
    layer = oci.busybox_layer(b"\x7fELF fake busybox")
    archive = oci.docker_archive(contract.TEST_IMAGE, layer, [], ["sh"], ["PATH=/bin"])
    members = _members(archive)
    (manifest,) = json.loads(members["manifest.json"])
    assert manifest["RepoTags"] == [contract.TEST_IMAGE]
    config_bytes = members[manifest["Config"]]
    # Content addressing: file names are the sha256 of what they hold.
    assert manifest["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    (layer_name,) = manifest["Layers"]
    layer_bytes = members[layer_name]
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Cmd"] == ["sh"]
    repo, tag = contract.TEST_IMAGE.rsplit(":", 1)
    assert json.loads(members["repositories"]) == {repo: {tag: layer_name.split("/")[0]}}


def test_busybox_layer_has_applets_and_sticky_tmp() -> None:
    tar_bytes = oci.busybox_layer(b"BB").to_tar()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for applet in ("sh", "echo", "cat", "sleep", "ls", "wget", "nslookup", "nc", "env", "hostname",
                   "true", "false", "date"):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    assert members["bin/busybox"].mode == 0o755
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())
    # Parents come before children, as extractors that don't create parents need.
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(tar_bytes)).getmembers()]
    assert names.index("bin") < names.index("bin/busybox")


def test_archives_are_reproducible_and_content_sensitive() -> None:
    one = oci.docker_archive(contract.PAUSE_IMAGE, oci.pause_layer(b"A"), ["/pause"], [], [])
    assert one == oci.docker_archive(contract.PAUSE_IMAGE, oci.pause_layer(b"A"), ["/pause"], [], [])
    assert one != oci.docker_archive(contract.PAUSE_IMAGE, oci.pause_layer(b"B"), ["/pause"], [], [])


def test_untagged_names_are_refused() -> None:
    """Without a tag the kubelet would default to :latest and pull policy Always."""
    with pytest.raises(ValueError, match="tag"):
        oci.docker_archive("smalltown.local/busybox", oci.pause_layer(b"A"), [], [], [])
    assert ":" in contract.PAUSE_IMAGE.rsplit("/", 1)[1] and not contract.PAUSE_IMAGE.endswith(":latest")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_pause_exits_on_sigterm(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    oci.compile_pause(binary, "test")
    assert subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.strip().endswith("test")
    proc = subprocess.Popen([binary], stderr=subprocess.DEVNULL)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)  # it sleeps...
    proc.terminate()
    assert proc.wait(timeout=5) == 128 + 15  # ...until told to stop


# --- node ----------------------------------------------------------------------

def test_rootfs_key_follows_every_input() -> None:
    versions = ["containerd=1.6.20", "runc=1.1.5"]
    wheels = ["grpcio==1.76.0"]
    base = rootfs.rootfs_key(versions, wheels, "deb bookworm")
    assert base == rootfs.rootfs_key(list(versions), list(wheels), "deb bookworm")
    assert base != rootfs.rootfs_key(["containerd=1.6.21", "runc=1.1.5"], wheels, "deb bookworm")
    assert base != rootfs.rootfs_key(versions, ["grpcio==1.77.0"], "deb bookworm")
    assert base != rootfs.rootfs_key(versions, wheels, "deb trixie")


def test_rootfs_has_what_the_node_needs() -> None:
    for package in ("containerd", "runc", "containernetworking-plugins", "iptables", "nftables",
                    "python3", "tini", "busybox-static", "conntrack", "iproute2", "kmod"):
        assert package in rootfs.ROOTFS_PACKAGES
    argv = rootfs.mmdebstrap_argv(Path("/target"), ["/etc/apt/sources.list.d/debian.sources"])
    assert argv[-3:] == ["bookworm", "/target", "/etc/apt/sources.list.d/debian.sources"]
    assert "--include=" + ",".join(rootfs.ROOTFS_PACKAGES) in argv
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in argv


def test_wheel_pins_are_the_host_versions_with_dependencies() -> None:
    import importlib.metadata

    pins = dict(pin.split("==") for pin in rootfs.wheel_requirements())
    for name in ("grpcio", "protobuf", "cryptography"):
        assert pins[name] == importlib.metadata.version(name)
    assert "typing-extensions" in pins  # grpcio's dependency
    assert "cffi" in pins  # cryptography's, on CPython


def test_python_sources_take_only_the_node_side(tmp_path: Path) -> None:
    (tmp_path / "api" / "__pycache__").mkdir(parents=True)
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "contract.py").write_text("X = 1\n")
    (tmp_path / "api" / "debug_pb2.py").write_text("")
    (tmp_path / "api" / "__pycache__" / "debug_pb2.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "plugin.py").write_text("host only\n")
    files = node.python_sources(tmp_path)
    assert sorted(files) == ["__init__.py", "api/debug_pb2.py", "contract.py"]
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "__main__.py").write_text("main()\n")
    with_node = node.python_sources(tmp_path)
    assert "node/__main__.py" in with_node
    assert node._sources_digest(files) != node._sources_digest(with_node)


def test_image_key_changes_with_agent_sources(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path / "vmlinuz", tmp_path, "6.1.0-test-amd64", "1")
    binary = tmp_path / "kube"
    binary.write_bytes(b"k")
    args = (tmp_path / "rootfs", kernel, {"kube": binary}, {}, {"node/a.py": b"1"}, "1.35")
    base = node.image_key(*args)
    assert base == node.image_key(*args)
    assert base != node.image_key(*args[:4], {"node/a.py": b"2"}, "1.35")
    binary.write_bytes(b"k2")
    assert base != node.image_key(*args)


def _fake_kernel(tmp_path: Path) -> Kernel:
    """A module tree with a dependency chain, as depmod would describe it."""
    mods = tmp_path / "lib/modules/6.1.0-test-amd64"
    (mods / "kernel").mkdir(parents=True)
    lines = []
    for name in node.BOOT_MODULES:
        (mods / "kernel" / f"{name}.ko").write_bytes(name.encode())
        deps = " kernel/nf_conntrack.ko" if name.startswith("xt_") else ""
        lines.append(f"kernel/{name}.ko:{deps}")
    (mods / "modules.dep").write_text("\n".join(lines) + "\n")
    (mods / "modules.builtin").write_text("")
    return Kernel(tmp_path / "vmlinuz", mods, "6.1.0-test-amd64", "1")


def test_initramfs_loads_modules_and_switches_to_the_agent(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"BB")
    image = node.build_initramfs(_fake_kernel(tmp_path), busybox)
    paths = image.paths()
    assert "/init" in paths and "/bin/busybox" in paths and "/newroot" in paths
    order = image._entries[MODULE_LIST][1].decode().split()
    names = [Path(p).stem for p in order]
    assert set(names) == set(node.BOOT_MODULES)
    assert names.index("nf_conntrack") < names.index("xt_conntrack")  # dependencies first
    assert names.index("crc32c_generic") < names.index("ext4")  # ext4's crc32c is only a softdep
    init = image._entries["/init"][1].decode()
    assert init.startswith("#!/bin/busybox sh\n")
    assert 'agent="/opt/smalltown/bin/smalltown-agent"' in init and f'module_list="{MODULE_LIST}"' in init
    assert 'exec switch_root /newroot /usr/bin/tini -s -- "$agent"' in init
    # The archive really is gzip'd newc with the init executable.
    out = tmp_path / "initramfs.gz"
    image.write(out)
    cpio = gzip.decompress(out.read_bytes())
    assert cpio.startswith(b"070701") and b"init\0" in cpio


def test_boot_modules_cover_kube_proxy_and_cni() -> None:
    for module in ("virtio_blk", "virtio_net", "ext4", "qemu_fw_cfg", "overlay", "bridge", "br_netfilter",
                   "veth", "nf_tables", "nft_compat", "nf_conntrack", "xt_MASQUERADE", "xt_comment",
                   "xt_mark", "xt_statistic", "iptable_nat", "ip6_tables"):
        assert module in node.BOOT_MODULES
    assert len(set(node.BOOT_MODULES)) == len(node.BOOT_MODULES)


def test_agent_script_runs_our_package() -> None:
    assert node.AGENT_SCRIPT.startswith("#!/bin/sh\n")
    assert "PYTHONPATH=/opt/smalltown/lib:/opt/smalltown/site" in node.AGENT_SCRIPT
    assert 'exec python3 -m pytest_smalltown.node "$@"' in node.AGENT_SCRIPT
    assert "panic=-1" in node.CMDLINE and "console=ttyS0" in node.CMDLINE


@pytest.mark.skipif(shutil.which("mke2fs") is None or shutil.which("debugfs") is None, reason="needs e2fsprogs")
def test_make_disk_packs_a_tree_without_mounting(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt/smalltown/bin").mkdir(parents=True)
    agent = root / "opt/smalltown/bin/smalltown-agent"
    agent.write_text(node.AGENT_SCRIPT)
    agent.chmod(0o755)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/kubectl").symlink_to("kube")
    disk = tmp_path / "disk.raw"
    node.make_disk(root, disk, free_bytes=64 << 20)
    assert disk.stat().st_size >= 64 << 20
    assert disk.stat().st_blocks * 512 < disk.stat().st_size  # sparse
    out = subprocess.run(["debugfs", "-R", "cat /opt/smalltown/bin/smalltown-agent", str(disk)],
                         capture_output=True, text=True)
    assert out.stdout == node.AGENT_SCRIPT
    stat = subprocess.run(["debugfs", "-R", "stat /usr/local/bin/kubectl", str(disk)],
                          capture_output=True, text=True).stdout
    assert 'Fast link dest: "kube"' in stat
    # A journal: a hard reset of a node must not leave its metadata half-written.
    header = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True).stdout
    assert "has_journal" in next(line for line in header.splitlines() if line.startswith("Filesystem features"))


def test_apt_show_parsing_takes_the_first_paragraph_per_package() -> None:
    show = (
        "Package: containerd\nVersion: 1.6.20~ds1-1+deb12u3\nDepends: runc (>= 1.0.0~rc2~)\n"
        " continuation: not a field\n\n"
        "Package: runc\nSource: runc (1.1.5)\nVersion: 1.1.5+ds1-1+deb12u1\n\n"
        "Package: containerd\nVersion: 1.6.20~ds1-1+deb12u2\n"
    )
    parsed = debian.parse_show(show)
    assert {name: fields["Version"] for name, fields in parsed.items()} == {
        "containerd": "1.6.20~ds1-1+deb12u3", "runc": "1.1.5+ds1-1+deb12u1",
    }  # fmt: skip
    assert parsed["containerd"]["Depends"] == "runc (>= 1.0.0~rc2~)"


def _cached_kernels() -> list[Kernel]:
    """Debian kernels already unpacked in the cache (this test must not download one)."""
    from pytest_smalltown.base.paths import cache_root

    kernels = []
    for release_file in sorted(cache_root().glob("kernel-*/release")):
        release = release_file.read_text()
        root = release_file.parent / "root"
        kernels.append(Kernel(root / "boot" / f"vmlinuz-{release}", root / "lib/modules" / release, release,
                              (release_file.parent / "version").read_text()))
    return kernels


@pytest.mark.parametrize("kernel", _cached_kernels() or [None], ids=lambda k: k.release if k else "none")
def test_boot_modules_exist_in_debians_kernel(kernel: Kernel | None) -> None:
    """A misspelt module would only show up as a missing device or a failing kube-proxy at boot."""
    if kernel is None:
        pytest.skip("no Debian kernel in the image cache yet (smalltown image build fetches one)")
    from pytest_smalltown.images.kernel import module_load_order

    order = module_load_order(kernel, list(node.BOOT_MODULES))  # KeyError on an unknown name
    loaded = {p.name.removesuffix(".ko").replace("-", "_") for p in order}
    builtin = {Path(line).name.removesuffix(".ko").replace("-", "_")
               for line in (kernel.modules_dir / "modules.builtin").read_text().split()}
    for module in node.BOOT_MODULES:
        assert module in loaded or module in builtin, module
    for rel in node.ROOTFS_MODULE_DIRS:
        assert (kernel.modules_dir / rel).exists(), rel


def test_host_files_do_not_leak_into_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("builder-host\n")
    (tmp_path / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    (tmp_path / "etc/hosts").write_text("10.0.0.5 builder-host\n")
    rootfs._neutralise_host_files(tmp_path)
    assert (tmp_path / "etc/hostname").read_text() == "smalltown\n"
    resolv = tmp_path / "etc/resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text() == ""  # the agent writes it from DHCP
    assert "builder-host" not in (tmp_path / "etc/hosts").read_text()


def test_debian_download_keeps_its_directory_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A world-writable download dir would let any local user swap the kernel every VM boots."""
    import stat
    import subprocess

    from pytest_smalltown.images import debian

    calls: list[list[str]] = []

    def fake_run(argv: list[str], cwd: Path, **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        (Path(cwd) / "x_1_amd64.deb").write_bytes(b"")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(debian, "run_supervised", fake_run)
    monkeypatch.setattr(debian.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    dest = tmp_path / "debs"
    assert debian.download(["x"], dest) == [dest / "x_1_amd64.deb"]
    assert not dest.stat().st_mode & (stat.S_IWOTH | stat.S_IWGRP)
    assert calls[0][:3] == ["apt-get", "download", "-q"] and calls[0][-1] == "x"


def test_a_user_who_cannot_build_the_rootfs_is_told_before_any_go_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold cache, not root, no subordinate ids: the error comes first, not after tens of minutes of Go builds."""
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(userns, "OWNERSHIP", "userns")
    monkeypatch.setattr(userns, "ETC", tmp_path)  # no subuid/subgid files

    def no_go_build(*args: object, **kwargs: object) -> Path:
        raise AssertionError("a Go build started before the rootfs prerequisites were checked")

    monkeypatch.setattr(gobuild, "build_program", no_go_build)
    with pytest.raises(userns.UserNamespaceError, match="subordinate ids .*scripts/setup-host"):
        node.build_node_image(progress=lambda line: None)


def test_a_damaged_package_is_a_package_error_with_the_tools_own_words(tmp_path: Path) -> None:
    deb = tmp_path / "broken_1.0_amd64.deb"
    deb.write_bytes(b"!<arch>\nthis is not a Debian package")
    with pytest.raises(debian.PackageError, match=r"unpacking broken_1\.0_amd64\.deb failed \(exit \d+\)") as caught:
        debian.extract(deb, tmp_path / "out")
    assert "dpkg-deb" in str(caught.value) and "run the build again" in str(caught.value)


# --- the test image's busybox ---------------------------------------------------

def test_busybox_layer_has_no_wrapper_in_front_of_its_applets() -> None:
    """ash runs its own applets before it searches PATH: a wrapper in /usr/local/bin would never run."""
    with tarfile.open(fileobj=io.BytesIO(oci.busybox_layer(b"BB", ("sh", "wget")).to_tar())) as tar:
        assert [m.name for m in tar.getmembers() if m.name.startswith("usr/local/")] == ["usr/local/bin"]


def test_images_key_follows_the_busybox_build() -> None:
    assert oci.images_key("gcc 12", "bb1") == oci.images_key("gcc 12", "bb1")
    assert oci.images_key("gcc 12", "bb1") != oci.images_key("gcc 12", "bb2")
    assert oci.images_key("gcc 12", "bb1") != oci.images_key("gcc 14", "bb1")


def _framed(name: str, rc: int, output: str) -> str:
    return f"@@row {name} rc={rc}\n{output}\n@@end\n"


def test_the_table_judge_reports_every_failing_row_and_why() -> None:
    rows = [applets.Invocation(name, "cmd", expect) for name, expect in
            (("ok", "hello"), ("crash", ""), ("refused", ""), ("usage", ""), ("wrong", r"\d+"), ("exit", "x"),
             ("missing", ""), ("not found", ""))]
    output = "".join([
        _framed("ok", 0, "hello"), _framed("crash", 139, "Segmentation fault"),
        _framed("refused", 1, "nc: invalid option -- 'z'"), _framed("usage", 0, "Usage: tar c|x|t"),
        _framed("wrong", 0, "twelve"), _framed("exit", 2, "x"), _framed("not found", 127, "sh: frobnicate: not found"),
    ])
    failures = applets.judge(rows, output)
    assert [line.split(":", 1)[0] for line in failures] == ["crash", "refused", "usage", "wrong", "exit", "missing",
                                                           "not found"]
    assert "signal 11" in failures[0] and "no result" in failures[5]
    assert applets.parse_results(_framed("multi line", 0, "a\nb\n")) == {"multi line": (0, "a\nb")}


def test_table_rows_are_named_once_and_quoted_safely() -> None:
    names = [row.name for row in applets.APPLET_TABLE]
    assert len(names) == len(set(names))
    assert all(row.needs <= {"loopback", "web", "cluster"} for row in applets.APPLET_TABLE)
    script = applets.table_script([applets.Invocation("it's", "echo 'quoted' \"$HOME\"", "")])
    assert "row 'it'\\''s' 'echo '\\''quoted'\\'' \"$HOME\"'\n" in script


@pytest.fixture(scope="module")
def built_busybox() -> Path:
    """The busybox of the current recipe, if it is built: a unit test does not build it (minutes, network)."""
    try:
        version = busybox.source_version(progress=lambda _: None)
    except BuildError as error:
        pytest.skip(f"busybox's source version is unknown here (no memo, no mirror): {error}")
    path = cache_root() / f"{busybox.CACHE_NAME}-{busybox.busybox_key(version, oci.gcc_version())}" / "busybox"
    if not path.is_file():
        pytest.skip(f"busybox is not built for this recipe ({path}); `smalltown image build` builds it")
    return path


def test_the_applet_table_passes_on_the_built_busybox(built_busybox: Path, tmp_path: Path) -> None:
    """Every row a host can run (all but cluster DNS), through sh -c, against the binary's own httpd."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([built_busybox, "sh", "-c", applets.web_server_script(str(tmp_path / "www"),
                                                                                   f"127.0.0.1:{port}")])
    try:
        rows = [row for row in applets.APPLET_TABLE if "cluster" not in row.needs]
        failures = applets.run_on_host(built_busybox, tmp_path / "table", rows,
                                       {"WEB_HOST": "127.0.0.1", "WEB_IP": "127.0.0.1", "WEB_PORT": str(port)})
    finally:
        server.kill()
        server.wait()
    assert not failures, "\n".join(failures)
    assert busybox.is_static(built_busybox)
