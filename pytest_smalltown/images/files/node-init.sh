#!/bin/busybox sh
# shellcheck shell=sh
# smalltown node initramfs: load modules, mount the disk, switch to the agent.
# Rendered by images/node.py, which fills in the @...@ values.
agent="@AGENT_PATH@"
module_list="@MODULE_LIST@"
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "smalltown-init: $*" >/dev/console
    if grep -q smalltown.debug_shell /proc/cmdline; then exec sh; fi
    exit 1  # panic=-1 and -no-reboot: QEMU exits instead of hanging
}

while read -r module; do
    insmod "$module" 2>/dev/null || echo "smalltown-init: insmod $module failed" >/dev/console
done < "$module_list"

root=/dev/vda
# shellcheck disable=SC2013  # the kernel command line is one line of words
for arg in $(cat /proc/cmdline); do
    case "$arg" in smalltown.root=*) root="${arg#smalltown.root=}" ;; esac
done
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "no root disk $root after 10s"
    sleep 0.1
done
mount -t ext4 -o rw,noatime "$root" /newroot || fail "cannot mount $root"
[ -x "/newroot$agent" ] || fail "$root has no $agent"
for fs in dev proc sys; do
    mkdir -p "/newroot/$fs"
    mount --move "/$fs" "/newroot/$fs" || fail "cannot move /$fs"
done
echo "smalltown-init: switching root to $root" >/newroot/dev/console
exec switch_root /newroot /usr/bin/tini -s -- "$agent"
