package loop

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// engine is the event loops: on Linux every plain connection lives on one.
type engine struct {
	loops []*eventLoop
}

// openListeners takes the inherited listening sockets, or binds the
// configured addresses, in the order of opts.Specs.
func (s *Server) openListeners() error {
	opts := &s.opts
	if len(opts.Listeners) > 0 {
		for _, f := range opts.Listeners {
			fd, err := unix.Dup(int(f.Fd()))
			f.Close()
			if err != nil {
				return fmt.Errorf("loop: inherited listener: %w", err)
			}
			unix.CloseOnExec(fd)
			if err := unix.SetNonblock(fd, true); err != nil {
				unix.Close(fd)
				return fmt.Errorf("loop: inherited listener: %w", err)
			}
			s.listeners = append(s.listeners, listener{fd: fd})
		}
		if len(s.listeners) != len(opts.Specs) {
			return fmt.Errorf("loop: %d inherited listeners for %d configured addresses (listen, smtps_listen, proxy_listen, in that order)", len(s.listeners), len(opts.Specs))
		}
	} else {
		for _, sp := range opts.Specs {
			fd, err := ListenFD(sp.Addr, opts.Backlog, false)
			if err != nil {
				return err
			}
			s.listeners = append(s.listeners, listener{fd: fd})
		}
	}
	for i := range s.listeners {
		l := &s.listeners[i]
		l.kind = listenKind{TLS: opts.Specs[i].TLS, Proxy: opts.Specs[i].Proxy}
		tuneListener(l.fd, opts.TCPKeepalive, opts.RecvBuffer, opts.SendBuffer)
		l.addr = localAddr(l.fd)
	}
	return nil
}

// ListenFD opens a non-blocking listening socket on a ("host:port"), with
// SO_REUSEPORT when reuseport is set (one socket per worker process).
func ListenFD(a string, backlog int, reuseport bool) (int, error) {
	ap, err := resolveListen(a)
	if err != nil {
		return -1, fmt.Errorf("loop: listen %q: %w", a, err)
	}
	fd, err := listenTCP(ap, backlog, reuseport)
	if err != nil {
		return -1, fmt.Errorf("loop: listen %s: %w", a, err)
	}
	return fd, nil
}

// ListenFile is ListenFD wrapped in an *os.File, for a supervisor that
// hands listeners to worker processes.
func ListenFile(a string, backlog int, reuseport bool) (*os.File, error) {
	fd, err := ListenFD(a, backlog, reuseport)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "listen "+a), nil
}

// closeListeners closes the listening sockets once. The table stays: the
// loops no longer look at it once they have drained.
func (s *Server) closeListeners() {
	if s.lstClosed {
		return
	}
	s.lstClosed = true
	for _, l := range s.listeners {
		unix.Close(l.fd)
	}
}

// Start launches the event loops. The process gets one extra P per loop
// because a loop waiting in a raw epoll_wait keeps its P (see sys_linux.go).
func (s *Server) Start() error {
	if runtime.GOMAXPROCS(0) < runtime.NumCPU()+s.opts.Loops {
		runtime.GOMAXPROCS(runtime.NumCPU() + s.opts.Loops)
	}
	for i := 0; i < s.opts.Loops; i++ {
		el, err := newEventLoop(s, i)
		if err != nil {
			return err
		}
		s.engine.loops = append(s.engine.loops, el)
	}
	for _, el := range s.engine.loops {
		s.stopped.Add(1)
		go el.run()
	}
	return nil
}

// drain tells every loop to stop accepting and end its idle sessions, and
// closes the listeners once no loop waits on them: new clients are then
// refused by the kernel instead of waiting in a backlog nobody reads (with
// several worker processes, the others take them).
func (s *Server) drain() {
	s.drained.Add(len(s.engine.loops))
	for _, el := range s.engine.loops {
		el.post(ctlDrain)
	}
	s.drained.Wait()
	s.closeListeners()
}

// force ends every session of every loop.
func (s *Server) force() {
	for _, el := range s.engine.loops {
		el.post(ctlForce)
	}
}
