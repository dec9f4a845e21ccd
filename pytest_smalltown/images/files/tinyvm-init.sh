#!/bin/busybox sh
# shellcheck shell=sh
# The tiny VM's whole userland (images/tinyvm.py): what it does is chosen by tiny.* options
# on the kernel command line, and every result is a 'tinyvm: ...' console line.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "tinyvm: init"
while read -r module; do insmod "$module" 2>/dev/null; done < "@MODULE_LIST@"

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

for CONNECT in $(opt connect | tr ',' ' '); do
    if echo "tinyvm $NAME" | nc -w 3 "${CONNECT%:*}" "${CONNECT##*:}" >/dev/null 2>&1; then
        echo "tinyvm: connect $CONNECT ok"
    else
        echo "tinyvm: connect $CONNECT fail"
    fi
done

[ -e /sys/class/tpm/tpm0 ] && echo "tinyvm: tpm $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)"

FWCFG=$(opt fwcfg)
if [ -n "$FWCFG" ]; then
    echo "tinyvm: fwcfg $(md5sum < "/sys/firmware/qemu_fw_cfg/by_name/$FWCFG/raw" | cut -d' ' -f1)"
fi

echo "tinyvm: ready"
[ "$(opt poweroff)" = 1 ] && poweroff -f
while true; do sleep 3600; done
