"""The tiny test VM: Debian's kernel plus a busybox initramfs.

It boots in seconds under TCG and is what the launcher's and the switch's own
integration tests run, so that they exercise real QEMU, real virtio NICs and a
real guest network stack without needing the (large) node image. It is also
the payload of the accelerator probe.

Behaviour is chosen on the kernel command line, so one cached image serves
every test:

``tiny.name=NAME``        name reported in console lines and TCP answers
``tiny.ip=dhcp|A.B.C.D/NN`` configure eth0 (prints ``tinyvm: ip <addr>``)
``tiny.serve=P1,P2``      answer ``tinyvm <NAME> port <P>`` to each TCP connection
``tiny.ping=IP``          ping once the network is up (``tinyvm: ping <IP> ok|fail``)
``tiny.connect=IP:PORT``  open a TCP connection and send a line (``tinyvm: connect <IP:PORT> ok|fail``)
(always)                  ``tinyvm: tpm 2`` when a TPM 2.0 device is present
``tiny.fwcfg=NAME``       print the md5 of fw_cfg entry NAME (``tinyvm: fwcfg <md5>``)
``tiny.poweroff=1``       power off right after ``tinyvm: ready`` (the accel probe)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.images import debian
from pytest_smalltown.images.cache import Progress, cached_build, hash_inputs, stderr_progress
from pytest_smalltown.images.initramfs import Initramfs
from pytest_smalltown.images.kernel import MODULE_LIST, add_modules, get_kernel

TINY_MODULES = ["virtio_pci", "virtio_mmio", "virtio_net", "virtio_rng", "qemu_fw_cfg"]

#: Console line printed once the tiny VM has done everything it was asked to.
READY_LINE = "tinyvm: ready"
#: First line the init script prints (used to time "launch to first serial line").
HELLO_LINE = "tinyvm: init"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "tinyvm: init"
for module in $(cat MODULE_LIST); do insmod "$module" 2>/dev/null; done

opt() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^tiny\.$1=//p" | tail -n 1; }
NAME=$(opt name); NAME=${NAME:-tiny}
hostname "$NAME"
ip link set lo up

IP=$(opt ip)
if [ -n "$IP" ]; then
    ip link set eth0 up
    if [ "$IP" = dhcp ]; then
        cat > /bin/dhcp-event <<'EOS'
#!/bin/sh
if [ "$1" = bound ] || [ "$1" = renew ]; then
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}"
fi
EOS
        chmod +x /bin/dhcp-event
        udhcpc -i eth0 -s /bin/dhcp-event -q -t 20 -T 1 >/dev/null 2>&1
    else
        ip addr add "$IP" dev eth0
    fi
    echo "tinyvm: ip $(ip -4 -o addr show dev eth0 | awk '{print $4}' | head -n 1)"
fi

for port in $(opt serve | tr ',' ' '); do
    (while true; do echo "tinyvm $NAME port $port" | nc -l -p "$port" >/dev/null 2>&1; done) &
done

PING=$(opt ping)
if [ -n "$PING" ]; then
    if ping -c 1 -W 3 "$PING" >/dev/null 2>&1 || ping -c 1 -W 3 "$PING" >/dev/null 2>&1; then
        echo "tinyvm: ping $PING ok"
    else
        echo "tinyvm: ping $PING fail"
    fi
fi

CONNECT=$(opt connect)
if [ -n "$CONNECT" ]; then
    if echo "tinyvm $NAME" | nc -w 3 "${CONNECT%:*}" "${CONNECT##*:}" >/dev/null 2>&1; then
        echo "tinyvm: connect $CONNECT ok"
    else
        echo "tinyvm: connect $CONNECT fail"
    fi
fi

[ -e /sys/class/tpm/tpm0 ] && echo "tinyvm: tpm $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)"

FWCFG=$(opt fwcfg)
if [ -n "$FWCFG" ]; then
    echo "tinyvm: fwcfg $(md5sum < "/sys/firmware/qemu_fw_cfg/by_name/$FWCFG/raw" | cut -d' ' -f1)"
fi

echo "tinyvm: ready"
[ "$(opt poweroff)" = 1 ] && poweroff -f
while true; do sleep 3600; done
""".replace("MODULE_LIST", MODULE_LIST)


@dataclass(frozen=True)
class TinyImage:
    """A bootable tiny VM: kernel and initramfs for direct boot."""

    kernel: Path
    initramfs: Path

    @staticmethod
    def cmdline(*options: str) -> str:
        """Kernel command line with the serial console and the given ``tiny.*`` options."""
        return " ".join(["console=ttyS0", "panic=-1", "quiet", *options])


def build_tiny_image(progress: Progress = stderr_progress) -> TinyImage:
    """Build (or find in the cache) the tiny VM image."""
    kernel = get_kernel(progress)
    busybox = debian.busybox(progress)
    key = hash_inputs([kernel.cache_key, f"{debian.BUSYBOX_PACKAGE}={busybox.version}", INIT_SCRIPT, *TINY_MODULES])

    def build(out: Path) -> None:
        image = Initramfs()
        image.copy("/bin/busybox", busybox.path, 0o755)
        for directory in ("/proc", "/sys", "/dev", "/tmp", "/etc"):
            image.directory(directory)
        image.file("/init", INIT_SCRIPT.encode(), 0o755)
        add_modules(image, kernel, TINY_MODULES)
        image.write(out / "initramfs.gz")

    root = cached_build("tinyvm", key, build, progress)
    return TinyImage(kernel=kernel.vmlinuz, initramfs=root / "initramfs.gz")
