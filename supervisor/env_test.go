package supervisor

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWorkerEnvNotAWorker(t *testing.T) {
	t.Setenv(EnvRole, "")
	if _, ok, err := WorkerEnv(); ok || err != nil {
		t.Errorf("WorkerEnv without %s: ok %v err %v", EnvRole, ok, err)
	}
}

func TestWorkerEnvBadCount(t *testing.T) {
	t.Setenv(EnvRole, "worker")
	t.Setenv(EnvListenFDs, "two")
	if _, ok, err := WorkerEnv(); !ok || err == nil {
		t.Errorf("WorkerEnv with %s=two: ok %v err %v, want an error", EnvListenFDs, ok, err)
	}
}

// TestWorkerEnvBadListeners: a listener description that does not parse,
// or names another number of listeners than there are descriptors, is an
// error (the worker would serve a socket the wrong way).
func TestWorkerEnvBadListeners(t *testing.T) {
	t.Setenv(EnvRole, "worker")
	t.Setenv(EnvListenFDs, "2")
	for _, v := range []string{"smtp 127.0.0.1:25", "smtp 127.0.0.1:25,tls 127.0.0.1:465", "smtp127.0.0.1:25,smtps 127.0.0.1:465"} {
		t.Setenv(EnvListenSpec, v)
		if _, ok, err := WorkerEnv(); !ok || err == nil {
			t.Errorf("WorkerEnv with %s=%q: ok %v err %v, want an error", EnvListenSpec, v, ok, err)
		}
	}
}

// TestParseSpecs: every kind reads back as what specString wrote.
func TestParseSpecs(t *testing.T) {
	v := "smtp 127.0.0.1:25,smtps [::1]:465,proxy 10.0.0.1:2525"
	ls, err := parseSpecs(v)
	if err != nil || len(ls) != 3 || !ls[1].TLS || !ls[2].Proxy || ls[0].TLS || ls[0].Proxy || ls[1].Addr != "[::1]:465" {
		t.Fatalf("parseSpecs(%q) = %+v, %v", v, ls, err)
	}
	if got := strings.Join(specStrings(ls), ","); got != v {
		t.Errorf("round trip: %q, want %q", got, v)
	}
}

// TestWorkerEnvReady: the contract is read, and Ready writes READY to the
// pipe the supervisor reads.
func TestWorkerEnvReady(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fd, err := unix.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvRole, "worker")
	t.Setenv(EnvWorkerID, "3")
	t.Setenv(EnvGeneration, "5")
	t.Setenv(EnvListenFDs, "0")
	t.Setenv(EnvReadyFD, strconv.Itoa(fd))
	wk, ok, err := WorkerEnv()
	if !ok || err != nil || wk.ID != 3 || wk.Generation != 5 || len(wk.Listeners) != 0 {
		t.Fatalf("WorkerEnv = %+v %v %v", wk, ok, err)
	}
	wk.Ready()
	w.Close()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, _ := r.Read(buf)
	if string(buf[:n]) != "READY\n" {
		t.Errorf("ready pipe got %q", buf[:n])
	}
}

func TestSystemdListenersOtherPID(t *testing.T) {
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()+1))
	t.Setenv("LISTEN_FDS", "1")
	if fs, _ := SystemdListeners(); fs != nil {
		t.Errorf("sockets meant for another pid were taken: %v", fs)
	}
	if os.Getenv("LISTEN_FDS") != "1" {
		t.Error("LISTEN_FDS of another process was cleared")
	}
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	t.Setenv("LISTEN_FDS", "0")
	if fs, _ := SystemdListeners(); fs != nil {
		t.Errorf("LISTEN_FDS=0 gave %v", fs)
	}
}

// TestNotifyAbstract: an "@" NOTIFY_SOCKET is the abstract namespace.
func TestNotifyAbstract(t *testing.T) {
	name := fmt.Sprintf("@loopmx-test-%d", os.Getpid())
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	if sent, err := Notify("READY=1"); !sent || err != nil {
		t.Fatalf("Notify: %v %v", sent, err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("got %q %v", buf[:n], err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Errorf("Notify without a socket: %v %v", sent, err)
	}
}
