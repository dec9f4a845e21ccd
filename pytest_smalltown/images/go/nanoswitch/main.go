// Command nanoswitch is /init of the switch microVM that networks a test
// cluster: it bridges every node NIC as 10.1.0.1/24, hands out fixed DHCP
// leases, masquerades the nodes out of the QEMU user-mode uplink, and proxies
// the TCP ports the host forwards into the uplink on to node 0 (and one port
// per node on to that node's debug service). Nothing on the switch itself
// answers the nodes' side but DHCP (setupFence): what it forwards is the host's.
// The host can cut and slow the links between nodes while a test runs
// (faults.go), through a channel of its own (control.go).
//
// Everything cluster-specific (ports, target, leases, node count) comes from
// the kernel command line (see Config), so one image serves every cluster.
// Progress goes to the console as "nanoswitch: ..." lines; the launcher waits
// for "nanoswitch: forwarding ..." and treats "nanoswitch: fatal: ..." as a
// failed start.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	bridgeName = "br0"
	uplinkName = "uplink"
	moduleList = "/etc/modules-load-order"
	// How long to wait for the expected NICs to appear before going ahead
	// with what is there (late NICs still join the bridge when they appear).
	nicWait = 15 * time.Second
)

// The bridge's own MAC is fixed: otherwise Linux gives it the lowest port MAC,
// which changes as ports join and makes nodes re-ARP for their gateway.
var bridgeMAC = net.HardwareAddr{0x02, 0x72, 0x82, 0xbf, 0xc3, 0x57}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "nanoswitch: "+format+"\n", args...)
}

// fatal reports the failure on the console, where the launcher looks for it,
// and powers the VM off. Returning from PID 1 would panic the kernel and bury
// the reason under a backtrace.
func fatal(format string, args ...any) {
	logf("fatal: "+format, args...)
	unix.Sync()
	time.Sleep(200 * time.Millisecond)
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func uptime() string {
	data, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0] + "s"
}

func main() {
	if err := mountBasics(); err != nil {
		fatal("%v", err)
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fatal("reading kernel command line: %v", err)
	}
	cmdline := string(raw)
	cfg, err := parseCmdline(cmdline)
	if err != nil {
		fatal("%v", err)
	}
	if err := loadModules(cmdline); err != nil {
		fatal("%v", err)
	}
	if err := run(cfg); err != nil {
		fatal("%v", err)
	}
	select {}
}

