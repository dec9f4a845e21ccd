"""The images' real binaries run as a pod would run them: extracted layers, chroot, real resolver.

No VM: each image's layers are unpacked into a temporary root and its
programs are run there with ``chroot`` (and ``unshare --net`` where a test
needs a private loopback), which exercises the same binaries, libraries and
/etc files a container on the node gets.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_smalltown import contract
from pytest_smalltown.images import conformance, oci

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None, reason="needs root and chroot"),
]

POD_RESOLV_CONF = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n"


def extract_image(archive: Path, name: str, dest: Path) -> Path:
    """Unpack the layers of image ``name`` from a docker-save ``archive`` into ``dest``, bottom first."""
    with tarfile.open(archive) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        (entry,) = [e for e in manifest if name in e["RepoTags"]]
        for layer_name in entry["Layers"]:
            data = outer.extractfile(layer_name).read()  # type: ignore[union-attr]
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                layer.extractall(dest, filter="fully_trusted")
    # What the container runtime adds: a world-readable root and the basic
    # device nodes (shells open /dev/null for background jobs).
    dest.chmod(0o755)
    (dest / "dev").mkdir(exist_ok=True)
    for node, minor in (("null", 3), ("zero", 5), ("urandom", 9)):
        if not (dest / "dev" / node).exists():
            os.mknod(dest / "dev" / node, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
            (dest / "dev" / node).chmod(0o666)
    return dest


def run(root: Path, *argv: str, user: str | None = None, net: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``root`` with the environment a container of the image gets."""
    chroot = ["chroot", *([f"--userspec={user}"] if user else []), str(root), *argv]
    if net:
        # A private network namespace: its own loopback, nothing reachable.
        chroot = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *chroot]
    env = {"PATH": oci.DEFAULT_PATH.removeprefix("PATH="), "HOME": "/root"}
    return subprocess.run(chroot, capture_output=True, text=True, env=env, timeout=timeout)


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"served to " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[int]:
    """A local HTTP server on 127.0.0.1 (an ephemeral port); yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _Dns:
    """A minimal DNS server for one A record on 127.0.0.1:53, if that port is free.

    It answers ``name`` with 127.0.0.1 and every other question with NXDOMAIN,
    the way cluster DNS answers a pod's search-list expansions.
    """

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            labels, i = [], 12
            while query[i]:
                labels.append(query[i + 1:i + 1 + query[i]])
                i += query[i] + 1
            question = query[12:i + 5]
            qname, qtype = b".".join(labels), struct.unpack(">H", query[i + 1:i + 3])[0]
            self.asked.append(qname.decode())
            header = struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0], 0x8180, 1, 1, 0, 0)
            if qname == self.name and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
                self.sock.sendto(header + question + answer, peer)
            else:
                self.sock.sendto(struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0], 0x8183, 1, 0, 0, 0)
                                 + question, peer)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


# --- the node's test image (smalltown.local/busybox) ---------------------------


@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = oci.build_images()[contract.TEST_IMAGE]
    root = extract_image(archive, contract.TEST_IMAGE, tmp_path_factory.mktemp("busybox-root"))
    return root


def _pod_etc(root: Path) -> None:
    """The /etc files the kubelet gives a pod: its hosts file and cluster DNS settings."""
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.0.1\tsmalltown-web\n")
    (root / "etc/resolv.conf").write_text(POD_RESOLV_CONF)


def test_busybox_wget_fetches_by_a_hosts_file_name(busybox_root: Path, web_server: int) -> None:
    """Fails on the image before the fix: its wget died with SIGSEGV on -T (as e2e tests call it)."""
    _pod_etc(busybox_root)
    for command in (f"wget -q -T 5 -O - http://smalltown-web:{web_server}/hosts",
                    f"wget -q -O - http://smalltown-web:{web_server}/plain",
                    f"/bin/wget -q -O - http://smalltown-web:{web_server}/applet"):
        result = run(busybox_root, "sh", "-c", command)
        assert result.returncode == 0, f"{command}: exit {result.returncode}: {result.stderr}"
        assert result.stdout.startswith("served to /"), result.stdout


def test_busybox_wget_resolves_through_dns(busybox_root: Path, web_server: int) -> None:
    """Static glibc asks DNS only when nsswitch.conf says so; a pod's service names live there."""
    _pod_etc(busybox_root)
    try:
        dns = _Dns("web.example.test")
    except OSError as error:
        pytest.skip(f"127.0.0.1:53 is not free here: {error}")
    try:
        result = run(busybox_root, "wget", "-q", "-T", "5", "-O", "-", f"http://web.example.test:{web_server}/dns")
    finally:
        dns.close()
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}; DNS was asked {dns.asked}"
    assert result.stdout == "served to /dns"
    assert "web.example.test" in dns.asked


