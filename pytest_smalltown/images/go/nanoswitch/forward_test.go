package main

import (
	"bufio"
	"net"
	"strconv"
	"testing"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// A proxy may lead to another port than the one it listens on (node i's debug
// service on 7837 behind uplink port 27837+i).
func TestForwardPortToAnotherPort(t *testing.T) {
	loopback := net.IPv4(127, 0, 0, 1).To4()
	echo, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		conn, err := echo.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		line, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Write([]byte("echo " + line))
	}()
	listen := freePort(t)
	if err := forwardPort(loopback, Proxy{Listen: listen, Dest: loopback, Port: echo.Addr().(*net.TCPAddr).Port}); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(listen)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("hello\n"))
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || reply != "echo hello\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
}
