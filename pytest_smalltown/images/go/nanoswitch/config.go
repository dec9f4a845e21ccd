package main

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
)

// The switch's fixed addressing. The bridge side is a /24 that the launcher
// plans node addresses in (node i -> 10.1.0.(2+i)); the uplink side is QEMU
// user networking (SLIRP), whose layout is fixed: guest 10.0.2.15, gateway
// 10.0.2.2. Hard-coding the SLIRP layout avoids running a DHCP
// client on the uplink, which would cost boot time under emulation.
var (
	bridgeIP    = net.IPv4(10, 1, 0, 1).To4()
	bridgeNet   = net.IPNet{IP: net.IPv4(10, 1, 0, 0).To4(), Mask: net.CIDRMask(24, 32)}
	uplinkIP    = net.IPv4(10, 0, 2, 15).To4()
	uplinkNet   = net.IPNet{IP: uplinkIP, Mask: net.CIDRMask(24, 32)}
	uplinkGW    = net.IPv4(10, 0, 2, 2).To4()
	poolFirst   = 200 // unknown MACs get 10.1.0.200 .. 10.1.0.254
	poolLast    = 254
	defaultMAC  = "02:72:82:bf:c3:56"
	paramPrefix = "nanoswitch."
)

// Config is everything the launcher tells the switch, all of it taken from
// the kernel command line so that one cached image serves every cluster shape.
//
// Syntax (every key optional, order irrelevant, unknown nanoswitch.* keys are
// an error so that a launcher/image mismatch fails loudly instead of silently):
//
//	nanoswitch.nodes=N                   node NICs to wait for before "forwarding"
//	nanoswitch.forward=P[,P...]          TCP ports forwarded from the uplink ...
//	nanoswitch.target=A.B.C.D            ... to this bridge address (node 0)
//	nanoswitch.lease=MAC=IP[,MAC=IP...]  fixed DHCP leases
//	nanoswitch.uplink=MAC                uplink NIC (default 02:72:82:bf:c3:56)
//	nanoswitch.proxy=P=IP:Q[,P=IP:Q...]  TCP port P of the uplink to port Q of a
//	                                     bridge address (one node's debug service)
//	nanoswitch.dnat=LO-HI                TCP ports LO..HI of the uplink to the same
//	                                     port of the target, in the kernel (NodePorts)
//
// forward/target send a port to the same port of one node; proxy names each
// destination, which is how every node's debug service gets a port of its own.
// A listening port may appear only once across forward and proxy. dnat is for
// ports the host forwards only while a test runs (QEMU's hostfwd_add): a
// kernel rule costs nothing while unused, a listener per port would.
type Config struct {
	Nodes     int
	Ports     []int
	Target    net.IP
	Proxies   []Proxy
	DNAT      *PortRange
	Leases    map[string]net.IP // canonical lower-case MAC -> address
	UplinkMAC net.HardwareAddr
	// PortMACs[i] is the switch's NIC MAC on node i's cable (nanoswitch.ports).
	PortMACs []net.HardwareAddr
	// Control names the virtio-serial port of the fault channel ("": none).
	Control string
}

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Low, High int }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Low, r.High) }

// Proxy is one TCP port of the uplink and where its connections go.
type Proxy struct {
	Listen int
	Dest   net.IP
	Port   int
}

func (p Proxy) String() string {
	return fmt.Sprintf("%d->%s", p.Listen, net.JoinHostPort(p.Dest.String(), strconv.Itoa(p.Port)))
}

// proxies lists every port the switch listens on: the forwarded ports (to the
// same port of the target), then the explicit proxies.
func (c *Config) proxies() []Proxy {
	all := make([]Proxy, 0, len(c.Ports)+len(c.Proxies))
	for _, port := range c.Ports {
		all = append(all, Proxy{Listen: port, Dest: c.Target, Port: port})
	}
	return append(all, c.Proxies...)
}

