package main

import (
	"net"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

const leaseTime = 24 * time.Hour

// leaseTable decides which address a MAC gets.
//
// MACs in the launcher's table always get their fixed address: that is what
// lets the launcher know node addresses before anything boots. A MAC not in
// the table (an extra VM someone attached by hand) gets the next free address
// of a separate pool (.200-.254), remembered for the switch's lifetime, so it
// can never take a planned node address. The pool lease is logged with
// "(pool)" so that a node booted with the wrong MAC is easy to spot.
type leaseTable struct {
	mu    sync.Mutex
	fixed map[string]net.IP
	pool  map[string]net.IP
	next  int
}

func newLeaseTable(fixed map[string]net.IP) *leaseTable {
	return &leaseTable{fixed: fixed, pool: map[string]net.IP{}, next: poolFirst}
}

// lookup returns the address for mac, allocating from the pool if needed; nil
// when the pool is exhausted.
func (t *leaseTable) lookup(mac net.HardwareAddr) (ip net.IP, pooled bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := mac.String()
	if ip, ok := t.fixed[key]; ok {
		return ip, false
	}
	if ip, ok := t.pool[key]; ok {
		return ip, true
	}
	if t.next > poolLast {
		return nil, true
	}
	ip = net.IPv4(10, 1, 0, byte(t.next)).To4()
	t.next++
	t.pool[key] = ip
	return ip, true
}

// reply builds the answer to a DHCP request, or nil for no answer. It is
// separate from the socket handling so that it can be tested without a network.
func (t *leaseTable) reply(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, string) {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, ""
	}
	ip, pooled := t.lookup(req.ClientHWAddr)
	if ip == nil {
		return nil, "pool exhausted, no lease for " + req.ClientHWAddr.String()
	}
	var msgType dhcpv4.MessageType
	note := ""
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		msgType = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		requested := req.RequestedIPAddress()
		if requested == nil || requested.IsUnspecified() {
			requested = req.ClientIPAddr // RENEWING / REBINDING
		}
		if sid := req.ServerIdentifier(); sid != nil && !sid.IsUnspecified() && !sid.Equal(bridgeIP) {
			return nil, "" // the client chose another server
		}
		if !requested.Equal(ip) {
			msgType = dhcpv4.MessageTypeNak
			note = "nak " + requested.String() + " to " + req.ClientHWAddr.String() + " (its lease is " + ip.String() + ")"
		} else {
			msgType = dhcpv4.MessageTypeAck
			note = "lease " + ip.String() + " to " + req.ClientHWAddr.String()
			if pooled {
				note += " (pool)"
			}
		}
	default:
		return nil, ""
	}
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(msgType),
		dhcpv4.WithServerIP(bridgeIP),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(bridgeIP)),
	)
	if err != nil {
		return nil, "cannot build reply: " + err.Error()
	}
	if msgType != dhcpv4.MessageTypeNak {
		resp.YourIPAddr = ip
		resp.UpdateOption(dhcpv4.OptSubnetMask(bridgeNet.Mask))
		resp.UpdateOption(dhcpv4.OptRouter(bridgeIP))
		// No DNS option: the uplink is restricted (QEMU restrict=on), so SLIRP's
		// resolver at 10.0.2.3 is out of reach, and a node told about it would
		// wait for timeouts on every name outside the cluster. Nodes run
		// CoreDNS for the cluster domain and forward nothing.
		resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(leaseTime))
		resp.UpdateOption(dhcpv4.OptBroadcastAddress(net.IPv4(10, 1, 0, 255)))
	}
	return resp, note
}

// serveDHCP answers DHCP on the bridge until the process ends.
func serveDHCP(bridge string, table *leaseTable) error {
	handler := func(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
		resp, note := table.reply(req)
		if note != "" {
			logf("%s", note)
		}
		if resp == nil {
			return
		}
		if _, err := conn.WriteTo(resp.ToBytes(), peer); err != nil {
			logf("dhcp: cannot answer %s: %v", peer, err)
		}
	}
	server, err := server4.NewServer(bridge, &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, handler)
	if err != nil {
		return err
	}
	go func() {
		if err := server.Serve(); err != nil {
			logf("dhcp server stopped: %v", err)
		}
	}()
	return nil
}
