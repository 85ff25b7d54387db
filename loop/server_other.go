//go:build !linux

package loop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/plugins"
)

// engine, where epoll does not exist (macOS, FreeBSD: development hosts),
// is one accepting goroutine per listener and a stream transport, one
// goroutine, per connection. It serves the same sessions and plugins as
// the event loops of Linux, with none of their economy.
type engine struct{}

// openListeners takes the inherited listening sockets, or binds the
// configured addresses, in the order of opts.Specs. The backlog is the
// system's default here.
func (s *Server) openListeners() error {
	opts := &s.opts
	if len(opts.Listeners) > 0 {
		for _, f := range opts.Listeners {
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("loop: inherited listener: %w", err)
			}
			s.listeners = append(s.listeners, listener{fd: -1, ln: ln})
		}
		if len(s.listeners) != len(opts.Specs) {
			return fmt.Errorf("loop: %d inherited listeners for %d configured addresses (listen, smtps_listen, proxy_listen, in that order)", len(s.listeners), len(opts.Specs))
		}
	} else {
		for _, sp := range opts.Specs {
			ln, err := listenStd(sp.Addr, false)
			if err != nil {
				return err
			}
			s.listeners = append(s.listeners, listener{fd: -1, ln: ln})
		}
	}
	for i := range s.listeners {
		l := &s.listeners[i]
		l.kind = listenKind{TLS: opts.Specs[i].TLS, Proxy: opts.Specs[i].Proxy}
		if a, ok := l.ln.Addr().(*net.TCPAddr); ok {
			l.addr = a.AddrPort()
		}
	}
	return nil
}

func listenStd(a string, reuseport bool) (net.Listener, error) {
	var lc net.ListenConfig
	if reuseport {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", a)
	if err != nil {
		return nil, fmt.Errorf("loop: listen %s: %w", a, err)
	}
	return ln, nil
}

// ListenFile opens a listening socket on a ("host:port") as an *os.File,
// for a supervisor that hands listeners to worker processes; reuseport
// gives each worker a socket of its own. backlog is the system's here.
func ListenFile(a string, backlog int, reuseport bool) (*os.File, error) {
	ln, err := listenStd(a, reuseport)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	return ln.(*net.TCPListener).File()
}

// closeListeners closes the listening sockets once; the accepting
// goroutines then return.
func (s *Server) closeListeners() {
	if s.lstClosed {
		return
	}
	s.lstClosed = true
	for _, l := range s.listeners {
		if l.ln != nil {
			l.ln.Close()
		}
	}
}

// Start launches one accepting goroutine per listener.
func (s *Server) Start() error {
	for i := range s.listeners {
		s.stopped.Add(1)
		go s.acceptLoop(&s.listeners[i])
	}
	return nil
}

func (s *Server) acceptLoop(l *listener) {
	defer s.stopped.Done()
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if s.draining.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or memory: wait instead of spinning;
			// connections wait in the backlog. The wait doubles up to a
			// second.
			s.logAcceptError(err)
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.serve(nc, l)
	}
}

// serve starts the goroutine of a new connection, or refuses it.
func (s *Server) serve(nc net.Conn, l *listener) {
	peer := nc.RemoteAddr().(*net.TCPAddr).AddrPort()
	li := s.listenerIndex(l)
	if ok, reply, why := s.admit(peer.Addr().Unmap(), l.kind, s.draining.Load()); !ok {
		s.stream.refusedAt(li, why)
		if reply != nil {
			nc.SetWriteDeadline(time.Now().Add(time.Second))
			nc.Write(reply)
		}
		nc.Close()
		return
	}
	c := &conn{}
	c.init(s, peer, nc.LocalAddr().(*net.TCPAddr).AddrPort(), l, time.Now(), s, spare{})
	s.stream.opened(li)
	c.ipHeld = !l.kind.Proxy
	c.proxyWait = l.kind.Proxy
	st := newStream(c, nc)
	c.tr = st
	s.trackStream(st, true)
	go st.run(true)
}

// drain closes the listeners; the stream goroutines see the drain flag.
func (s *Server) drain() { s.closeListeners() }

// force has nothing of its own to end: wakeStreams closes the streams.
func (s *Server) force() {}

// Load implements plugins.LoadReporter: there is no event loop to lag.
func (s *Server) Load() plugins.LoadInfo {
	return plugins.LoadInfo{
		PoolQueued:  s.pool.Queued(),
		PoolBusy:    s.pool.Busy(),
		PoolWorkers: s.pool.Workers(),
		Connections: s.conns.Load(),
	}
}