// parseCmdline extracts the nanoswitch.* parameters from a kernel command line.
func parseCmdline(cmdline string) (*Config, error) {
	mac, _ := net.ParseMAC(defaultMAC)
	cfg := &Config{Leases: map[string]net.IP{}, UplinkMAC: mac}
	for _, token := range strings.Fields(cmdline) {
		if !strings.HasPrefix(token, paramPrefix) {
			continue
		}
		key, value, _ := strings.Cut(strings.TrimPrefix(token, paramPrefix), "=")
		var err error
		switch key {
		case "nodes":
			cfg.Nodes, err = strconv.Atoi(value)
			if err == nil && (cfg.Nodes < 0 || cfg.Nodes > 64) {
				err = fmt.Errorf("out of range 0..64")
			}
		case "forward":
			cfg.Ports, err = parsePorts(value)
		case "target":
			cfg.Target, err = parseBridgeIP(value)
		case "lease":
			err = parseLeases(value, cfg.Leases)
		case "uplink":
			cfg.UplinkMAC, err = net.ParseMAC(value)
		case "proxy":
			cfg.Proxies, err = parseProxies(value)
		case "dnat":
			cfg.DNAT, err = parsePortRange(value)
		case "ports":
			cfg.PortMACs, err = parseMACs(value)
		case "control":
			cfg.Control = value
			if value == "" || strings.ContainsAny(value, "/") {
				err = fmt.Errorf("want a virtio-serial port name")
			}
		default:
			err = fmt.Errorf("unknown parameter")
		}
		if err != nil {
			return nil, fmt.Errorf("bad kernel parameter %q: %v", token, err)
		}
	}
	if len(cfg.Ports) > 0 && cfg.Target == nil {
		return nil, fmt.Errorf("nanoswitch.forward given without nanoswitch.target")
	}
	if cfg.DNAT != nil && cfg.Target == nil {
		return nil, fmt.Errorf("nanoswitch.dnat given without nanoswitch.target")
	}
	for _, p := range cfg.proxies() {
		if cfg.DNAT != nil && p.Listen >= cfg.DNAT.Low && p.Listen <= cfg.DNAT.High {
			return nil, fmt.Errorf("port %d is both proxied and in nanoswitch.dnat=%s", p.Listen, cfg.DNAT)
		}
	}
	for _, p := range cfg.Proxies {
		for _, port := range cfg.Ports {
			if p.Listen == port {
				return nil, fmt.Errorf("port %d is both in nanoswitch.forward and nanoswitch.proxy", port)
			}
		}
	}
	return cfg, nil
}

// parseMACs reads "MAC,MAC,..." (distinct Ethernet MACs).
func parseMACs(value string) ([]net.HardwareAddr, error) {
	var macs []net.HardwareAddr
	seen := map[string]bool{}
	for _, item := range strings.Split(value, ",") {
		hw, err := net.ParseMAC(item)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("%q is not an Ethernet MAC", item)
		}
		if seen[hw.String()] {
			return nil, fmt.Errorf("MAC %s given twice", hw)
		}
		seen[hw.String()] = true
		macs = append(macs, hw)
	}
	return macs, nil
}

// parsePortRange reads "LO-HI" (LO <= HI, both valid ports).
func parsePortRange(value string) (*PortRange, error) {
	low, high, ok := strings.Cut(value, "-")
	if !ok {
		return nil, fmt.Errorf("want LO-HI")
	}
	lo, err := parsePort(low)
	if err != nil {
		return nil, err
	}
	hi, err := parsePort(high)
	if err != nil {
		return nil, err
	}
	if lo > hi {
		return nil, fmt.Errorf("empty range")
	}
	return &PortRange{lo, hi}, nil
}

// parseProxies reads "P=IP:Q,..." (listening ports distinct, destinations on the bridge).
func parseProxies(value string) ([]Proxy, error) {
	if value == "" {
		return nil, nil
	}
	var proxies []Proxy
	seen := map[int]bool{}
	for _, item := range strings.Split(value, ",") {
		listen, dest, ok := strings.Cut(item, "=")
		host, port, err := net.SplitHostPort(dest)
		if !ok || err != nil {
			return nil, fmt.Errorf("%q is not PORT=IP:PORT", item)
		}
		var p Proxy
		p.Listen, err = parsePort(listen)
		if err == nil {
			p.Port, err = parsePort(port)
		}
		if err == nil {
			p.Dest, err = parseBridgeIP(host)
		}
		if err != nil {
			return nil, fmt.Errorf("%q: %v", item, err)
		}
		if seen[p.Listen] {
			return nil, fmt.Errorf("port %d given twice", p.Listen)
		}
		seen[p.Listen] = true
		proxies = append(proxies, p)
	}
	return proxies, nil
}

