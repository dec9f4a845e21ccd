package main

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

// Network faults, switched on and off by the host while a test runs
// (control.go carries the requests). Every frame between two nodes crosses
// the bridge, so the bridge is where they can be cut or slowed:
//
//   - A partition drops the frames the bridge would forward from a port of
//     one group to a port of another (nftables, bridge family, forward hook).
//     Frames to and from the switch itself (DHCP, the host's forwarded ports,
//     the uplink) pass: the host keeps seeing every node, as an observer
//     outside the partition would. A node in no group keeps reaching all.
//   - A degraded link is a netem qdisc on the switch's port towards that
//     node: every frame sent to the node (the host's forwarded requests
//     too) is delayed, jittered, dropped or paced there. Frames from the
//     node are not, so a round trip through the link pays the delay once.
//
// The table and qdiscs belong to the faults alone: the fence (fence.go) and
// NAT live in tables of their own and are never touched here.
const faultsTable = "nanoswitch_faults"

// LinkProfile is how a degraded link treats the frames sent to its node.
type LinkProfile struct {
	DelayUS     uint32  `json:"delay_us"`
	JitterUS    uint32  `json:"jitter_us"`
	LossPercent float32 `json:"loss_percent"`
	// RateBytes paces the link to this many bytes per second (0: unpaced).
	RateBytes uint64 `json:"rate_bytes_per_s"`
}

func (p LinkProfile) check() error {
	if p.LossPercent < 0 || p.LossPercent > 100 {
		return fmt.Errorf("loss %g%% is not between 0 and 100", p.LossPercent)
	}
	if p.JitterUS > 0 && p.DelayUS == 0 {
		return fmt.Errorf("jitter needs a delay to vary around")
	}
	if p == (LinkProfile{}) {
		return fmt.Errorf("a degraded link needs a delay, loss or rate")
	}
	return nil
}

// FaultStatus is what is on now, as the host's "net status" shows it.
type FaultStatus struct {
	Partition [][]int                `json:"partition"`
	Degraded  map[string]LinkProfile `json:"degraded"`
}

// faultApplier puts fault state into the kernel; tests give a recording one.
type faultApplier interface {
	// setDrops replaces the partition's rules: frames from port in to port out are dropped.
	setDrops(pairs [][2]string) error
	// setLink degrades the port towards a node (nil: back to an ordinary link).
	setLink(port string, profile *LinkProfile) error
}

// Faults is the switch's fault state; every method is safe to call from the control loop.
type Faults struct {
	mu        sync.Mutex
	portMACs  []net.HardwareAddr
	portName  func(net.HardwareAddr) (string, error)
	apply     faultApplier
	partition [][]int
	degraded  map[int]LinkProfile
}

func newFaults(portMACs []net.HardwareAddr, portName func(net.HardwareAddr) (string, error), apply faultApplier) *Faults {
	return &Faults{portMACs: portMACs, portName: portName, apply: apply, degraded: map[int]LinkProfile{}}
}

// port is the name of the switch's NIC on node i's cable.
func (f *Faults) port(i int) (string, error) {
	if i < 0 || i >= len(f.portMACs) {
		return "", fmt.Errorf("there is no node %d (the switch has %d node ports)", i, len(f.portMACs))
	}
	return f.portName(f.portMACs[i])
}

// Partition cuts the groups of nodes off from each other until HealPartition.
func (f *Faults) Partition(groups [][]int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.partition != nil {
		return fmt.Errorf("a partition is on already (%s): heal it first", groupsString(f.partition))
	}
	if len(groups) < 2 {
		return fmt.Errorf("a partition needs at least two groups of nodes, got %d", len(groups))
	}
	seen := map[int]bool{}
	names := make([][]string, len(groups))
	for g, group := range groups {
		if len(group) == 0 {
			return fmt.Errorf("group %d of the partition is empty", g)
		}
		for _, node := range group {
			if seen[node] {
				return fmt.Errorf("node %d is in two groups", node)
			}
			seen[node] = true
			name, err := f.port(node)
			if err != nil {
				return err
			}
			names[g] = append(names[g], name)
		}
	}
	if err := f.apply.setDrops(dropPairs(names)); err != nil {
		return err
	}
	f.partition = groups
	logf("fault: partition %s", groupsString(groups))
	return nil
}

// dropPairs is every (from, to) pair of ports in different groups.
func dropPairs(groups [][]string) [][2]string {
	var pairs [][2]string
	for a, from := range groups {
		for b, to := range groups {
			if a == b {
				continue
			}
			for _, in := range from {
				for _, out := range to {
					pairs = append(pairs, [2]string{in, out})
				}
			}
		}
	}
	return pairs
}

// HealPartition lets every node reach every other again (nothing to heal is fine).
func (f *Faults) HealPartition() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.apply.setDrops(nil); err != nil {
		return err
	}
	if f.partition != nil {
		logf("fault: partition %s healed", groupsString(f.partition))
	}
	f.partition = nil
	return nil
}

