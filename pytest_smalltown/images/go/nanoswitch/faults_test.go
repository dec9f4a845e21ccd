package main

import (
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
)

// recordingFaults is a faultApplier that remembers what the kernel would have been told.
type recordingFaults struct {
	drops [][2]string
	links map[string]*LinkProfile
	fail  error
}

func (r *recordingFaults) setDrops(pairs [][2]string) error {
	if r.fail != nil {
		return r.fail
	}
	r.drops = pairs
	return nil
}

func (r *recordingFaults) setLink(port string, profile *LinkProfile) error {
	if r.fail != nil {
		return r.fail
	}
	r.links[port] = profile
	return nil
}

func newTestFaults(nodes int) (*Faults, *recordingFaults) {
	var macs []net.HardwareAddr
	for i := 0; i < nodes; i++ {
		macs = append(macs, net.HardwareAddr{0x02, 0x72, 0x82, 0, 0, byte(i)})
	}
	name := func(mac net.HardwareAddr) (string, error) { return fmt.Sprintf("eth%d", mac[5]+1), nil }
	recorder := &recordingFaults{links: map[string]*LinkProfile{}}
	return newFaults(macs, name, recorder), recorder
}

func ask(t *testing.T, f *Faults, line string) controlReply {
	t.Helper()
	out := f.handle([]byte(line))
	if !strings.HasSuffix(string(out), "\n") {
		t.Fatalf("reply %q is not one line", out)
	}
	var reply controlReply
	if err := json.Unmarshal(out, &reply); err != nil {
		t.Fatalf("reply %q: %v", out, err)
	}
	return reply
}

func TestAPartitionDropsEveryPairAcrossGroupsBothWays(t *testing.T) {
	f, kernel := newTestFaults(3)
	reply := ask(t, f, `{"op": "partition", "groups": [[0], [1, 2]]}`)
	if !reply.OK {
		t.Fatal(reply.Error)
	}
	want := [][2]string{{"eth1", "eth2"}, {"eth1", "eth3"}, {"eth2", "eth1"}, {"eth3", "eth1"}}
	if !reflect.DeepEqual(kernel.drops, want) {
		t.Errorf("drops %v, want %v (nodes 1 and 2 keep each other)", kernel.drops, want)
	}
	if !reflect.DeepEqual(reply.Status.Partition, [][]int{{0}, {1, 2}}) {
		t.Errorf("status %v", reply.Status.Partition)
	}
	if reply := ask(t, f, `{"op": "heal_partition"}`); !reply.OK || reply.Status.Partition != nil || kernel.drops != nil {
		t.Errorf("after heal: %+v, drops %v", reply, kernel.drops)
	}
}

func TestABadPartitionIsRefusedAndChangesNothing(t *testing.T) {
	for _, tc := range []struct{ groups, why string }{
		{`[[0, 1]]`, "at least two groups"},
		{`[[0], []]`, "group 1 of the partition is empty"},
		{`[[0], [0, 1]]`, "node 0 is in two groups"},
		{`[[0], [5]]`, "there is no node 5"},
	} {
		f, kernel := newTestFaults(2)
		reply := ask(t, f, `{"op": "partition", "groups": `+tc.groups+`}`)
		if reply.OK || !strings.Contains(reply.Error, tc.why) {
			t.Errorf("%s: %+v, want an error with %q", tc.groups, reply, tc.why)
		}
		if kernel.drops != nil || f.Status().Partition != nil {
			t.Errorf("%s: a refused partition changed the kernel (%v) or the state", tc.groups, kernel.drops)
		}
	}
}

func TestASecondPartitionMustWaitForTheHealOfTheFirst(t *testing.T) {
	f, _ := newTestFaults(3)
	ask(t, f, `{"op": "partition", "groups": [[0], [1]]}`)
	reply := ask(t, f, `{"op": "partition", "groups": [[2], [1]]}`)
	if reply.OK || !strings.Contains(reply.Error, "a partition is on already ([0] | [1])") {
		t.Errorf("%+v", reply)
	}
}

func TestADegradedLinkIsNetemOnThatNodesPortUntilRestored(t *testing.T) {
	f, kernel := newTestFaults(2)
	reply := ask(t, f, `{"op": "degrade", "node": 1, "link": {"delay_us": 200000, "loss_percent": 5}}`)
	if !reply.OK {
		t.Fatal(reply.Error)
	}
	want := LinkProfile{DelayUS: 200000, LossPercent: 5}
	if got := kernel.links["eth2"]; got == nil || *got != want {
		t.Errorf("eth2 got %v, want %v", got, want)
	}
	if _, touched := kernel.links["eth1"]; touched {
		t.Error("node 0's port was touched")
	}
	if reply.Status.Degraded["1"] != want {
		t.Errorf("status %v", reply.Status.Degraded)
	}
	if again := ask(t, f, `{"op": "degrade", "node": 1, "link": {"delay_us": 1}}`); again.OK {
		t.Error("a second degrade of one link was taken")
	}
	reply = ask(t, f, `{"op": "restore", "node": 1}`)
	if !reply.OK || kernel.links["eth2"] != nil || len(reply.Status.Degraded) != 0 {
		t.Errorf("after restore: %+v, eth2 %v", reply, kernel.links["eth2"])
	}
}

func TestHealEndsEveryFault(t *testing.T) {
	f, kernel := newTestFaults(3)
	ask(t, f, `{"op": "partition", "groups": [[0], [1, 2]]}`)
	ask(t, f, `{"op": "degrade", "node": 2, "link": {"rate_bytes_per_s": 125000}}`)
	reply := ask(t, f, `{"op": "heal"}`)
	if !reply.OK || reply.Status.Partition != nil || len(reply.Status.Degraded) != 0 {
		t.Errorf("%+v", reply)
	}
	if kernel.drops != nil || kernel.links["eth3"] != nil {
		t.Errorf("kernel still has drops %v, eth3 %v", kernel.drops, kernel.links["eth3"])
	}
}

func TestBadRequestsAreAnsweredWithTheReason(t *testing.T) {
	f, _ := newTestFaults(2)
	for line, why := range map[string]string{
		`{"op": "explode"}`:                                           `unknown op "explode"`,
		`not json`:                                                    "not a request",
		`{"op": "status", "nodes": 1}`:                                "unknown field",
		`{"op": "degrade", "node": 0}`:                                "needs a link profile",
		`{"op": "degrade", "node": 0, "link": {}}`:                    "needs a delay, loss or rate",
		`{"op": "degrade", "node": 0, "link": {"jitter_us": 5}}`:      "jitter needs a delay",
		`{"op": "degrade", "node": 0, "link": {"loss_percent": 101}}`: "not between 0 and 100",
	} {
		if reply := ask(t, f, line); reply.OK || !strings.Contains(reply.Error, why) {
			t.Errorf("%s: %+v, want %q", line, reply, why)
		}
	}
}

func TestAKernelErrorIsTheReplyAndTheStateStaysAsItWas(t *testing.T) {
	f, kernel := newTestFaults(2)
	kernel.fail = fmt.Errorf("nftables: no such family")
	if reply := ask(t, f, `{"op": "partition", "groups": [[0], [1]]}`); reply.OK || !strings.Contains(reply.Error, "no such family") {
		t.Errorf("%+v", reply)
	}
	if f.Status().Partition != nil {
		t.Error("the state says partitioned although the kernel refused")
	}
}
