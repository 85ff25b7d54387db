package main

import (
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT from linux/in.h, which the
// syscall package does not name. With it, binding a source address leaves
// the port to connect(), which may then reuse a port for another
// destination; without it, every bind takes a port of its own.
const ipBindAddressNoPort = 24

// maxSources bounds -sources so that the source addresses stay in
// 127.0.0.2 .. 127.0.0.251.
const maxSources = 250

// dialer opens connections to one loopback target, taking turns over a set of
// source addresses (127.0.0.2, 127.0.0.3, ...) so that one run can hold more
// connections, and leave more TIME_WAIT behind, than the ephemeral ports of
// a single address allow.
type dialer struct {
	addr string
	ds   []net.Dialer
	next atomic.Uint64
}

// checkLoopback resolves addr and refuses anything that is not a loopback
// address: this tool sends load, and load belongs on this machine only.
func checkLoopback(addr string) (*net.TCPAddr, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", addr, err)
	}
	if ta.IP == nil || !ta.IP.IsLoopback() {
		return nil, fmt.Errorf("target %q: not a loopback address; loopmx-bench only loads servers on this machine", addr)
	}
	return ta, nil
}

// newDialer returns a dialer for target using the given number of source
// addresses; 0 lets the kernel choose (always the case for IPv6 ::1).
func newDialer(target *net.TCPAddr, sources int, timeout time.Duration) *dialer {
	d := &dialer{addr: target.String()}
	if target.IP.To4() == nil || sources <= 0 {
		d.ds = []net.Dialer{{Timeout: timeout, KeepAlive: -1}}
		return d
	}
	for i := range min(sources, maxSources) {
		src := net.IPv4(127, 0, 0, byte(2+i))
		d.ds = append(d.ds, net.Dialer{
			Timeout:   timeout,
			KeepAlive: -1, // four setsockopt calls a session saved; sessions are short
			LocalAddr: &net.TCPAddr{IP: src},
			Control:   bindNoPort,
		})
	}
	return d
}

// dial opens one connection from the next source address in turn.
func (d *dialer) dial() (net.Conn, error) {
	i := d.next.Add(1) % uint64(len(d.ds))
	return d.ds[i].Dial("tcp", d.addr)
}

// bindNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket before it is bound.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
