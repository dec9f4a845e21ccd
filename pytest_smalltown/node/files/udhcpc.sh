#!/bin/sh
# udhcpc event script, written by the Smalltown node agent (node/network.py fills in the @...@ values).
# udhcpc passes the lease in the environment: interface, ip, mask, router, dns, domain, lease.
# shellcheck disable=SC2154
LEASE="@LEASE@"
RESOLV="@RESOLV@"
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    [ "$1" = bound ] && ip -4 addr flush dev "$interface"
    ip addr replace "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
        ip route replace default via "${router%% *}" dev "$interface"  # the first router given
    fi
    if [ -n "$dns" ]; then
        : > "$RESOLV.tmp"
        [ -n "$domain" ] && echo "search $domain" >> "$RESOLV.tmp"
        for s in $dns; do echo "nameserver $s" >> "$RESOLV.tmp"; done
        mv "$RESOLV.tmp" "$RESOLV"
    fi
    {
        echo "interface=$interface"; echo "ip=$ip"; echo "mask=$mask"
        echo "router=$router"; echo "dns=$dns"; echo "domain=$domain"; echo "lease=$lease"
    } > "$LEASE.tmp" && mv "$LEASE.tmp" "$LEASE"
    ;;
esac
exit 0
