package main

import (
	"net"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

const sampleCmdline = "console=ttyS0 quiet nanoswitch.nodes=2 nanoswitch.forward=7836,7837,6443 " +
	"nanoswitch.target=10.1.0.2 nanoswitch.lease=02:53:4d:01:00:02=10.1.0.2,02:53:4d:01:00:03=10.1.0.3\n"

func TestParseCmdline(t *testing.T) {
	cfg, err := parseCmdline(sampleCmdline)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Nodes != 2 || portList(cfg.Ports) != "7836,7837,6443" || !cfg.Target.Equal(net.IPv4(10, 1, 0, 2)) {
		t.Fatalf("unexpected config %+v", cfg)
	}
	if got := cfg.Leases["02:53:4d:01:00:03"]; !got.Equal(net.IPv4(10, 1, 0, 3)) {
		t.Fatalf("lease for node 1 is %v", got)
	}
	if cfg.UplinkMAC.String() != defaultMAC {
		t.Fatalf("uplink MAC %v", cfg.UplinkMAC)
	}
	// A command line without nanoswitch.proxy (older launchers) proxies just the forwards.
	if len(cfg.Proxies) != 0 || proxyList(cfg.proxies()) != "7836->10.1.0.2:7836 7837->10.1.0.2:7837 6443->10.1.0.2:6443" {
		t.Fatalf("proxies %v", cfg.proxies())
	}
}

func TestParseCmdlineProxies(t *testing.T) {
	cfg, err := parseCmdline(strings.TrimSpace(sampleCmdline) + " nanoswitch.proxy=27837=10.1.0.2:7837,27838=10.1.0.3:7837")
	if err != nil {
		t.Fatal(err)
	}
	want := "7836->10.1.0.2:7836 7837->10.1.0.2:7837 6443->10.1.0.2:6443 27837->10.1.0.2:7837 27838->10.1.0.3:7837"
	if got := proxyList(cfg.proxies()); got != want {
		t.Fatalf("proxies %q, want %q", got, want)
	}
	// Proxies alone, without forward/target, are a complete configuration.
	cfg, err = parseCmdline("nanoswitch.proxy=27837=10.1.0.2:7837")
	if err != nil || proxyList(cfg.proxies()) != "27837->10.1.0.2:7837" {
		t.Fatalf("proxy only: %v %v", cfg, err)
	}
}

func TestParseCmdlineDNAT(t *testing.T) {
	cfg, err := parseCmdline(strings.TrimSpace(sampleCmdline) + " nanoswitch.dnat=30000-32767")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DNAT == nil || *cfg.DNAT != (PortRange{30000, 32767}) || !cfg.Target.Equal(net.IPv4(10, 1, 0, 2)) {
		t.Fatalf("dnat %v to %v", cfg.DNAT, cfg.Target)
	}
}

func TestParseCmdlineFaultChannel(t *testing.T) {
	cfg, err := parseCmdline(strings.TrimSpace(sampleCmdline) +
		" nanoswitch.ports=02:72:82:00:00:00,02:72:82:00:00:01 nanoswitch.control=nanoswitch.control")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.PortMACs) != 2 || cfg.PortMACs[1].String() != "02:72:82:00:00:01" || cfg.Control != "nanoswitch.control" {
		t.Fatalf("ports %v, control %q", cfg.PortMACs, cfg.Control)
	}
}

