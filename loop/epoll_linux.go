package loop

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"loopmx/loop/workpool"
	"loopmx/plugins"
)

// epollConn is a connection on an event loop, and its transport: the
// descriptor, its epoll interest, and its places in the loop's idle list
// and timer heap. It embeds the session so that one allocation holds a
// whole plain connection.
type epollConn struct {
	conn
	reactor *eventLoop // the event loop that owns the descriptor
	fd      int

	events    uint32  // the epoll interest currently set
	borrowed  bool    // in points into the loop's read buffer
	lingering bool    // write side shut, reading until EOF
	wantTLS   bool    // move to the stream transport once the output is written
	waiter    awaiter // what the job handed to await answers to

	// the loop's list of the phase (conn.ph) it is in, oldest first; not
	// listed while a hook, a Delay or a PROXY header is awaited
	listed     bool
	listedIn   uint8
	prev, next *epollConn

	timerKind uint8
	timerIdx  int // position in the loop's timer heap, -1 when none
	deadline  time.Time
}

// hookResult carries a blocking hook's outcome back to the loop.
type hookResult struct {
	c   *epollConn
	gen uint32
	res plugins.Result
}

func newEpollConn(el *eventLoop, fd int, peer netip.AddrPort, l *listener) *epollConn {
	var e *epollConn
	var sp spare
	if n := len(el.free); n > 0 {
		// The memory of a connection that ended lately, likely still in
		// the cache; it was zeroed when it was put in the list.
		f := el.free[n-1]
		el.free[n-1] = freeConn{}
		el.free = el.free[:n-1]
		e, sp = f.e, f.spare
		el.reused.Add(1)
	} else {
		e = new(epollConn)
	}
	e.reactor, e.fd, e.events, e.timerIdx = el, fd, unix.EPOLLIN|unix.EPOLLRDHUP, -1
	local := l.addr
	if local.Addr().IsUnspecified() {
		local = localAddr(fd)
	}
	e.init(el.srv, peer, local, l, el.now, el, sp)
	e.tr = e
	return e
}

// freeConn is an ended connection's memory, kept for the next one.
type freeConn struct {
	e *epollConn
	spare
}

// maxFree bounds the ended connections a loop keeps. A session's
// objects (the connection, its protocol state, what plugins see of it,
// its last transaction and message) come from the list instead of the
// heap: less for the garbage collector, and memory the cache still holds.
const maxFree = 64

// retire keeps the memory of a finished connection that nothing else
// holds. It joins the free list once the loop's current iteration is
// over: code up the call stack may still read it.
func (e *epollConn) retire(sp spare) {
	e.reactor.retired = append(e.reactor.retired, freeConn{e, sp})
}

func (e *epollConn) now() time.Time          { return e.reactor.now }
func (e *epollConn) draining() bool          { return e.reactor.draining }
func (e *epollConn) logger() *zerolog.Logger { return &e.reactor.log }
func (e *epollConn) lines() *lineOut         { return e.reactor.lines }

