// Package supervisor keeps loopmx worker processes alive: it opens every
// listener once, starts `nodes` workers of the same binary, hands them the
// listeners by file descriptor, restarts a worker that dies, and turns
// signals into drains, rolling reloads and binary upgrades. It also speaks
// systemd's notify and socket-activation protocols.
//
// The contract between the supervisor and a worker is a few environment
// variables (see WorkerEnv): the worker is the same binary run with the
// same config directory.
package supervisor

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/config"
	"loopmx/internal/ticketkeys"
)

// Environment variables of the supervisor/worker contract.
const (
	EnvRole       = "LOOPMX_ROLE"       // "worker" in a worker process
	EnvWorkerID   = "LOOPMX_WORKER_ID"  // 1..nodes
	EnvGeneration = "LOOPMX_GENERATION" // bumped by every reload
	EnvListenFDs  = "LOOPMX_LISTEN_FDS" // listeners at fds 3.., in the order of config.Main.Listeners
	EnvListenSpec = "LOOPMX_LISTEN"     // what each of them is: "smtp 127.0.0.1:25,smtps [::]:465,proxy 10.0.0.1:25"
	EnvReadyFD    = "LOOPMX_READY_FD"   // the worker writes "READY\n" there once it accepts
	// EnvTicketKeysFD is the descriptor of the session-ticket keys every
	// worker shares (ticketkeys.Share), right after the ready pipe.
	EnvTicketKeysFD = "LOOPMX_TICKET_KEYS_FD"
)

// Worker describes this process when a supervisor started it.
type Worker struct {
	ID         int
	Generation int
	Listeners  []*os.File
	// Specs say what each of Listeners is (address, implicit TLS, PROXY
	// header), as the supervisor bound them or systemd named them.
	Specs []config.Listener
	// TicketKeys is the supervisor's set of session-ticket keys, nil when
	// it passed none.
	TicketKeys *ticketkeys.Share
	ready      *os.File
	metrics    *os.File
}

// WorkerEnv reads the worker contract from the environment. ok is false
// when this process is not a worker.
//
// A worker also watches its supervisor: when the supervisor is gone (it
// was killed with SIGKILL, say), the worker sends itself SIGTERM and
// drains, instead of holding the listening sockets as an orphan that
// would keep a new supervisor from binding them.
func WorkerEnv() (w Worker, ok bool, err error) {
	if os.Getenv(EnvRole) != "worker" {
		return Worker{}, false, nil
	}
	go watchParent(os.Getppid(), time.Second)
	w.ID, _ = strconv.Atoi(os.Getenv(EnvWorkerID))
	w.Generation, _ = strconv.Atoi(os.Getenv(EnvGeneration))
	n, err := strconv.Atoi(os.Getenv(EnvListenFDs))
	if err != nil || n < 0 {
		return Worker{}, true, fmt.Errorf("supervisor: %s=%q is not a count", EnvListenFDs, os.Getenv(EnvListenFDs))
	}
	if v := os.Getenv(EnvListenSpec); v != "" {
		if w.Specs, err = parseSpecs(v); err != nil {
			return Worker{}, true, err
		}
		if len(w.Specs) != n {
			return Worker{}, true, fmt.Errorf("supervisor: %s names %d listeners for %d descriptors", EnvListenSpec, len(w.Specs), n)
		}
	}
	for i := 0; i < n; i++ {
		w.Listeners = append(w.Listeners, os.NewFile(uintptr(3+i), "listener"))
	}
	if s := os.Getenv(EnvReadyFD); s != "" {
		fd, err := strconv.Atoi(s)
		if err != nil {
			return Worker{}, true, fmt.Errorf("supervisor: %s=%q is not a descriptor", EnvReadyFD, s)
		}
		w.ready = os.NewFile(uintptr(fd), "ready")
	}
	if s := os.Getenv(EnvTicketKeysFD); s != "" {
		fd, err := strconv.Atoi(s)
		if err != nil || fd < 3 {
			return Worker{}, true, fmt.Errorf("supervisor: %s=%q is not a descriptor", EnvTicketKeysFD, s)
		}
		w.TicketKeys = ticketkeys.ShareFromFD(fd)
	}
	if s := os.Getenv(EnvMetricsFD); s != "" {
		fd, err := strconv.Atoi(s)
		if err != nil || fd < 3 {
			return Worker{}, true, fmt.Errorf("supervisor: %s=%q is not a descriptor", EnvMetricsFD, s)
		}
		w.metrics = os.NewFile(uintptr(fd), "metrics")
	}
	return w, true, nil
}

