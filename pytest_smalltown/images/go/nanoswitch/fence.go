package main

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// dhcpServerPort is the one port of the switch that the node side may open
// a conversation with: the nodes' DHCP clients ask it for their leases.
const dhcpServerPort = 67

// setupFence makes the switch itself unreachable from the bridge side, so that
// what it offers the host stays the host's.
//
// The forwarders (forwardPort) listen on the uplink address 10.0.2.15, and
// Linux accepts a packet for any local address on any interface: without this
// fence, a pod whose traffic the switch routes (it is every node's default
// gateway) reaches 10.0.2.15:7837 or :27837+i, and through them every node's
// debug service from the switch's own address, which the nodes trust. The
// same holds for the NodePort DNAT (it matches only iifname "uplink", so from
// the bridge such a port would be the switch's own) and for 10.1.0.1.
//
// Traffic the nodes route through the switch (forward hook) is not touched:
// it leaves by the uplink into SLIRP, whose restrict=on drops it. Replies to
// connections the switch opened itself (its proxies dialling a node) are let
// in by conntrack, and DHCP requests by port. A TCP connection attempt gets a
// reset, so a probe from a pod fails at once instead of hanging.
//
//	table ip nanoswitch {
//	  chain input {
//	    type filter hook input priority filter; policy accept;
//	    iifname "br0" ct state established,related accept
//	    iifname "br0" udp dport 67 accept
//	    iifname "br0" meta l4proto icmp accept
//	    iifname "br0" meta l4proto tcp reject with tcp reset
//	    iifname "br0" drop
//	  }
//	}
func setupFence(bridge string) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "nanoswitch"})
	accept := nftables.ChainPolicyAccept
	chain := conn.AddChain(&nftables.Chain{
		Name:     "input",
		Table:    table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})
	for _, rule := range fenceRules(bridge) {
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: rule})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: installing the fence on %s: %w", bridge, err)
	}
	return nil
}

// fenceRules are the input chain's rules, in order (see setupFence).
func fenceRules(bridge string) [][]expr.Any {
	fromBridge := func(rest ...expr.Any) []expr.Any {
		return append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		}, rest...)
	}
	l4proto := func(proto byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}
	}
	acceptVerdict := &expr.Verdict{Kind: expr.VerdictAccept}
	established := binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED)
	return [][]expr.Any{
		fromBridge(
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: established, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			acceptVerdict,
		),
		fromBridge(append(l4proto(unix.IPPROTO_UDP),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(dhcpServerPort)},
			acceptVerdict,
		)...),
		fromBridge(append(l4proto(unix.IPPROTO_ICMP), acceptVerdict)...),
		fromBridge(append(l4proto(unix.IPPROTO_TCP), &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})...),
		fromBridge(&expr.Verdict{Kind: expr.VerdictDrop}),
	}
}