func run(cfg *Config) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0); err != nil {
		return fmt.Errorf("enabling IP forwarding: %w", err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	uplink, nodeNICs, err := waitForNICs(cfg)
	if err != nil {
		return err
	}
	if err := setupUplink(uplink); err != nil {
		return err
	}
	bridge, err := setupBridge(nodeNICs)
	if err != nil {
		return err
	}
	go adoptLateNICs(cfg.UplinkMAC, bridge)
	if err := setupNAT(uplinkName, cfg.DNAT, cfg.Target); err != nil {
		return err
	}
	// Before any listener starts: nothing the switch serves may be open to the nodes' side.
	if err := setupFence(bridgeName); err != nil {
		return err
	}
	table := newLeaseTable(cfg.Leases)
	for _, mac := range sortedMACs(cfg.Leases) {
		logf("fixed lease %s -> %s", mac, cfg.Leases[mac])
	}
	if err := serveDHCP(bridgeName, table); err != nil {
		return fmt.Errorf("starting DHCP server: %w", err)
	}
	for _, p := range cfg.proxies() {
		if err := forwardPort(uplinkIP, p); err != nil {
			return err
		}
	}
	if cfg.Control != "" {
		faults := newFaults(cfg.PortMACs, linkNameByMAC, kernelFaults{})
		if err := serveControl(cfg.Control, faults); err != nil {
			return err
		}
		logf("faults: on %s for %d node ports", cfg.Control, len(cfg.PortMACs))
	}
	names := make([]string, len(nodeNICs))
	for i, nic := range nodeNICs {
		names[i] = nic.Attrs().Name
	}
	logf("bridge %s %s/24 ports %s; uplink %s/24 via %s", bridgeName, bridgeIP, strings.Join(names, ","), uplinkIP, uplinkGW)
	if len(cfg.Proxies) > 0 {
		logf("proxying %s", proxyList(cfg.Proxies))
	}
	if cfg.DNAT != nil {
		logf("NAT %s to %s", cfg.DNAT, cfg.Target)
	}
	if len(cfg.Ports) == 0 {
		logf("forwarding none (up %s)", uptime())
	} else {
		logf("forwarding %s to %s (up %s)", portList(cfg.Ports), cfg.Target, uptime())
	}
	return nil
}

func mountBasics() error {
	mounts := []struct{ fstype, target string }{
		{"proc", "/proc"},
		{"sysfs", "/sys"},
		{"devtmpfs", "/dev"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// loadModules loads the modules listed in /etc/modules-load-order (written by
// the image builder, dependencies first), passing each its "module.param=" options
// from the command line.
func loadModules(cmdline string) error {
	file, err := os.Open(moduleList)
	if err != nil {
		return fmt.Errorf("opening module list: %w", err)
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		path := strings.TrimSpace(scanner.Text())
		if path == "" {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(path), ".ko")
		ko, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		err = unix.FinitModule(int(ko.Fd()), moduleParams(cmdline, name), 0)
		ko.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("loading module %s: %w", name, err)
		}
	}
	return scanner.Err()
}

func isEthernet(link netlink.Link) bool {
	attrs := link.Attrs()
	return link.Type() == "device" && attrs.EncapType == "ether" && len(attrs.HardwareAddr) == 6
}

// waitForNICs returns the uplink and the node NICs once the uplink and
// cfg.Nodes other NICs exist (virtio probing can lag module loading), or after
// nicWait with whatever node NICs exist. A missing uplink is an error: without
// it nothing can be forwarded.
func waitForNICs(cfg *Config) (netlink.Link, []netlink.Link, error) {
	deadline := time.Now().Add(nicWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, nil, fmt.Errorf("listing links: %w", err)
		}
		var uplink netlink.Link
		var nodes []netlink.Link
		for _, link := range links {
			if !isEthernet(link) {
				continue
			}
			if link.Attrs().HardwareAddr.String() == cfg.UplinkMAC.String() {
				uplink = link
			} else if link.Attrs().MasterIndex == 0 {
				nodes = append(nodes, link)
			}
		}
		if uplink != nil && len(nodes) >= cfg.Nodes {
			return uplink, nodes, nil
		}
		if time.Now().After(deadline) {
			if uplink == nil {
				return nil, nil, fmt.Errorf("no uplink NIC with MAC %s after %s (found %d other NICs)", cfg.UplinkMAC, nicWait, len(nodes))
			}
			logf("warning: expected %d node NICs, found %d after %s; going ahead", cfg.Nodes, len(nodes), nicWait)
			return uplink, nodes, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func setupUplink(link netlink.Link) error {
	if err := netlink.LinkSetName(link, uplinkName); err != nil {
		return fmt.Errorf("renaming uplink: %w", err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &uplinkNet}); err != nil {
		return fmt.Errorf("addressing uplink: %w", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing up uplink: %w", err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: uplinkGW}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("default route via %s: %w", uplinkGW, err)
	}
	return nil
}

func setupBridge(nics []netlink.Link) (*netlink.Bridge, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = bridgeName
	attrs.HardwareAddr = bridgeMAC
	// STP stays off (the kernel default for a new bridge), so ports forward
	// as soon as they join: there are no loops in a star of point-to-point NICs.
	bridge := &netlink.Bridge{LinkAttrs: attrs}
	if err := netlink.LinkAdd(bridge); err != nil {
		return nil, fmt.Errorf("creating bridge: %w", err)
	}
	for _, nic := range nics {
		if err := joinBridge(nic, bridge); err != nil {
			return nil, err
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: bridgeIP, Mask: bridgeNet.Mask}}
	if err := netlink.AddrAdd(bridge, addr); err != nil {
		return nil, fmt.Errorf("addressing bridge: %w", err)
	}
	if err := netlink.LinkSetUp(bridge); err != nil {
		return nil, fmt.Errorf("bringing up bridge: %w", err)
	}
	return bridge, nil
}

func joinBridge(nic netlink.Link, bridge *netlink.Bridge) error {
	if err := netlink.LinkSetMaster(nic, bridge); err != nil {
		return fmt.Errorf("adding %s to bridge: %w", nic.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(nic); err != nil {
		return fmt.Errorf("bringing up %s: %w", nic.Attrs().Name, err)
	}
	return nil
}

// adoptLateNICs puts NICs that appear after start-up into the bridge, so that a
// slow device probe costs a node its first DHCP attempt, not its network.
func adoptLateNICs(uplinkMAC net.HardwareAddr, bridge *netlink.Bridge) {
	updates := make(chan netlink.LinkUpdate, 16)
	if err := netlink.LinkSubscribe(updates, nil); err != nil {
		logf("warning: cannot watch for new NICs: %v", err)
		return
	}
	// Catch NICs that appeared between the initial listing and the subscription.
	if links, err := netlink.LinkList(); err == nil {
		for _, link := range links {
			adopt(link, uplinkMAC, bridge)
		}
	}
	for update := range updates {
		adopt(update.Link, uplinkMAC, bridge)
	}
}

func adopt(link netlink.Link, uplinkMAC net.HardwareAddr, bridge *netlink.Bridge) {
	if !isEthernet(link) || link.Attrs().MasterIndex != 0 || link.Attrs().HardwareAddr.String() == uplinkMAC.String() {
		return
	}
	if err := joinBridge(link, bridge); err != nil {
		logf("warning: %v", err)
		return
	}
	logf("late NIC %s (%s) joined %s", link.Attrs().Name, link.Attrs().HardwareAddr, bridgeName)
}