func (e *epollConn) onEvent(ev uint32) {
	if ev&unix.EPOLLOUT != 0 && len(e.out) > 0 {
		e.flush()
		if e.closed {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
		e.onReadable()
	}
	e.settle()
}

// settle puts the connection in the list of its phase after an event. A
// phase that goes on keeps its start: bytes alone do not move it.
func (e *epollConn) settle() {
	if e.closed || e.pending || e.handoff || e.proxyWait {
		return
	}
	now := e.reactor.now
	if !e.listed {
		// Back from a hook or a Delay, or new: its time starts now.
		e.restart(e.phase(), now)
	} else if !e.rephase(now) {
		return
	}
	e.reactor.enter(e, e.ph)
}

func (e *epollConn) onReadable() {
	el := e.reactor
	// Read no more than the connection may keep: a client that does not
	// read its replies holds at most inCap of input.
	room := e.srv.inCap - len(e.in)
	if room <= 0 {
		e.setEvents(e.events &^ unix.EPOLLIN)
		return
	}
	n, errno := rawRead(e.fd, el.rbuf[:min(room, len(el.rbuf))])
	if errno == unix.EAGAIN || errno == unix.EINTR {
		return
	}
	if n <= 0 || errno != 0 {
		if errno == 0 && e.greeted && !e.lingering && (e.pending || len(e.in) > 0 || len(e.out) > 0) {
			// Half-close after pipelined commands: answer them, then close.
			e.eof = true
			e.setEvents(e.events &^ (unix.EPOLLIN | unix.EPOLLRDHUP))
			return
		}
		// EOF or reset: the client is gone. A message whose DATA did not
		// end is dropped: it was never acknowledged.
		e.close("client closed")
		return
	}
	if e.lingering {
		return // discard what arrives after our last reply
	}
	if !e.greeted && !e.proxyWait && !e.kind.TLS {
		// (On an implicit-TLS listener the client rightly speaks first:
		// its ClientHello is not early talk.)
		e.earlyTalk = true
	}
	if e.ph == phaseBody {
		e.bodyBytes += int64(n)
	}
	if len(e.in) == 0 {
		e.in = el.rbuf[:n]
		e.borrowed = true
	} else {
		e.in = append(e.in, el.rbuf[:n]...)
	}
	if e.proxyWait {
		if e.parseProxy() {
			el.removeTimer(e)
			e.proxied()
		}
	} else {
		e.process()
	}
	e.flush()
}

// retain makes sure unprocessed input no longer points into the loop's
// shared read buffer, and stops reading a client whose input piles up.
func (e *epollConn) retain() {
	if len(e.in) == 0 {
		e.in = nil
		e.borrowed = false
		return
	}
	if e.borrowed {
		own := make([]byte, len(e.in), len(e.in)+512)
		copy(own, e.in)
		e.in = own
		e.borrowed = false
	}
	if len(e.in) >= e.srv.inCap {
		e.setEvents(e.events &^ unix.EPOLLIN)
	}
}

// write queues a reply. Replies of the connection being handled go to the
// loop's shared buffer, written at the end of the event; only what the
// socket does not take is copied to the connection.
func (e *epollConn) write(b []byte) {
	if e.out != nil {
		e.out = append(e.out, b...)
		return
	}
	el := e.reactor
	el.wbuf = append(el.wbuf, b...)
	if len(el.wbuf) >= maxOutPending {
		e.spill()
	}
}

// spill sends what the shared buffer holds, in the middle of an event
// whose replies outgrew maxOutPending, and keeps the rest as the
// connection's own; the session then sees its output is full and stops
// parsing. A write error is left for flush.
func (e *epollConn) spill() {
	el := e.reactor
	n, _ := rawWrite(e.fd, el.wbuf)
	if n < len(el.wbuf) {
		n = max(n, 0)
		e.out = append(make([]byte, 0, len(el.wbuf)-n), el.wbuf[n:]...)
	}
	el.wbuf = el.wbuf[:0]
}

// flush writes what the connection owes. A short write keeps the rest and
// asks epoll for writability.
func (e *epollConn) flush() {
	if e.handoff {
		return
	}
	el := e.reactor
	if e.closed {
		el.wbuf = el.wbuf[:0]
		return
	}
	buf := e.out
	if buf == nil {
		buf = el.wbuf
	}
	if len(buf) > 0 {
		write := rawWrite
		switch {
		case e.closing && !e.lingering && !e.wantTLS && !e.pending:
			// The last replies before linger's shutdown, which follows
			// a complete write at once (a short one once EPOLLOUT
			// brought the rest) and sends them with the FIN.
			write = rawWriteLast
		case e.quitting && e.out == nil && bytes.HasPrefix(buf, []byte("221")):
			// Only the 221, and quit closes right after it: the close
			// sends it with the FIN. Not when other replies are in the
			// write: a close discards what it holds for a reset when
			// input arrived after the QUIT, and a 250 must never be
			// lost that way (quit stays off when input came with it).
			write = rawWriteLast
		}
		n, errno := write(e.fd, buf)
		if n < 0 {
			n = 0
		}
		switch {
		case n == len(buf):
			e.out = nil
		case errno == 0 || errno == unix.EAGAIN || errno == unix.EINTR:
			rest := buf[n:]
			if e.out == nil {
				e.out = append(make([]byte, 0, len(rest)), rest...)
			} else {
				e.out = rest
			}
		default:
			el.wbuf = el.wbuf[:0]
			e.close("write error")
			return
		}
		el.wbuf = el.wbuf[:0]
	}
	want := e.events | unix.EPOLLIN
	if len(e.in) >= e.srv.inCap || len(e.out) >= maxOutPending {
		want &^= unix.EPOLLIN
	}
	if e.outFull && !e.pending && !e.wantTLS && !e.closing && len(e.out) < maxOutPending {
		// The client read enough of its replies: parse the pipelined
		// commands that are already here. Waiting for EPOLLIN would
		// stall, since a client that sent everything sends no more.
		e.setEvents(want)
		e.process()
		e.flush()
		return
	}
	if len(e.out) > 0 {
		want |= unix.EPOLLOUT
	} else {
		want &^= unix.EPOLLOUT
		if e.wantTLS {
			e.handOff()
			return
		}
		if e.closing && !e.lingering {
			e.linger()
			return
		}
	}
	e.setEvents(want)
}

// setEvents changes the epoll interest. A failure means the descriptor is
// unusable: the connection closes.
func (e *epollConn) setEvents(ev uint32) {
	if ev == e.events || e.closed || e.handoff {
		return
	}
	e.events = ev
	if errno := rawEpollCtl(e.reactor.epfd, unix.EPOLL_CTL_MOD, e.fd, ev); errno != 0 {
		e.srv.log.Error().Str("conn", e.view.ID).Err(errno).Msg("epoll_ctl failed; closing the connection")
		e.close("epoll error")
	}
}

// await hands a job to a pool; the result comes back through the loop's
// wake-up (hookDone), the timeout through the timer heap (timerFired).
func (e *epollConn) await(pool *workpool.Pool, job func() plugins.Result, w awaiter, gen uint32, timeout time.Duration) bool {
	el := e.reactor
	e.waiter = w
	el.unlist(e)
	el.addTimer(e, timerHook, el.now.Add(timeout))
	if !pool.Submit(func() { el.post(hookResult{c: e, gen: gen, res: job()}) }) {
		el.removeTimer(e)
		return false
	}
	return true
}

// pause parks the connection on a timer.
func (e *epollConn) pause(d time.Duration) {
	e.reactor.unlist(e)
	e.reactor.addTimer(e, timerDelay, e.reactor.now.Add(d))
}

// hookDone runs on the loop when a blocking hook has finished.
func (e *epollConn) hookDone(r hookResult) {
	if !e.pending || r.gen != e.gen {
		return // the hook timed out earlier; its late result is dropped
	}
	el := e.reactor
	el.removeTimer(e)
	if e.closed {
		e.pending = false
		e.finish()
		return
	}
	e.waiter.returned(r.res)
	e.process()
	e.flush()
	e.settle()
}

// timerFired runs when the connection's timer is due.
func (e *epollConn) timerFired() {
	kind := e.timerKind
	e.timerKind = timerNone
	switch kind {
	case timerProxy:
		e.close("no PROXY header in time")
		return
	case timerHook:
		e.waiter.expired()
	default:
		e.pauseOver()
	}
	if !e.closed {
		e.process()
		e.flush()
		e.settle()
	}
}

// startTLS moves the connection to TLS once the reply is on the wire.
func (e *epollConn) startTLS() {
	e.wantTLS = true
	e.flush()
}

// handOff takes the connection off the loop and gives it to a stream
// transport that runs the handshake. Input that arrived after the
// STARTTLS command is dropped: RFC 3207 5 forbids acting on it.
func (e *epollConn) handOff() {
	el := e.reactor
	srv := e.srv
	e.wantTLS = false
	var early []byte
	if !e.greeted && len(e.in) > 0 {
		// Implicit TLS: bytes read before the hand-off (during a connect
		// hook) are the start of the client's handshake; keep them.
		early = append([]byte(nil), e.in...)
	}
	e.in = nil
	e.borrowed = false
	if errno := rawEpollCtl(el.epfd, unix.EPOLL_CTL_DEL, e.fd, 0); errno != 0 {
		srv.log.Warn().Str("conn", e.view.ID).Err(errno).Msg("epoll_ctl DEL failed at the TLS hand-off")
	}
	el.conns[e.fd] = nil
	el.nconns--
	el.unlist(e)
	el.removeTimer(e)
	f := os.NewFile(uintptr(e.fd), "smtp")
	nc, err := net.FileConn(f) // dups the descriptor into Go's netpoller
	f.Close()
	e.fd = -1
	if err != nil {
		srv.log.Error().Err(err).Str("conn", e.view.ID).Msg("cannot hand the connection to TLS")
		e.setEndReason("tls hand-off failed")
		e.closed = true
		e.ended()
		return
	}
	if early != nil {
		nc = &prefixConn{Conn: nc, prefix: early}
	}
	s := newStream(&e.conn, nc)
	s.tlsNext = true
	e.tr = s
	srv.trackStream(s, true)
	// The goroutine starts once the loop is done with this event: code up
	// the loop's call stack may still look at the connection (it sees
	// handoff).
	e.handoff = true
	el.handoffs = append(el.handoffs, s)
}

// closeWhenFlushed lingers once the replies are written; until then the
// client has lingerTime to read them.
func (e *epollConn) closeWhenFlushed() {
	if !e.pending {
		e.restart(phaseClosing, e.reactor.now)
		e.reactor.enter(e, phaseClosing)
	}
	if len(e.out) == 0 && len(e.reactor.wbuf) == 0 {
		e.linger()
	}
}

// linger shuts the write side and reads until the client closes (or a
// short timeout), so our last reply is not destroyed by a reset caused by
// unread input.
func (e *epollConn) linger() {
	if e.lingering || e.closed {
		return
	}
	e.lingering = true
	rawShutdownWrite(e.fd)
	e.in = nil
	e.setEvents(unix.EPOLLIN | unix.EPOLLRDHUP)
	if !e.pending {
		e.restart(phaseClosing, e.reactor.now)
		e.reactor.enter(e, phaseClosing)
	}
}

// closeNow releases the descriptor.
func (e *epollConn) closeNow() {
	if e.closed {
		return
	}
	el := e.reactor
	rawClose(e.fd)
	el.conns[e.fd] = nil
	el.nconns--
	el.unlist(e)
	if e.timerKind != timerHook {
		// Only a blocking hook's deadline outlives the connection (its
		// result, or the timeout, runs finish); a Delay or a PROXY wait
		// holds nothing elsewhere and ends here.
		el.removeTimer(e)
		e.pending = false
	}
	e.ended()
}