// specKinds are the words of EnvListenSpec for what a listener speaks.
const (
	kindSMTP  = "smtp"
	kindSMTPS = "smtps"
	kindProxy = "proxy"
)

// specString describes one listener as EnvListenSpec and the log do:
// "smtps 127.0.0.1:465".
func specString(l config.Listener) string {
	switch {
	case l.TLS:
		return kindSMTPS + " " + l.Addr
	case l.Proxy:
		return kindProxy + " " + l.Addr
	}
	return kindSMTP + " " + l.Addr
}

// specStrings describes every listener of ls.
func specStrings(ls []config.Listener) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = specString(l)
	}
	return out
}

// parseSpecs reads the value of EnvListenSpec.
func parseSpecs(v string) ([]config.Listener, error) {
	var out []config.Listener
	for item := range strings.SplitSeq(v, ",") {
		kind, addr, ok := strings.Cut(item, " ")
		l := config.Listener{Addr: addr}
		switch kind {
		case kindSMTP:
		case kindSMTPS:
			l.TLS = true
		case kindProxy:
			l.Proxy = true
		default:
			ok = false
		}
		if !ok || addr == "" {
			return nil, fmt.Errorf("supervisor: %s: %q is not \"smtp|smtps|proxy ADDRESS\"", EnvListenSpec, item)
		}
		out = append(out, l)
	}
	return out, nil
}

// Ready tells the supervisor that this worker accepts connections.
func (w Worker) Ready() {
	if w.ready != nil {
		w.ready.Write([]byte("READY\n"))
		w.ready.Close()
	}
}

// SystemdListeners returns the sockets systemd passed by socket activation
// (LISTEN_FDS, LISTEN_PID; sd_listen_fds(3)), or nil, with what each
// speaks: the name systemd gives it (FileDescriptorName= of its socket
// unit, in LISTEN_FDNAMES) is "smtps" for implicit TLS, "proxy" for a
// PROXY header first, and anything else for plain SMTP. The addresses of
// smtp.ini play no part.
func SystemdListeners() ([]*os.File, []config.Listener) {
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil, nil
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	files := make([]*os.File, 0, n)
	specs := make([]config.Listener, 0, n)
	for i := 0; i < n; i++ {
		files = append(files, os.NewFile(uintptr(3+i), "systemd-listener"))
		l := config.Listener{Addr: localAddr(3 + i)}
		if i < len(names) {
			l.TLS = names[i] == kindSMTPS
			l.Proxy = names[i] == kindProxy
		}
		specs = append(specs, l)
	}
	return files, specs
}

// localAddr is the address socket fd is bound to, or "?" when it has none
// (it is only shown in logs and errors).
func localAddr(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "?"
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrUnix:
		return a.Name
	}
	return "?"
}

// Notify sends a state line to systemd (sd_notify(3)) when NOTIFY_SOCKET
// is set; it reports false when there is no socket to tell.
func Notify(state string) (bool, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return false, nil
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("supervisor: notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("supervisor: notify: %w", err)
	}
	return true, nil
}

// watchParent sends this process SIGTERM once its parent is no longer
// ppid. A USR2 upgrade keeps the supervisor's pid, so it does not count.
func watchParent(ppid int, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if os.Getppid() != ppid {
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
	}
}
