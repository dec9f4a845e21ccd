"""Unit tests of the conformance images' layouts and the multi-image archive (no builds)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from pytest_smalltown.base.paths import CACHE_ENV
from pytest_smalltown.images import busybox, conformance, gobuild, oci
from pytest_smalltown.images.oci import Image, ImageLayer, Layer

MANIFEST_GO = Path(f"/root/go/pkg/mod/k8s.io/kubernetes@{gobuild.KUBERNETES_VERSION}/test/utils/image/manifest.go")

FAKE_FILES = {name: f"<{name}>".encode() for name in conformance.UPSTREAM_FILES}
FAKE_BINARIES = {"nnp": b"NNP", "sample-apiserver": b"SAMPLE", "etcd": b"ETCD"}


def _tiny_layer(**files: bytes) -> Layer:
    layer = ImageLayer()
    for name, data in files.items():
        layer.files[name] = (0o644, data)
    return Layer.of(layer)


def _images() -> list[Image]:
    busybox = Layer.of(oci.busybox_layer(b"BB", ("sh", "tar", "wget")))
    debian_base = _tiny_layer(etc_passwd=b"debian")
    agnhost = Layer.of(conformance.agnhost_layer(b"AGN", b"COREDNS", FAKE_FILES, "root:x:0:0::/root:/bin/sh\n",
                                                 "root:x:0:\n"))
    pause = Layer.of(oci.pause_layer(b"PAUSE"))
    return conformance.conformance_images(busybox, debian_base, agnhost, pause, FAKE_FILES, FAKE_BINARIES)


def _archive(images: list[Image], compress: bool = True) -> dict[str, bytes]:
    buf = io.BytesIO()
    oci.write_docker_archive(images, buf, compress=compress)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _layer_tar(members: dict[str, bytes], name: str) -> bytes:
    data = members[name]
    return gzip.decompress(data) if name.endswith(".gz") else data


def _tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _config(members: dict[str, bytes], name: str) -> dict[str, object]:
    manifest = json.loads(members["manifest.json"])
    (entry,) = [e for e in manifest if e["RepoTags"] == [name]]
    config: dict[str, object] = json.loads(members[entry["Config"]])
    return config


# --- names ---------------------------------------------------------------------


def test_every_image_has_its_exact_upstream_name() -> None:
    images = _images()
    assert [image.name for image in images] == list(conformance.CONFORMANCE_IMAGES)
    assert len(set(conformance.CONFORMANCE_IMAGES)) == len(conformance.CONFORMANCE_IMAGES)
    assert all(re.fullmatch(r"registry\.k8s\.io/[a-z0-9/.-]+:[A-Za-z0-9.-]+", name)
               for name in conformance.CONFORMANCE_IMAGES)


@pytest.mark.skipif(not MANIFEST_GO.exists(), reason="needs the Kubernetes module source in Go's module cache")
def test_names_and_tags_agree_with_the_release_manifest() -> None:
    """The e2e binary asks for exactly the names manifest.go of our release builds."""
    text = MANIFEST_GO.read_text()
    registries = {"PromoterE2eRegistry": "registry.k8s.io/e2e-test-images", "GcEtcdRegistry": "registry.k8s.io",
                  "GcRegistry": "registry.k8s.io"}
    upstream = {}
    for ident, registry, image, tag in re.findall(
            r'configs\[(\w+)\] = Config\{list\.(\w+), "([^"]+)", "([^"]+)"\}', text):
        if registry in registries:
            upstream[ident] = f"{registries[registry]}/{image}:{tag}"
    for ident in ("Agnhost", "BusyBox", "Httpd", "HttpdNew", "Nginx", "NginxNew", "JessieDnsutils", "Kitten",
                  "Nautilus", "Nonewprivs", "NonRoot", "APIServer", "Etcd", "Pause"):
        assert upstream[ident] in conformance.CONFORMANCE_IMAGES, ident


# --- archive structure ---------------------------------------------------------


def test_archive_lists_every_image_with_consistent_digests() -> None:
    members = _archive(_images())
    manifest = json.loads(members["manifest.json"])
    assert sorted(tag for entry in manifest for tag in entry["RepoTags"]) == sorted(conformance.CONFORMANCE_IMAGES)
    for entry in manifest:
        config_bytes = members[entry["Config"]]
        assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
        config = json.loads(config_bytes)
        assert (config["os"], config["architecture"]) == ("linux", "amd64")
        diff_ids = [f"sha256:{hashlib.sha256(_layer_tar(members, name)).hexdigest()}" for name in entry["Layers"]]
        assert config["rootfs"]["diff_ids"] == diff_ids
        assert all(name.endswith("/layer.tar.gz") for name in entry["Layers"])
        # gzip, so containerd keeps the blob compressed on the node's disk.
        assert all(members[name][:2] == b"\x1f\x8b" for name in entry["Layers"])
    repositories = json.loads(members["repositories"])
    assert set(repositories["registry.k8s.io/e2e-test-images/httpd"]) == {"2.4.38-4", "2.4.39-4"}


def test_shared_layers_are_stored_once() -> None:
    images = _images()
    members = _archive(images)
    manifest = json.loads(members["manifest.json"])
    layer_files = [name for name in members if name.endswith("layer.tar.gz")]
    distinct = {layer.diff_id for image in images for layer in image.layers}
    assert len(layer_files) == len(distinct)
    uses: dict[str, int] = {}
    for entry in manifest:
        for name in entry["Layers"]:
            uses[name] = uses.get(name, 0) + 1
    by_tag = {entry["RepoTags"][0]: entry["Layers"] for entry in manifest}
    busybox_layer = by_tag[conformance.BUSYBOX][0]
    debian_layer = by_tag[conformance.JESSIE_DNSUTILS][0]
    for name in (conformance.HTTPD, conformance.NGINX, conformance.NONEWPRIVS, conformance.SAMPLE_APISERVER,
                 conformance.ETCD):
        assert by_tag[name][0] == busybox_layer
    for name in (conformance.AGNHOST, conformance.KITTEN, conformance.NAUTILUS, conformance.NONROOT):
        assert by_tag[name][0] == debian_layer
    assert uses[busybox_layer] == 8 and uses[debian_layer] == 5


def test_archives_are_reproducible() -> None:
    one, two = io.BytesIO(), io.BytesIO()
    oci.write_docker_archive(_images(), one, compress=True)
    oci.write_docker_archive(_images(), two, compress=True)
    assert one.getvalue() == two.getvalue()


def test_duplicate_and_untagged_names_are_refused() -> None:
    layer = _tiny_layer(a=b"a")
    with pytest.raises(ValueError, match="duplicate"):
        oci.write_docker_archive([Image("x.io/a:1", (layer,)), Image("x.io/a:1", (layer,))], io.BytesIO())
    with pytest.raises(ValueError, match="tag"):
        Image("x.io/a", (layer,))


# --- configs and layouts -------------------------------------------------------


def test_agnhost_entrypoint_cmd_ports_and_files() -> None:
    images = {image.name: image for image in _images()}
    members = _archive(list(images.values()))
    config = _config(members, conformance.AGNHOST)["config"]
    assert isinstance(config, dict)
    assert config["Entrypoint"] == ["/agnhost"] and config["Cmd"] == ["pause"]
    assert set(config["ExposedPorts"]) == {"80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"}
    files = _tar_members(images[conformance.AGNHOST].layers[-1].tar)
    assert files["agnhost"].mode == 0o755 and files["coredns"].isfile()
    assert files["agnhost-2"].issym() and files["agnhost-2"].linkname == "agnhost"
    assert files["uploads"].isdir()
    assert files["localhost.crt"].isfile() and files["localhost.key"].isfile()
    assert files["usr/local/bin/iperf"].linkname == "/usr/bin/iperf"
    with tarfile.open(fileobj=io.BytesIO(images[conformance.AGNHOST].layers[-1].tar)) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
        group = tar.extractfile("etc/group").read().decode()  # type: ignore[union-attr]
    assert passwd.startswith("root:x:0:0:")  # the base's users are kept
    assert "user-defined-in-image:x:1000:" in passwd
    assert "group-defined-in-image:x:50000:user-defined-in-image" in group


def test_picture_servers_are_agnhost_test_webserver() -> None:
    images = {image.name: image for image in _images()}
    members = _archive(list(images.values()))
    for name, picture in ((conformance.KITTEN, "kitten.jpg"), (conformance.NAUTILUS, "nautilus.jpg")):
        config = _config(members, name)["config"]
        assert isinstance(config, dict)
        assert config["Entrypoint"] == ["/agnhost"] and config["Cmd"] == ["test-webserver"]
        assert images[name].layers[:2] == images[conformance.AGNHOST].layers
        files = _tar_members(images[name].layers[-1].tar)
        assert set(files) == {picture, "data.json"}


def test_small_images_configs() -> None:
    members = _archive(_images())

    def cfg(name: str) -> dict[str, object]:
        config = _config(members, name)["config"]
        assert isinstance(config, dict)
        return config

    assert cfg(conformance.HTTPD)["Cmd"] == ["httpd-foreground"]
    assert cfg(conformance.NGINX)["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert cfg(conformance.BUSYBOX)["Cmd"] == ["sh"]
    assert cfg(conformance.NONROOT)["User"] == "1234"
    assert cfg(conformance.NONEWPRIVS)["Cmd"] == ["nnp"]
    assert cfg(conformance.SAMPLE_APISERVER)["Entrypoint"] == ["/sample-apiserver"]
    assert cfg(conformance.PAUSE)["Entrypoint"] == ["/pause"]


def test_nnp_is_set_user_id_root_and_etcd_is_where_the_aggregator_test_runs_it() -> None:
    images = {image.name: image for image in _images()}
    nnp = _tar_members(images[conformance.NONEWPRIVS].layers[-1].tar)["usr/local/bin/nnp"]
    assert nnp.mode == 0o4755 and nnp.uid == 0
    assert "usr/local/bin/etcd" in _tar_members(images[conformance.ETCD].layers[-1].tar)


def test_web_stand_ins_serve_the_paths_tests_use() -> None:
    images = {image.name: image for image in _images()}
    httpd = _tar_members(images[conformance.HTTPD].layers[-1].tar)
    assert "usr/local/apache2/htdocs/index.html" in httpd
    assert httpd["usr/local/bin/httpd-foreground"].mode == 0o755
    with tarfile.open(fileobj=io.BytesIO(images[conformance.HTTPD].layers[-1].tar)) as tar:
        assert b"It works!" in tar.extractfile("usr/local/apache2/htdocs/index.html").read()  # type: ignore[union-attr]
    assert "usr/share/nginx/html/index.html" in _tar_members(images[conformance.NGINX].layers[-1].tar)


# --- busybox -------------------------------------------------------------------


def test_busybox_layer_links_every_applet_it_is_given() -> None:
    applets = ("sh", "tar", "wget", "[", "nslookup", "zcat")
    members = _tar_members(oci.busybox_layer(b"BB", applets).to_tar())
    for applet in applets:
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    assert members["usr/bin"].linkname == "../bin" and members["sbin"].linkname == "bin"
    # A binary that lists itself as an applet must not become a link to itself.
    itself = _tar_members(oci.busybox_layer(b"BB", ("sh", "busybox")).to_tar())["bin/busybox"]
    assert itself.isfile() and itself.size == 2
    # No wrapper anywhere: ash runs its own applets before any PATH lookup, so one would never run.
    assert not [name for name in members if name.startswith("usr/local/bin/") and name != "usr/local/bin"]
    with tarfile.open(fileobj=io.BytesIO(oci.busybox_layer(b"BB", applets).to_tar())) as tar:
        nsswitch = tar.extractfile("etc/nsswitch.conf").read().decode()  # type: ignore[union-attr]
    assert re.search(r"^hosts:\s+files dns$", nsswitch, re.M)


def _fake_busybox(tmp_path: Path, applets: list[str]) -> Path:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n" f'[ "$1" = --list ] && printf "%s\\n" {" ".join(applets)}\n')
    script.chmod(0o755)
    return script


def test_applets_come_from_the_binary(tmp_path: Path) -> None:
    with pytest.raises(oci.ImageBuildError, match="lacks applets"):
        oci.busybox_applets(_fake_busybox(tmp_path, ["sh", "tar", "wget"]))
    everything = [*oci.BUSYBOX_APPLETS, "zcat"]
    assert oci.busybox_applets(_fake_busybox(tmp_path, everything)) == everything


# --- Debian layer helpers ------------------------------------------------------


def test_tar_directory_is_reproducible_and_keeps_modes_links_and_owners(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev/null-ish").write_text("x")
    (root / "usr/bin/ping").write_bytes(b"P")
    (root / "usr/bin/ping").chmod(0o4755)
    os.link(root / "usr/bin/ping", root / "usr/bin/ping-again")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/sh").symlink_to("dash")
    first = oci.tar_directory(root)
    assert first == oci.tar_directory(root)
    members = _tar_members(first)
    assert members["usr/bin/ping"].mode == 0o4755
    assert members["usr/bin/ping-again"].islnk() and members["usr/bin/ping-again"].linkname == "usr/bin/ping"
    assert members["bin"].issym() and members["usr/bin/sh"].linkname == "dash"
    assert members["dev"].isdir() and "dev/null-ish" not in members
    assert all(m.mtime == 0 for m in members.values())
    names = list(members)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/ping")


def test_missing_applets_are_linked_but_debian_tools_win(tmp_path: Path) -> None:
    root = tmp_path
    for directory in conformance.PATH_DIRS:
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/wget").write_text("GNU")
    linked = conformance._link_missing_applets(root, ["wget", "netstat", "vi", "busybox"])
    assert linked == ["netstat", "vi"]
    assert os.readlink(root / "usr/local/bin/netstat") == "/usr/bin/busybox"
    assert not (root / "usr/local/bin/wget").exists()


def test_mmdebstrap_builds_merged_usr_without_perl() -> None:
    argv = conformance.mmdebstrap_argv(Path("/t"), ["/etc/apt/sources.list"])
    assert f"--hook-dir={conformance.MERGED_USR_HOOK}" in argv
    assert argv[-3:] == ["bookworm", "/t", "/etc/apt/sources.list"]
    assert "usrmerge" not in ",".join(argv)


# --- caching -------------------------------------------------------------------


def test_key_follows_inputs() -> None:
    base = conformance.archive_key("go1", "gcc1", ["curl=1"], "deb x", "bb1")
    assert base == conformance.archive_key("go1", "gcc1", ["curl=1"], "deb x", "bb1")
    assert base != conformance.archive_key("go2", "gcc1", ["curl=1"], "deb x", "bb1")
    assert base != conformance.archive_key("go1", "gcc1", ["curl=2"], "deb x", "bb1")
    assert base != conformance.archive_key("go1", "gcc1", ["curl=1"], "deb y", "bb1")
    assert base != conformance.archive_key("go1", "gcc1", ["curl=1"], "deb x", "bb2")


@pytest.mark.skipif(shutil.which("go") is None or shutil.which("apt-cache") is None, reason="needs go and apt")
def test_warm_archive_is_found_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    # busybox's source version is asked of Debian once a day; no network here.
    monkeypatch.setattr(busybox, "source_version", lambda progress=None: "1:1.37.0-6")
    go_version = gobuild.go_version()
    gcc = oci.gcc_version()
    from pytest_smalltown.images import rootfs
    sources = rootfs.host_debian_sources()
    key = conformance.archive_key(go_version, gcc, conformance.resolved_versions(),
                                  "".join(Path(s).read_text() for s in sources),
                                  busybox.busybox_key("1:1.37.0-6", gcc))
    done = tmp_path / f"conformance-images-{key}"
    done.mkdir()
    (done / conformance.ARCHIVE_NAME).write_bytes(b"archive")
    (done / ".complete").write_text("0\n")
    started = time.monotonic()
    path = conformance.build_conformance_archive(progress=lambda message: pytest.fail(f"built: {message}"))
    assert time.monotonic() - started < 1.0
    assert path == done / conformance.ARCHIVE_NAME