// Degrade makes node's link follow profile until Restore.
func (f *Faults) Degrade(node int, profile LinkProfile) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := profile.check(); err != nil {
		return err
	}
	if _, on := f.degraded[node]; on {
		return fmt.Errorf("node %d's link is degraded already: restore it first", node)
	}
	name, err := f.port(node)
	if err != nil {
		return err
	}
	if err := f.apply.setLink(name, &profile); err != nil {
		return err
	}
	f.degraded[node] = profile
	logf("fault: node %d's link (%s) degraded: %+v", node, name, profile)
	return nil
}

// Restore gives node its ordinary link back (nothing to restore is fine).
func (f *Faults) Restore(node int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, err := f.port(node)
	if err != nil {
		return err
	}
	if err := f.apply.setLink(name, nil); err != nil {
		return err
	}
	if _, on := f.degraded[node]; on {
		logf("fault: node %d's link (%s) restored", node, name)
	}
	delete(f.degraded, node)
	return nil
}

// Heal ends every fault: the partition and each degraded link.
func (f *Faults) Heal() error {
	var errs []error
	errs = append(errs, f.HealPartition())
	for _, node := range f.Status().degradedNodes() {
		errs = append(errs, f.Restore(node))
	}
	return errors.Join(errs...)
}

// Status is a copy of what is on now.
func (f *Faults) Status() FaultStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	status := FaultStatus{Partition: f.partition, Degraded: map[string]LinkProfile{}}
	for node, profile := range f.degraded {
		status.Degraded[strconv.Itoa(node)] = profile
	}
	return status
}

func (s FaultStatus) degradedNodes() []int {
	var nodes []int
	for key := range s.Degraded {
		node, _ := strconv.Atoi(key)
		nodes = append(nodes, node)
	}
	sort.Ints(nodes)
	return nodes
}

func groupsString(groups [][]int) string {
	parts := make([]string, len(groups))
	for i, group := range groups {
		items := make([]string, len(group))
		for j, node := range group {
			items[j] = strconv.Itoa(node)
		}
		parts[i] = "[" + strings.Join(items, ",") + "]"
	}
	return strings.Join(parts, " | ")
}

// linkNameByMAC finds the switch's NIC with hardware address mac.
func linkNameByMAC(mac net.HardwareAddr) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", fmt.Errorf("listing links: %w", err)
	}
	for _, link := range links {
		if link.Attrs().HardwareAddr.String() == mac.String() {
			return link.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("no NIC with MAC %s: that node's cable is not plugged in", mac)
}

// kernelFaults is the faultApplier of a running switch.
type kernelFaults struct{}

//	table bridge nanoswitch_faults {
//	  chain forward {
//	    type filter hook forward priority filter; policy accept;
//	    iifname "eth1" oifname "eth2" drop
//	    ...
//	  }
//	}
func (kernelFaults) setDrops(pairs [][2]string) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyBridge, Name: faultsTable}
	// Adding a table that exists is no error; deleting it then clears every rule.
	conn.AddTable(table)
	conn.DelTable(table)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: clearing the partition: %w", err)
	}
	if len(pairs) == 0 {
		return nil
	}
	conn.AddTable(table)
	accept := nftables.ChainPolicyAccept
	chain := conn.AddChain(&nftables.Chain{
		Name:     "forward",
		Table:    table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: a bridge forward chain: %w", err)
	}
	for _, pair := range pairs {
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: dropRule(pair[0], pair[1])})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: the partition's rules: %w", err)
	}
	return nil
}

func dropRule(in, out string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(in)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(out)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

func (kernelFaults) setLink(port string, profile *LinkProfile) error {
	link, err := netlink.LinkByName(port)
	if err != nil {
		return fmt.Errorf("%s: %w", port, err)
	}
	attrs := netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}
	if profile == nil {
		// Back to the kernel's default root qdisc: delete the netem that is root, if there is one.
		qdiscs, err := netlink.QdiscList(link)
		if err != nil {
			return fmt.Errorf("%s: listing qdiscs: %w", port, err)
		}
		for _, qdisc := range qdiscs {
			if qdisc.Attrs().Parent == netlink.HANDLE_ROOT && qdisc.Type() == "netem" {
				if err := netlink.QdiscDel(qdisc); err != nil {
					return fmt.Errorf("%s: removing netem: %w", port, err)
				}
			}
		}
		return nil
	}
	netem := netlink.NewNetem(attrs, netlink.NetemQdiscAttrs{
		Latency: profile.DelayUS,
		Jitter:  profile.JitterUS,
		Loss:    profile.LossPercent,
		Rate64:  profile.RateBytes,
	})
	if err := netlink.QdiscReplace(netem); err != nil {
		return fmt.Errorf("%s: netem: %w", port, err)
	}
	return nil
}
