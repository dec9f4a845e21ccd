package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The fault channel: a virtio-serial port whose host end is a UNIX socket in
// the cluster's private work directory. No node has a device on it and no
// address leads to it, so guests cannot send faults (nor reach the fence's
// other side through it); on the host only the cluster's owner can open it.
//
// The host writes one JSON request per line and reads one JSON reply per line:
//
//	{"op": "partition", "groups": [[0], [1, 2]]}
//	{"op": "heal_partition"}
//	{"op": "degrade", "node": 1, "link": {"delay_us": 200000, "loss_percent": 5}}
//	{"op": "restore", "node": 1}
//	{"op": "heal"}
//	{"op": "status"}
//
//	{"ok": true, "status": {"partition": [[0], [1, 2]], "degraded": {"1": {...}}}}
//	{"ok": false, "error": "node 3 ..."}

// controlRequest is one line from the host.
type controlRequest struct {
	Op     string       `json:"op"`
	Groups [][]int      `json:"groups,omitempty"`
	Node   int          `json:"node"`
	Link   *LinkProfile `json:"link,omitempty"`
}

// controlReply is one line to the host: the status after the request, or why it failed.
type controlReply struct {
	OK     bool         `json:"ok"`
	Error  string       `json:"error,omitempty"`
	Status *FaultStatus `json:"status,omitempty"`
}

// handle runs one request line and returns its reply line.
func (f *Faults) handle(line []byte) []byte {
	var request controlRequest
	decoder := json.NewDecoder(bytes.NewReader(line))
	decoder.DisallowUnknownFields()
	err := decoder.Decode(&request)
	if err == nil {
		err = f.run(request)
	} else {
		err = fmt.Errorf("not a request: %v", err)
	}
	reply := controlReply{OK: err == nil}
	if err != nil {
		reply.Error = err.Error()
	} else {
		status := f.Status()
		reply.Status = &status
	}
	out, _ := json.Marshal(reply)
	return append(out, '\n')
}

func (f *Faults) run(request controlRequest) error {
	switch request.Op {
	case "partition":
		return f.Partition(request.Groups)
	case "heal_partition":
		return f.HealPartition()
	case "degrade":
		if request.Link == nil {
			return fmt.Errorf("degrade needs a link profile")
		}
		return f.Degrade(request.Node, *request.Link)
	case "restore":
		return f.Restore(request.Node)
	case "heal":
		return f.Heal()
	case "status":
		return nil
	}
	return fmt.Errorf("unknown op %q", request.Op)
}

// findVirtioPort is the device of the virtio-serial port called name
// (there is no udev here to make /dev/virtio-ports/<name>).
func findVirtioPort(name string) (string, error) {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, file := range names {
		data, err := os.ReadFile(file)
		if err == nil && strings.TrimSpace(string(data)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(file)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q (found %d ports)", name, len(names))
}

// serveControl answers the host's requests on the port called name, forever.
//
// While no host end is connected a read returns at once with nothing (the
// virtio console driver's "host not connected"), so the loop sleeps between
// empty reads: a request waits at most controlPoll for the switch to see it.
func serveControl(name string, faults *Faults) error {
	device, err := findVirtioPort(name)
	if err != nil {
		return err
	}
	port, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening the fault channel: %w", err)
	}
	go func() {
		var pending []byte
		buffer := make([]byte, 4096)
		for {
			n, err := port.Read(buffer)
			if n == 0 || err != nil {
				time.Sleep(controlPoll)
				continue
			}
			pending = append(pending, buffer[:n]...)
			for {
				end := bytes.IndexByte(pending, '\n')
				if end < 0 {
					break
				}
				line := pending[:end]
				pending = pending[end+1:]
				if _, err := port.Write(faults.handle(line)); err != nil {
					logf("warning: fault channel: answering: %v", err)
				}
			}
		}
	}()
	return nil
}

const controlPoll = 100 * time.Millisecond
