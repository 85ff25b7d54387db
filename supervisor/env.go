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
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Environment variables of the supervisor/worker contract.
const (
	EnvRole       = "LOOPMX_ROLE"       // "worker" in a worker process
	EnvWorkerID   = "LOOPMX_WORKER_ID"  // 1..nodes
	EnvGeneration = "LOOPMX_GENERATION" // bumped by every reload
	EnvListenFDs  = "LOOPMX_LISTEN_FDS" // listeners at fds 3.., in smtp.ini listen order
	EnvReadyFD    = "LOOPMX_READY_FD"   // the worker writes "READY\n" there once it accepts
)

// Worker describes this process when a supervisor started it.
type Worker struct {
	ID         int
	Generation int
	Listeners  []*os.File
	ready      *os.File
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
	return w, true, nil
}

// Ready tells the supervisor that this worker accepts connections.
func (w Worker) Ready() {
	if w.ready != nil {
		w.ready.Write([]byte("READY\n"))
		w.ready.Close()
	}
}

// SystemdListeners returns the sockets systemd passed by socket activation
// (LISTEN_FDS, LISTEN_PID; sd_listen_fds(3)), or nil.
func SystemdListeners() []*os.File {
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	files := make([]*os.File, 0, n)
	for i := 0; i < n; i++ {
		files = append(files, os.NewFile(uintptr(3+i), "systemd-listener"))
	}
	return files
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