func parsePorts(value string) ([]int, error) {
	var ports []int
	seen := map[int]bool{}
	if value == "" {
		return nil, nil
	}
	for _, item := range strings.Split(value, ",") {
		port, err := parsePort(item)
		if err != nil {
			return nil, err
		}
		if seen[port] {
			return nil, fmt.Errorf("port %d given twice", port)
		}
		seen[port] = true
		ports = append(ports, port)
	}
	return ports, nil
}

func parsePort(item string) (int, error) {
	port, err := strconv.Atoi(item)
	if err != nil || port < 1 || port > 65535 {
		return 0, fmt.Errorf("%q is not a TCP port", item)
	}
	return port, nil
}

// parseBridgeIP accepts a host address inside the bridge network that is
// neither the network, broadcast nor the switch's own address.
func parseBridgeIP(value string) (net.IP, error) {
	ip := net.ParseIP(value).To4()
	if ip == nil {
		return nil, fmt.Errorf("%q is not an IPv4 address", value)
	}
	if !bridgeNet.Contains(ip) || ip[3] == 0 || ip[3] == 255 || ip.Equal(bridgeIP) {
		return nil, fmt.Errorf("%s is not a node address in %s", ip, bridgeNet.String())
	}
	return ip, nil
}

func parseLeases(value string, into map[string]net.IP) error {
	if value == "" {
		return nil
	}
	used := map[string]string{}
	for mac, ip := range into {
		used[ip.String()] = mac
	}
	for _, item := range strings.Split(value, ",") {
		// A MAC contains no '=', so the last '=' separates it from the address.
		i := strings.LastIndex(item, "=")
		if i < 0 {
			return fmt.Errorf("%q is not MAC=IP", item)
		}
		hw, err := net.ParseMAC(item[:i])
		if err != nil || len(hw) != 6 {
			return fmt.Errorf("%q is not an Ethernet MAC", item[:i])
		}
		ip, err := parseBridgeIP(item[i+1:])
		if err != nil {
			return err
		}
		if int(ip[3]) >= poolFirst {
			return fmt.Errorf("%s is inside the pool for unknown MACs (.%d-.%d)", ip, poolFirst, poolLast)
		}
		mac := hw.String()
		if _, dup := into[mac]; dup {
			return fmt.Errorf("MAC %s leased twice", mac)
		}
		if other, dup := used[ip.String()]; dup {
			return fmt.Errorf("%s leased to both %s and %s", ip, other, mac)
		}
		into[mac] = ip
		used[ip.String()] = mac
	}
	return nil
}

// portList renders ports the way the ready line and the launcher spell them.
func portList(ports []int) string {
	if len(ports) == 0 {
		return "none"
	}
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = strconv.Itoa(p)
	}
	return strings.Join(parts, ",")
}

// proxyList renders proxies for the console: "27837->10.1.0.2:7837 ...".
func proxyList(proxies []Proxy) string {
	items := make([]string, len(proxies))
	for i, p := range proxies {
		items[i] = p.String()
	}
	return strings.Join(items, " ")
}

// moduleParams returns the "key=value ..." string for a module from
// "module.key=value" tokens on the command line. The kernel itself only applies
// such tokens to built-in code; for loadable modules it is modprobe's job, and
// we are our own modprobe. QEMU's microvm relies on this for virtio_mmio.device=.
func moduleParams(cmdline, module string) string {
	module = strings.ReplaceAll(module, "-", "_")
	var params []string
	for _, token := range strings.Fields(cmdline) {
		name, rest, ok := strings.Cut(token, ".")
		if ok && strings.ReplaceAll(name, "-", "_") == module && rest != "" {
			params = append(params, rest)
		}
	}
	return strings.Join(params, " ")
}

// sortedMACs gives a stable order for logging the lease table.
func sortedMACs(leases map[string]net.IP) []string {
	macs := make([]string, 0, len(leases))
	for mac := range leases {
		macs = append(macs, mac)
	}
	sort.Strings(macs)
	return macs
}
