package main

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// forwardPort accepts TCP connections on listenIP:p.Listen and splices each
// to p.Dest:p.Port. A userspace proxy (rather than DNAT) keeps working whatever the
// node's routing looks like, needs no conntrack tuning, and makes the node see
// the switch (10.1.0.1) as the peer, which is on its own subnet.
//
// The listener is bound before this returns, so the caller can announce
// readiness truthfully. When the target is not up yet the client connection is
// closed at once; clients are expected to retry (QEMU's hostfwd accepts on the
// host side before the guest does, so clients see connect-then-EOF).
func forwardPort(listenIP net.IP, p Proxy) error {
	port := p.Listen
	ln, err := net.Listen("tcp4", net.JoinHostPort(listenIP.String(), strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listening on port %d: %w", port, err)
	}
	dest := net.JoinHostPort(p.Dest.String(), strconv.Itoa(p.Port))
	var lastLog time.Time
	var logMu sync.Mutex
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				logf("forward %d: accept: %v", port, err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			go func() {
				defer client.Close()
				upstream, err := net.DialTimeout("tcp4", dest, 10*time.Second)
				if err != nil {
					// Clients poll while a node boots; log at most every 10 s.
					logMu.Lock()
					if time.Since(lastLog) > 10*time.Second {
						logf("forward %d: %v", port, err)
						lastLog = time.Now()
					}
					logMu.Unlock()
					return
				}
				defer upstream.Close()
				splice(client.(*net.TCPConn), upstream.(*net.TCPConn))
			}()
		}
	}()
	return nil
}

// splice copies both ways, passing half-closes through so that protocols that
// signal end-of-request by shutting down their write side work. An error (as
// opposed to a clean EOF) on either side tears down both connections, so a
// reset client cannot leave a half-open proxy behind.
func splice(a, b *net.TCPConn) {
	var wg sync.WaitGroup
	pipe := func(dst, src *net.TCPConn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			a.Close()
			b.Close()
			return
		}
		dst.CloseWrite()
	}
	wg.Add(2)
	go pipe(b, a)
	go pipe(a, b)
	wg.Wait()
}