func TestParseCmdlineRejects(t *testing.T) {
	for _, bad := range []string{
		"nanoswitch.forward=7836", // no target
		"nanoswitch.forward=70000 nanoswitch.target=10.1.0.2",
		"nanoswitch.forward=7836,7836 nanoswitch.target=10.1.0.2",
		"nanoswitch.target=10.1.0.1",    // the switch itself
		"nanoswitch.target=192.168.1.2", // not on the bridge
		"nanoswitch.lease=02:53:4d:01:00:02=10.1.0.2,02:53:4d:01:00:03=10.1.0.2",
		"nanoswitch.lease=02:53:4d:01:00:02=10.1.0.2,02:53:4d:01:00:02=10.1.0.3",
		"nanoswitch.lease=02:53:4d:01:00:02=10.1.0.201", // inside the pool
		"nanoswitch.lease=nonsense",
		"nanoswitch.nodes=-1",
		"nanoswitch.frobnicate=1",
		"nanoswitch.proxy=27837",                                   // no destination
		"nanoswitch.proxy=27837=10.1.0.2",                          // no destination port
		"nanoswitch.proxy=27837=10.1.0.1:7837",                     // the switch itself
		"nanoswitch.proxy=27837=192.168.1.2:7837",                  // not on the bridge
		"nanoswitch.proxy=0=10.1.0.2:7837",                         // not a port
		"nanoswitch.proxy=27837=10.1.0.2:70000",                    // not a port
		"nanoswitch.proxy=27837=10.1.0.2:7837,27837=10.1.0.3:7837", // listening twice
		"nanoswitch.forward=7837 nanoswitch.target=10.1.0.2 nanoswitch.proxy=7837=10.1.0.3:7837",
		"nanoswitch.dnat=30000-32767",                                                  // no target
		"nanoswitch.dnat=32767-30000 nanoswitch.target=10.1.0.2",                       // empty
		"nanoswitch.dnat=30000 nanoswitch.target=10.1.0.2",                             // not a range
		"nanoswitch.dnat=30000-70000 nanoswitch.target=10.1.0.2",                       // not a port
		"nanoswitch.dnat=7000-8000 nanoswitch.target=10.1.0.2 nanoswitch.forward=7837", // overlaps a proxy
		"nanoswitch.ports=02:72:82:00:00:00,02:72:82:00:00:00",                         // one port twice
		"nanoswitch.ports=nonsense",
		"nanoswitch.control=",
		"nanoswitch.control=../vport0p1",
	} {
		if _, err := parseCmdline(bad); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

func TestModuleParams(t *testing.T) {
	cmdline := "virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 virtio_net.napi_tx=1 x.y=z"
	got := moduleParams(cmdline, "virtio_mmio")
	if got != "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11" {
		t.Fatalf("got %q", got)
	}
	if got := moduleParams(cmdline, "bridge"); got != "" {
		t.Fatalf("got %q", got)
	}
}

func request(t *testing.T, mac string, typ dhcpv4.MessageType, requested net.IP) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(typ)}
	if requested != nil {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(requested)))
	}
	req, err := dhcpv4.New(append(mods, dhcpv4.WithHwAddr(hw))...)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestDHCPFixedLease(t *testing.T) {
	cfg, _ := parseCmdline(sampleCmdline)
	table := newLeaseTable(cfg.Leases)
	offer, _ := table.reply(request(t, "02:53:4d:01:00:03", dhcpv4.MessageTypeDiscover, nil))
	if offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(net.IPv4(10, 1, 0, 3)) {
		t.Fatalf("offer %v", offer.Summary())
	}
	if !offer.Router()[0].Equal(bridgeIP) || len(offer.DNS()) != 0 {
		t.Fatalf("offer options %v", offer.Summary())
	}
	ack, note := table.reply(request(t, "02:53:4d:01:00:03", dhcpv4.MessageTypeRequest, net.IPv4(10, 1, 0, 3)))
	if ack.MessageType() != dhcpv4.MessageTypeAck || note != "lease 10.1.0.3 to 02:53:4d:01:00:03" {
		t.Fatalf("ack %v note %q", ack.Summary(), note)
	}
	nak, _ := table.reply(request(t, "02:53:4d:01:00:03", dhcpv4.MessageTypeRequest, net.IPv4(10, 1, 0, 2)))
	if nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("asking for node 0's address gave %v", nak.Summary())
	}
}

func TestDHCPPool(t *testing.T) {
	table := newLeaseTable(map[string]net.IP{})
	first, _ := table.reply(request(t, "52:54:00:00:00:01", dhcpv4.MessageTypeDiscover, nil))
	second, _ := table.reply(request(t, "52:54:00:00:00:02", dhcpv4.MessageTypeDiscover, nil))
	again, _ := table.reply(request(t, "52:54:00:00:00:01", dhcpv4.MessageTypeDiscover, nil))
	if !first.YourIPAddr.Equal(net.IPv4(10, 1, 0, 200)) || !second.YourIPAddr.Equal(net.IPv4(10, 1, 0, 201)) {
		t.Fatalf("pool gave %v and %v", first.YourIPAddr, second.YourIPAddr)
	}
	if !again.YourIPAddr.Equal(first.YourIPAddr) {
		t.Fatalf("pool lease not sticky: %v then %v", first.YourIPAddr, again.YourIPAddr)
	}
	_, note := table.reply(request(t, "52:54:00:00:00:02", dhcpv4.MessageTypeRequest, net.IPv4(10, 1, 0, 201)))
	if !strings.HasSuffix(note, "(pool)") {
		t.Fatalf("pool lease note %q", note)
	}
}
