package supervisor

import (
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"loopmx/config"
)

// sockets holds the listening sockets the supervisor owns, as raw
// descriptors. It keeps its own copy of every socket for as long as it
// runs, so a worker that dies or drains never closes one: connections
// wait in the accept queue for the next worker instead of being refused.
//
// Raw descriptors rather than *os.File: an *os.File made from a
// non-blocking socket is added to the runtime's poller, which would wake
// the supervisor for every incoming connection it never accepts.
type sockets struct {
	// specs are the listeners the sockets are bound to, in the order of
	// config.Main.Listeners (listen, smtps_listen, proxy_listen) when they
	// were bound, or systemd's as SystemdListeners describes them; every
	// socket set below follows it.
	specs     []config.Listener
	backlog   int
	reuseport bool // one socket set per worker slot
	systemd   bool // from socket activation: the addresses in smtp.ini are not used

	shared []int         // shared policy: every worker gets these
	slots  map[int][]int // reuseport policy: worker id -> that worker's sockets

	open func(addr string, backlog int, reuseport bool) (*os.File, error)
}

// openSockets takes systemd's sockets when there are any, and otherwise
// binds every listener of specs once (shared) or once per worker
// (reuseport).
func openSockets(specs []config.Listener, backlog int, reuseport bool, nodes int,
	open func(string, int, bool) (*os.File, error), fromSystemd []*os.File, systemdSpecs []config.Listener) (*sockets, error) {
	k := &sockets{specs: slices.Clone(specs), backlog: backlog, reuseport: reuseport, slots: map[int][]int{}, open: open}
	if len(fromSystemd) > 0 {
		// systemd made one socket per ListenStream=; they cannot be
		// multiplied per worker, so every worker shares them.
		k.systemd, k.reuseport, k.specs = true, false, systemdSpecs
		for _, f := range fromSystemd {
			fd, err := rawFD(f)
			if err != nil {
				k.close()
				return nil, fmt.Errorf("supervisor: socket from systemd: %w", err)
			}
			k.shared = append(k.shared, fd)
		}
		return k, nil
	}
	if !reuseport {
		fds, err := k.bind(false)
		if err != nil {
			return nil, err
		}
		k.shared = fds
		return k, nil
	}
	for id := 1; id <= nodes; id++ {
		if _, err := k.forSlot(id); err != nil {
			k.close()
			return nil, err
		}
	}
	return k, nil
}

// bind opens one socket per listener, in the order of specs.
func (k *sockets) bind(reuseport bool) ([]int, error) {
	var fds []int
	for _, l := range k.specs {
		f, err := k.open(l.Addr, k.backlog, reuseport)
		if err == nil {
			var fd int
			fd, err = rawFD(f)
			if err == nil {
				fds = append(fds, fd)
				continue
			}
		}
		closeAll(fds)
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	return fds, nil
}

// forSlot returns the sockets worker id accepts on, opening that
// worker's SO_REUSEPORT set first when it has none.
func (k *sockets) forSlot(id int) ([]int, error) {
	if !k.reuseport {
		return k.shared, nil
	}
	if fds, ok := k.slots[id]; ok {
		return fds, nil
	}
	fds, err := k.bind(true)
	if err != nil {
		return nil, err
	}
	k.slots[id] = fds
	return fds, nil
}

// closeSlot closes worker id's own sockets (reuseport only), so that the
// kernel stops hashing new connections to a queue nobody accepts from.
func (k *sockets) closeSlot(id int) bool {
	fds, ok := k.slots[id]
	if !ok {
		return false
	}
	closeAll(fds)
	delete(k.slots, id)
	return true
}

// setBacklog applies a new listen(2) backlog to the open sockets; Linux
// lets listen be called again on a listening socket for that.
func (k *sockets) setBacklog(n int) error {
	k.backlog = n
	for _, fd := range k.all() {
		if err := unix.Listen(fd, n); err != nil {
			return fmt.Errorf("supervisor: backlog %d: %w", n, err)
		}
	}
	return nil
}

// all returns every descriptor held.
func (k *sockets) all() []int {
	fds := slices.Clone(k.shared)
	for _, id := range k.slotIDs() {
		fds = append(fds, k.slots[id]...)
	}
	return fds
}

func (k *sockets) slotIDs() []int {
	ids := make([]int, 0, len(k.slots))
	for id := range k.slots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (k *sockets) close() {
	closeAll(k.shared)
	k.shared = nil
	for id := range k.slots {
		k.closeSlot(id)
	}
}

// rawFD turns f into a plain descriptor (close-on-exec, outside the
// runtime's poller) and closes f.
func rawFD(f *os.File) (int, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	return nfd, nil
}

// isListener reports whether fd is a listening socket.
func isListener(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	return err == nil && v == 1
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
