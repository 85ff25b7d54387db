package supervisor

import (
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Observer hears what the supervisor does, for the metrics endpoint
// (main wires internal/metrics to it). Its methods are called from the
// supervisor's main goroutine and must not block.
type Observer interface {
	// WorkerStarted tells that a worker process started in slot (or was
	// adopted after a USR2); channel is the supervisor's end of its
	// metrics channel, which the observer takes over.
	WorkerStarted(slot, pid int, channel *os.File)
	// WorkerCrashed tells that a worker exited without being asked to;
	// WorkerRestarted that its replacement started.
	WorkerCrashed(slot, pid int)
	WorkerRestarted(slot int)
	// Rollout tells how a reload or an upgrade (what) ended.
	Rollout(what string, ok bool)
	// State gives the workers by state, the generation, how many
	// binaries this supervisor has run in place (1, +1 per USR2), and
	// whether it is ready: every slot has a ready worker and no stop is
	// under way.
	State(ready, starting, draining, generation, images int, isReady bool)
	// Sockets lists the listening sockets the supervisor holds, each
	// time the set changes.
	Sockets(s []Socket)
}

// Socket is one listening socket the supervisor holds.
type Socket struct {
	Listener string // its address
	Socket   string // "shared", or the worker slot of a reuseport socket
	FD       int
}

// EnvMetricsFD names the worker's end of its metrics channel, a Unix
// stream socket: the supervisor asks, the worker answers with its
// metrics (internal/metrics). Absent when metrics_listen is empty.
const EnvMetricsFD = "LOOPMX_METRICS_FD"

// MetricsChannel returns the worker's end of its metrics channel, or nil.
func (w Worker) MetricsChannel() *os.File { return w.metrics }

// metricsPair makes the socket pair of a worker's metrics channel: the
// supervisor's end (close-on-exec) and the worker's.
func metricsPair() (sup, worker *os.File, err error) {
	// Under the fork lock, as the os package makes its descriptors, so
	// that no other fork inherits them before they are close-on-exec.
	syscall.ForkLock.RLock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "metrics"), os.NewFile(uintptr(fds[1]), "metrics"), nil
}

// observe tells the observer the state of the workers.
func (s *sup) observe() {
	o := s.opts.Observer
	if o == nil {
		return
	}
	var ready, starting, draining int
	for _, p := range s.procs {
		switch {
		case p.retiring:
			draining++
		case p.ready:
			ready++
		default:
			starting++
		}
	}
	isReady := s.announced && s.stopSig == nil
	for _, sl := range s.slots {
		if sl.cur == nil || !sl.cur.ready {
			isReady = false
		}
	}
	o.State(ready, starting, draining, s.gen, s.images, isReady)
}

// publishSockets tells the observer the sockets held now.
func (s *sup) publishSockets() {
	o := s.opts.Observer
	if o == nil || s.socks == nil {
		return
	}
	k := s.socks
	var out []Socket
	add := func(fds []int, name string) {
		for i, fd := range fds {
			if i < len(k.specs) {
				out = append(out, Socket{Listener: k.specs[i].Addr, Socket: name, FD: fd})
			}
		}
	}
	add(k.shared, "shared")
	for _, id := range k.slotIDs() {
		add(k.slots[id], strconv.Itoa(id))
	}
	o.Sockets(out)
}

// rolledOut tells the observer how a reload or an upgrade ended.
func (s *sup) rolledOut(what string, ok bool) {
	if o := s.opts.Observer; o != nil {
		o.Rollout(what, ok)
	}
	s.observe()
}