def test_busybox_has_every_applet_and_tar_works(busybox_root: Path) -> None:
    listed = run(busybox_root, "/bin/busybox", "--list").stdout.split()
    assert len(listed) > 200
    assert all(os.path.lexists(busybox_root / "bin" / applet) for applet in listed)
    # What kubectl cp runs in the container, both directions.
    packed = run(busybox_root, "sh", "-c", "tar cf - /etc/hosts | tar tf -")
    assert packed.returncode == 0 and "etc/hosts" in packed.stdout, packed.stderr
    assert run(busybox_root, "sh", "-c", "mkdir -p /tmp/x && tar cf - /etc | tar -xmf - -C /tmp/x").returncode == 0


# --- the conformance archive ---------------------------------------------------


@pytest.fixture(scope="module")
def archive() -> Path:
    return conformance.build_conformance_archive()


def test_archive_holds_every_conformance_image(archive: Path) -> None:
    with tarfile.open(archive) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert sorted(tag for entry in manifest for tag in entry["RepoTags"]) == sorted(conformance.CONFORMANCE_IMAGES)


def test_agnhost_runs_with_the_tools_tests_exec(archive: Path, tmp_path: Path, web_server: int) -> None:
    root = extract_image(archive, conformance.AGNHOST, tmp_path)
    _pod_etc(root)
    url = f"http://smalltown-web:{web_server}/x"
    checks = {
        "/agnhost --help": "Usage",
        "/agnhost-2 --help": "Usage",
        "/coredns -version": "CoreDNS",
        "dig -v": "DiG",
        "getent hosts smalltown-web": "127.0.0.1",
        f"curl -g -q -s {url}": "served to /x",
        f"wget -q -T 5 -O - {url}": "served to /x",
        "nc -h": "OpenBSD netcat",
        "ip -V": "iproute2",
        "ss -V": "iproute2",
        "iperf -v": "iperf",
        "bash -c 'echo $BASH_VERSION'": "5.",
        "netstat --help": "netstat",
        "id user-defined-in-image": "50000(group-defined-in-image)",
        "ls /uploads /localhost.crt /localhost.key": "localhost.crt",
    }
    for command, expected in checks.items():
        result = run(root, "sh", "-c", f"{command} 2>&1")
        assert expected in result.stdout, f"{command}: exit {result.returncode}: {result.stdout[-2000:]}"


def test_nonewprivs_escalates_only_without_no_new_privs(archive: Path, tmp_path: Path) -> None:
    root = extract_image(archive, conformance.NONEWPRIVS, tmp_path)
    assert run(root, "nnp", user="1000:1000").stdout.strip() == "Effective uid: 0"
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) for the no_new_privs half")
    result = subprocess.run(["setpriv", "--no-new-privs", "chroot", "--userspec=1000:1000", str(root), "/usr/local/bin/nnp"],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "Effective uid: 1000"


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare and ip")
@pytest.mark.parametrize(("image", "command", "page"), [
    (conformance.HTTPD, "httpd-foreground", "It works!"),
    (conformance.NGINX, "nginx -g 'daemon off;'", "nginx"),
])
def test_web_stand_ins_serve_port_80(archive: Path, tmp_path: Path, image: str, command: str, page: str) -> None:
    root = extract_image(archive, image, tmp_path)
    # Fetch the page, then stop the server with SIGTERM as the kubelet would:
    # the run only ends (within the timeout) if the server really exits.
    script = (f"{command} & server=$!; for i in 1 2 3 4 5 6 7 8 9 10; do "
              "wget -q -O - http://127.0.0.1/index.html && break; sleep 0.3; done; kill $server; wait")
    result = run(root, "sh", "-c", script, net=True, timeout=30)
    assert page in result.stdout, result.stderr


@pytest.mark.parametrize(("image", "argv", "expected"), [
    (conformance.SAMPLE_APISERVER, ["/sample-apiserver", "--help"], "--etcd-servers"),
    (conformance.ETCD, ["/usr/local/bin/etcd", "--version"], "etcd Version: 3.6"),
    (conformance.JESSIE_DNSUTILS, ["sh", "-c", "dig -v 2>&1; getent hosts localhost"], "DiG"),
    (conformance.NONROOT, ["id", "-u"], "0"),  # chroot keeps root; the kubelet applies User
    (conformance.KITTEN, ["ls", "/kitten.jpg", "/data.json", "/agnhost"], "kitten.jpg"),
])
def test_programs_start(archive: Path, tmp_path: Path, image: str, argv: list[str], expected: str) -> None:
    root = extract_image(archive, image, tmp_path)
    result = run(root, *argv)
    assert expected in result.stdout + result.stderr, f"exit {result.returncode}: {result.stderr[-2000:]}"
