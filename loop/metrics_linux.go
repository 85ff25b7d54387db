package loop

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/internal/metrics"
)

// loopMeter is the loop's meter, for the connections it accepts.
func (el *eventLoop) loopMeter() *meter { return el.met }

// addLoopMeters asks every event loop for a copy of its counts, waits
// for them (up to scrapeWait) and adds them to dst.
func (s *Server) addLoopMeters(dst *metrics.Shard) {
	loops := s.engine.loops
	ws := make([]chan struct{}, len(loops))
	for i, el := range loops {
		if el.met == nil {
			continue
		}
		if ws[i] = el.met.request(); ws[i] != nil {
			el.post(ctlMetrics)
		}
	}
	waitPublished(ws)
	for _, el := range loops {
		if el.met != nil {
			el.met.addPublished(dst)
		}
	}
}

// loopLags is each loop's lag as toobusy sees it (eventLoop.Load).
func (s *Server) loopLags() []time.Duration {
	out := make([]time.Duration, len(s.engine.loops))
	for i, el := range s.engine.loops {
		out[i] = time.Duration(max(el.lagCur.Load(), el.lagPrev.Load()))
	}
	return out
}

// acceptError sorts an accept(2) failure for loopmx_accept_errors_total.
func acceptError(e syscall.Errno) metrics.AcceptError {
	switch e {
	case unix.EMFILE:
		return metrics.AcceptEMFILE
	case unix.ENFILE:
		return metrics.AcceptENFILE
	case unix.ENOBUFS:
		return metrics.AcceptENOBUFS
	case unix.ENOMEM:
		return metrics.AcceptENOMEM
	}
	return metrics.AcceptOther
}

// MetricsSockets lists the listening sockets, for their accept queues.
func (s *Server) MetricsSockets() []metrics.Socket {
	if s.draining.Load() {
		return nil // the listeners close once the loops let go of them
	}
	out := make([]metrics.Socket, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = metrics.Socket{Listener: l.addr.String(), Socket: "shared", FD: l.fd}
	}
	return out
}

// queuedFor is how long a loop must have found a connection to accept in
// every iteration before it asks the kernel how long each one waited: the
// kernel's answer counts in ticks of 1 to 10 ms, so a shorter wait is
// below what it can tell. When it answers 0 for shortRun connections in a
// row, the queue is short and the loop asks for one connection in
// shortRun only, until one waited a tick.
const (
	queuedFor = 2 * time.Millisecond
	shortRun  = 8
)

// opened counts connection c, just accepted from listener li, and starts
// its banner clock. The clock starts when the loop woke for it, unless
// the connection may have waited long in the kernel's accept queue: when
// the loop has accepted in every iteration for queuedFor, the queue has
// not been empty since, and TCP_INFO tells how long ago the connection's
// handshake ended (for every connection while the queue is long, for one
// in shortRun while it is short). A loop that keeps up makes no system
// call for it.
func (el *eventLoop) opened(c *epollConn, li int) {
	m := el.met
	if m == nil {
		return
	}
	m.opened(li)
	switch {
	case m.lastIter == 0 || el.iter-m.lastIter > 1:
		m.streak, m.short = el.now, 0 // the queue was found empty since the last accept
	case el.now.Sub(m.streak) < queuedFor:
	case m.short >= shortRun && m.short%shortRun != 0:
		m.short++ // a short queue: not this one
	default:
		ago, ok := establishedAgo(c.fd)
		switch {
		case !ok:
		case ago == 0:
			m.short++
		default:
			m.short = 0
			if t := time.Now().Add(-ago); t.Before(c.m.since) {
				c.m.since = t
			}
		}
	}
	m.lastIter = el.iter
}

// establishedAgo is how long ago the accepted socket fd received its last
// ACK, which for a connection not yet read from is the handshake's.
func establishedAgo(fd int) (time.Duration, bool) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, false
	}
	return time.Duration(ti.Last_ack_recv) * time.Millisecond, true
}
