//go:build linux

// Package netnstest builds, for a test, a small network of Linux network
// namespaces on one machine: one namespace per machine of the topology,
// each with one veth link to a bridge that lives in a "lan" namespace of
// its own, so the root namespace is left untouched. Processes run inside
// a namespace through `ip netns exec`, which execs them: the process id
// the test holds is the program's own. The test itself reaches them with
// sockets made in a namespace (NS.DialContext).
//
// Every name carries the test process's id and a sequence number, so
// runs never meet, and every namespace is deleted in t.Cleanup, which
// also removes its links. Cleanups run last-in first-out: start the
// processes after making the namespaces, and they are stopped before the
// namespaces go.
package netnstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Net is one test's network: a bridge in a namespace of its own, and the
// namespaces linked to it.
type Net struct {
	t      testing.TB
	ip     string // the ip command
	prefix string // of every name: "lmx<pid>n<seq>"
	lan    string // the bridge's namespace
	links  int    // veth pairs made
}

// seq tells apart the networks one test process makes (go test -count).
var seq atomic.Int64

// New makes the bridge's namespace and the bridge. The test is skipped,
// with a message saying why, when it does not run as root, when iproute2
// is missing, or when the kernel refuses a network namespace (a container
// without CAP_SYS_ADMIN, say).
func New(t testing.TB) *Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netnstest: network namespaces need root; run the test as root")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("netnstest: the ip command is not installed (Debian package iproute2)")
	}
	n := &Net{t: t, ip: ip, prefix: fmt.Sprintf("lmx%dn%d", os.Getpid(), seq.Add(1))}
	n.lan = n.prefix + "-lan"
	if out, err := exec.Command(ip, "netns", "add", n.lan).CombinedOutput(); err != nil {
		t.Skipf("netnstest: this machine cannot make a network namespace (ip netns add: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	n.cleanupNS(n.lan)
	n.run("-n", n.lan, "link", "add", n.bridge(), "type", "bridge")
	n.run("-n", n.lan, "link", "set", n.bridge(), "up")
	return n
}

// bridge is the bridge's name (inside the lan namespace).
func (n *Net) bridge() string { return "b" + n.prefix[3:] }

// run runs ip with args and fails the test when it fails.
func (n *Net) run(args ...string) {
	n.t.Helper()
	if out, err := exec.Command(n.ip, args...).CombinedOutput(); err != nil {
		n.t.Fatalf("netnstest: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// cleanupNS deletes the namespace when the test ends; the processes in it
// must be gone by then (their cleanups, registered later, run first).
func (n *Net) cleanupNS(name string) {
	n.t.Cleanup(func() {
		if out, err := exec.Command(n.ip, "netns", "del", name).CombinedOutput(); err != nil {
			n.t.Errorf("netnstest: ip netns del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
		}
	})
}

// NS is one namespace of the network.
type NS struct {
	// Name is the namespace's name, as `ip netns` knows it.
	Name string
	// Addrs are its addresses on the bridge, without prefix length; the
	// first is the one its sockets use unless told otherwise.
	Addrs []string

	ip string // the ip command
}

// Add makes a namespace for role ("client", "mx1"), links it to the
// bridge and gives its end of the link the addresses, in CIDR notation
// ("10.77.0.21/24"). Its loopback is up too.
func (n *Net) Add(role string, cidrs ...string) *NS {
	n.t.Helper()
	ns := &NS{Name: n.prefix + "-" + role, ip: n.ip}
	n.run("netns", "add", ns.Name)
	n.cleanupNS(ns.Name)
	n.links++
	// Link names have at most 15 bytes: "v" + pid + "n" + seq + "a|b" + number.
	here := fmt.Sprintf("v%sa%d", n.prefix[3:], n.links)
	there := fmt.Sprintf("v%sb%d", n.prefix[3:], n.links)
	n.run("-n", n.lan, "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns.Name)
	n.run("-n", n.lan, "link", "set", here, "master", n.bridge(), "up")
	for _, c := range cidrs {
		n.run("-n", ns.Name, "addr", "add", c, "dev", there)
		ns.Addrs = append(ns.Addrs, strings.SplitN(c, "/", 2)[0])
	}
	n.run("-n", ns.Name, "link", "set", there, "up")
	n.run("-n", ns.Name, "link", "set", "lo", "up")
	return ns
}

// Wrap is the command prefix that runs a program in the namespace.
func (ns *NS) Wrap() []string { return []string{ns.ip, "netns", "exec", ns.Name} }

// Command is argv to be run in the namespace; its process id is argv[0]'s
// (ip netns exec execs it).
func (ns *NS) Command(argv ...string) *exec.Cmd {
	w := append(ns.Wrap(), argv...)
	return exec.Command(w[0], w[1:]...)
}

// DialContext connects from the namespace, from its first address or
// whichever the kernel picks. It has the shape of go-redis' Dialer.
func (ns *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return ns.DialFrom(ctx, "", network, addr)
}

// DialFrom connects from the namespace, from the local address from (one
// of Addrs; "" lets the kernel choose).
//
// A socket belongs to the network namespace of the thread that made it,
// and stays there wherever it is used later. So the socket is made on a
// goroutine locked to an OS thread that first enters the namespace; the
// goroutine ends without unlocking, and Go then ends that thread rather
// than hand it, still in the namespace, to other goroutines. The dial
// itself (an address literal, one address) runs on that goroutine.
func (ns *NS) DialFrom(ctx context.Context, from, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := enter(ns.Name); err != nil {
			done <- result{err: err}
			return
		}
		c, err := d.DialContext(ctx, network, addr)
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// enter moves the calling thread into the named network namespace.
func enter(name string) error {
	fd, err := unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netnstest: open namespace %s: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netnstest: setns %s: %w", name, err)
	}
	return nil
}
