package main

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ifname is an interface name as nftables compares it: NUL-padded to IFNAMSIZ.
func ifname(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// setupNAT masquerades traffic from the bridge network leaving by the uplink,
// so that it carries the uplink's address. The launcher starts the uplink
// with QEMU's restrict=on, so SLIRP drops what leaves this way (the host's
// loopback at 10.0.2.2 included); only the host-to-guest forwards cross it.
// The equivalent nft ruleset is:
//
//	table ip nanoswitch {
//	  chain postrouting {
//	    type nat hook postrouting priority srcnat;
//	    ip saddr 10.1.0.0/24 oifname "uplink" masquerade
//	  }
//	}
//
// With dnat (nanoswitch.dnat=LO-HI), TCP connections arriving on the uplink
// for a port in the range go to the same port of target (node 0), so a
// NodePort the host forwards at run time reaches the cluster:
//
//	chain prerouting {
//	  type nat hook prerouting priority dstnat;
//	  iifname "uplink" tcp dport LO-HI dnat to TARGET
//	}
//
// Replies need no rule: the nodes route through the switch, and conntrack
// undoes the translation.
func setupNAT(uplink string, dnat *PortRange, target net.IP) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "nanoswitch"})
	chain := conn.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	conn.AddRule(&nftables.Rule{
		Table: table,
		Chain: chain,
		Exprs: []expr.Any{
			// ip saddr & 255.255.255.0 == 10.1.0.0
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte(bridgeNet.Mask), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(bridgeNet.IP.To4())},
			// oifname "uplink"
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(uplink)},
			&expr.Masq{},
		},
	})
	if dnat != nil {
		pre := conn.AddChain(&nftables.Chain{
			Name:     "prerouting",
			Table:    table,
			Type:     nftables.ChainTypeNAT,
			Hooknum:  nftables.ChainHookPrerouting,
			Priority: nftables.ChainPriorityNATDest,
		})
		conn.AddRule(&nftables.Rule{
			Table: table,
			Chain: pre,
			Exprs: []expr.Any{
				// iifname "uplink"
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(uplink)},
				// meta l4proto tcp
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				// tcp dport LO-HI
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Range{Op: expr.CmpOpEq, Register: 1,
					FromData: binaryutil.BigEndian.PutUint16(uint16(dnat.Low)),
					ToData:   binaryutil.BigEndian.PutUint16(uint16(dnat.High))},
				// dnat to TARGET
				&expr.Immediate{Register: 1, Data: target.To4()},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
			},
		})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: installing NAT rules: %w", err)
	}
	return nil
}
