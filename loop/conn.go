package loop

import (
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/plugins"
	"loopmx/proxyproto"
	"loopmx/smtpproto"
)

// conn is one client connection, touched only by its own loop (and, while
// a hook runs on the workpool, by that hook through pc and call).
type conn struct {
	el   *eventLoop
	fd   int
	sess *smtpproto.Session
	pc   *plugins.Conn

	in  []byte // unprocessed input; nil when there is none
	out []byte // unsent output; nil when there is none

	events     uint32 // the epoll interest currently set
	borrowed   bool   // in points into the loop's read buffer
	eof        bool   // the client half-closed; finish its input, then close
	pending    bool   // a hook runs on the workpool
	greeted    bool   // the banner was sent
	closing    bool   // close once out is flushed
	lingering  bool   // write side shut, reading until EOF
	closed     bool
	inList     bool
	why        string // why the connection ended, for the log
	lastActive time.Time
	prev, next *conn

	call      plugins.Call
	callIdx   int
	gen       uint32 // counts blocking hooks; a result of an older one is dropped
	timerKind uint8
	timerIdx  int // position in the loop's timer heap, -1 when none
	deadline  time.Time
	earlyTalk bool // input arrived before the banner
	msg       *plugins.Message

	kind       listenKind // what the listener it came from speaks
	wantTLS    bool       // hand over to TLS once the output is written
	proxyWait  bool       // waiting for the PROXY header
	ipHeld     bool       // counted in the per-IP limit
	t          *tlsState  // set once the connection left the loop for TLS
	handing    bool       // handed to TLS; its goroutine starts after this event
	tlsRefusal []byte     // implicit TLS refused at connect: sent after the handshake
}

func newConn(el *eventLoop, fd int, peer netip.AddrPort, l *listener) *conn {
	s := el.srv
	c := &conn{el: el, fd: fd, sess: smtpproto.NewSession(s.opts.Proto), events: unix.EPOLLIN | unix.EPOLLRDHUP}
	c.timerIdx = -1
	c.pc = &plugins.Conn{
		ID:         s.idPrefix + "." + strconv.FormatUint(s.connSeq.Add(1), 36),
		RemoteIP:   peer.Addr().Unmap(),
		RemotePort: peer.Port(),
		Hostname:   s.opts.Proto.Hostname,
		Log:        &s.log,
		Started:    el.now,
		Server:     el,
	}
	c.kind = l.kind
	a := l.addr
	if a.Addr().IsUnspecified() {
		a = localAddr(fd)
	}
	c.pc.LocalIP, c.pc.LocalPort = a.Addr().Unmap(), a.Port()
	return c
}

// start runs the connect hooks, then greets.
func (c *conn) start() {
	if c.el.srv.chain.Has(plugins.HookConnect) {
		c.runHook(plugins.Call{Hook: plugins.HookConnect}, 0)
	} else {
		c.greet()
	}
	c.flush()
}

func (c *conn) greet() {
	if c.kind.TLS && !c.inTLS() {
		c.startTLS() // implicit TLS: handshake first, banner after
		return
	}
	c.greeted = true
	c.write(c.el.srv.opts.Proto.Banner())
	c.process()
}

func (c *conn) onEvent(ev uint32) {
	if ev&unix.EPOLLOUT != 0 && len(c.out) > 0 {
		c.flush()
		if c.closed {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
		c.onReadable()
	}
}

func (c *conn) onReadable() {
	el := c.el
	n, e := rawRead(c.fd, el.rbuf)
	if e == unix.EAGAIN || e == unix.EINTR {
		return
	}
	if n <= 0 || e != 0 {
		if e == 0 && c.greeted && !c.lingering && (c.pending || len(c.in) > 0 || len(c.out) > 0) {
			// Half-close after pipelined commands: answer them, then close.
			c.eof = true
			c.setEvents(c.events &^ (unix.EPOLLIN | unix.EPOLLRDHUP))
			return
		}
		// EOF or reset: the client is gone. A message whose DATA did not
		// end is dropped: it was never acknowledged.
		c.close("client closed")
		return
	}
	if c.lingering {
		return // discard what arrives after our last reply
	}
	if !c.greeted && !c.proxyWait && !c.kind.TLS {
		// (On an implicit-TLS listener the client rightly speaks first:
		// its ClientHello is not early talk.)
		c.earlyTalk = true
	}
	el.touch(c)
	if len(c.in) == 0 {
		c.in = el.rbuf[:n]
		c.borrowed = true
	} else {
		c.in = append(c.in, el.rbuf[:n]...)
	}
	if c.proxyWait {
		c.proxyHeader()
	} else {
		c.process()
	}
	c.flush()
}

// proxyHeader reads the PROXY protocol header that a load balancer sends
// before anything else. A malformed one closes the connection without a
// banner; a valid one replaces the client address everywhere.
func (c *conn) proxyHeader() {
	h, n, err := proxyproto.Parse(c.in)
	if err == proxyproto.ErrNeedMore {
		c.keepInput()
		return
	}
	srv := c.el.srv
	if err != nil {
		srv.log.Info().Str("conn", c.pc.ID).Str("ip", c.pc.RemoteIP.String()).Err(err).Msg("bad PROXY header; closing")
		c.close("bad PROXY header")
		return
	}
	c.in = c.in[n:]
	c.proxyWait = false
	c.el.removeTimer(c)
	c.el.pushIdle(c)
	if !h.Local {
		c.pc.RemoteIP, c.pc.RemotePort = h.Source.Addr().Unmap(), h.Source.Port()
		c.pc.LocalIP, c.pc.LocalPort = h.Dest.Addr().Unmap(), h.Dest.Port()
	}
	if !srv.acquireIP(c.pc.RemoteIP) {
		c.write(srv.replyTooManyIP)
		c.shutdown("too many connections from the address")
		return
	}
	c.ipHeld = true
	c.earlyTalk = len(c.in) > 0
	c.start()
}

// process feeds buffered input to the session until it needs more input, a
// hook goes to the workpool, or the connection is to close. Whatever input
// is left is copied out of the loop's read buffer.
func (c *conn) process() {
	if c.handing {
		return
	}
	for c.greeted && !c.pending && !c.closing && !c.closed && len(c.out) < maxOutPending {
		if c.draining() && !c.sess.Tx().Active {
			// Shutting down: a session outside a transaction ends here,
			// before it can start another one.
			c.drainCheck()
			break
		}
		n, ev := c.sess.Next(c.in)
		c.in = c.in[n:]
		if len(ev.Reply) > 0 {
			c.write(ev.Reply)
		}
		switch ev.Kind {
		case smtpproto.KindNeedMore:
			c.keepInput()
			if c.draining() {
				c.drainCheck()
			}
			if c.eof {
				c.shutdown("client closed")
			}
			return
		case smtpproto.KindHelo:
			h := plugins.HookHelo
			if c.sess.PendingEHLO() {
				h = plugins.HookEhlo
			}
			c.pc.PendingEHLO = h == plugins.HookEhlo
			c.runHook(plugins.Call{Hook: h, Arg: ev.Arg}, 0)
		case smtpproto.KindMail:
			c.runHook(plugins.Call{Hook: plugins.HookMail, Arg: ev.Arg}, 0)
		case smtpproto.KindRcpt:
			c.runHook(plugins.Call{Hook: plugins.HookRcpt, Arg: ev.Arg}, 0)
		case smtpproto.KindData:
			c.runHook(plugins.Call{Hook: plugins.HookData}, 0)
		case smtpproto.KindMessage:
			c.msg = &plugins.Message{Body: c.sess.Body(), Protocol: c.sess.Protocol()}
			h := plugins.HookQueue
			if c.el.srv.chain.Has(plugins.HookDataPost) {
				h = plugins.HookDataPost
			}
			c.runHook(plugins.Call{Hook: h, Msg: c.msg}, 0)
		case smtpproto.KindUnknown:
			c.runHook(plugins.Call{Hook: plugins.HookUnrecognized, Arg: ev.Arg}, 0)
		case smtpproto.KindReset:
			c.endTx("reset", 0, 0)
		case smtpproto.KindReply:
			if ev.EndTx {
				c.endTx("refused", replyCode(ev.Reply), 0)
			}
		}
		if ev.Kind == smtpproto.KindQuit {
			c.quit()
			return
		}
		if ev.Kind == smtpproto.KindStartTLS {
			c.startTLS()
			return
		}
		if ev.Close {
			c.shutdown("too many errors")
		}
	}
	c.keepInput()
}

// keepInput makes sure unprocessed input no longer points into the loop's
// shared read buffer, and releases the buffer when there is none.
func (c *conn) keepInput() {
	if c.t != nil {
		if len(c.in) == 0 {
			c.in = nil
		}
		return
	}
	if len(c.in) == 0 {
		c.in = nil
		c.borrowed = false
		return
	}
	if c.borrowed {
		own := make([]byte, len(c.in), len(c.in)+512)
		copy(own, c.in)
		c.in = own
		c.borrowed = false
	}
	if len(c.in) > c.el.srv.opts.MaxPipelineBuffer {
		c.setEvents(c.events &^ unix.EPOLLIN)
	}
}

// endTx writes the transaction's log line and forgets it.
func (c *conn) endTx(result string, code, size int) {
	tx := c.pc.Tx
	if tx == nil {
		return
	}
	if ch := c.el.srv.chain; ch.Has(plugins.HookTxEnd) {
		ch.TxEnded(c.pc, tx)
	}
	if l := c.el.srv.log.Info(); l.Enabled() {
		l.Str("tx", tx.ID).Str("ip", c.pc.RemoteIP.String()).Str("helo", c.pc.Helo).
			Str("from", tx.From).Strs("rcpts", tx.Rcpts).Int("size", size).
			Str("result", result).Int("code", code).Dur("duration", c.now().Sub(tx.Started)).Msg("transaction")
	}
	c.pc.EndTx()
}

// replyCode reads the code of a wire reply.
func replyCode(r []byte) int {
	if len(r) < 3 {
		return 0
	}
	return int(r[0]-'0')*100 + int(r[1]-'0')*10 + int(r[2]-'0')
}

// drainCheck closes the connection during a shutdown once it is outside a
// transaction.
func (c *conn) drainCheck() {
	if c.pending || c.closing || c.closed || c.sess.Tx().Active {
		return
	}
	c.write(c.el.srv.replyShutdown)
	c.flush()
	c.shutdown("shutdown")
}

func (c *conn) write(b []byte) {
	if c.out != nil || c.t != nil {
		c.out = append(c.out, b...)
		return
	}
	c.el.wbuf = append(c.el.wbuf, b...)
}

// flush writes what the connection owes. A short write keeps the rest and
// asks epoll for writability.
func (c *conn) flush() {
	if c.handing {
		return
	}
	if c.t != nil {
		c.flushTLS()
		return
	}
	el := c.el
	if c.closed {
		el.wbuf = el.wbuf[:0]
		return
	}
	buf := c.out
	if buf == nil {
		buf = el.wbuf
	}
	if len(buf) > 0 {
		n, e := rawWrite(c.fd, buf)
		if n < 0 {
			n = 0
		}
		switch {
		case n == len(buf):
			c.out = nil
		case e == 0 || e == unix.EAGAIN || e == unix.EINTR:
			rest := buf[n:]
			if c.out == nil {
				c.out = append(make([]byte, 0, len(rest)), rest...)
			} else {
				c.out = rest
			}
		default:
			el.wbuf = el.wbuf[:0]
			c.close("write error")
			return
		}
		el.wbuf = el.wbuf[:0]
	}
	want := c.events | unix.EPOLLIN
	if len(c.in) > el.srv.opts.MaxPipelineBuffer || len(c.out) >= maxOutPending {
		want &^= unix.EPOLLIN
	}
	if len(c.out) > 0 {
		want |= unix.EPOLLOUT
	} else {
		want &^= unix.EPOLLOUT
		if c.wantTLS {
			c.handOff()
			return
		}
		if c.closing && !c.lingering {
			c.linger()
			return
		}
		if !c.pending && len(c.in) > 0 && c.events&unix.EPOLLIN == 0 {
			// The client caught up with its replies: go on with its
			// pipelined input.
			c.setEvents(want)
			c.process()
			c.flush()
			return
		}
	}
	c.setEvents(want)
}

func (c *conn) setEvents(ev uint32) {
	if ev == c.events || c.closed || c.t != nil {
		return
	}
	c.events = ev
	rawEpollCtl(c.el.epfd, unix.EPOLL_CTL_MOD, c.fd, ev)
}

// shutdown closes the connection once its replies are written.
func (c *conn) shutdown(why string) {
	if c.closing || c.closed {
		return
	}
	c.closing = true
	if c.why == "" {
		c.why = why
	}
	if c.t != nil {
		return // the TLS goroutine closes after its next flush
	}
	c.el.touch(c)
	if len(c.out) == 0 && len(c.el.wbuf) == 0 {
		c.linger()
	}
}

// quit closes right after the 221 is written: the client asked to end and
// has nothing more to send, so there is no reset to fear.
func (c *conn) quit() {
	c.flush()
	if len(c.out) == 0 && !c.closed {
		c.close("quit")
		return
	}
	c.shutdown("quit")
}

// linger shuts the write side and reads until the client closes (or a
// short timeout), so our last reply is not destroyed by a reset caused by
// unread input.
func (c *conn) linger() {
	if c.lingering || c.closed {
		return
	}
	if c.t != nil {
		c.closeTLS("")
		return
	}
	c.lingering = true
	rawShutdownWrite(c.fd)
	c.in = nil
	c.setEvents(unix.EPOLLIN | unix.EPOLLRDHUP)
	c.el.touch(c)
}

// close releases the descriptor now.
func (c *conn) close(why string) {
	if c.closed {
		return
	}
	if c.t != nil {
		c.closeTLS(why)
		return
	}
	if c.why == "" {
		c.why = why
	}
	c.closed = true
	el := c.el
	rawClose(c.fd)
	el.conns[c.fd] = nil
	el.nconns--
	el.removeIdle(c)
	el.srv.conns.Add(-1)
	if c.ipHeld {
		el.srv.releaseIP(c.pc.RemoteIP)
	}
	c.in, c.out = nil, nil
	if c.timerKind != timerHook {
		// Only a blocking hook's deadline outlives the connection (its
		// result, or the timeout, runs finish); a Delay or a PROXY wait
		// holds nothing elsewhere and ends here.
		el.removeTimer(c)
		c.pending = false
	}
	if !c.pending {
		c.finish()
	}
}

// finish runs disconnect hooks and writes the connection's log line once
// no hook is outstanding.
func (c *conn) finish() {
	c.endTx("aborted", 0, 0)
	ch := c.el.srv.chain
	if ch.Has(plugins.HookDisconnect) {
		call := plugins.Call{Hook: plugins.HookDisconnect}
		if _, next, done := ch.Step(c.pc, &call, 0); !done {
			pc := c.pc
			if !c.el.srv.pool.Submit(func() { ch.RunFrom(pc, &call, next) }) {
				c.el.srv.log.Warn().Str("conn", c.pc.ID).Msg("workpool full: disconnect hooks skipped")
			}
		}
	}
	if l := c.el.srv.log.Info(); l.Enabled() {
		l.Str("conn", c.pc.ID).Str("ip", c.pc.RemoteIP.String()).Str("helo", c.pc.Helo).
			Int("transactions", c.pc.Transactions()).Int("errors", c.sess.Errors()).Str("end", c.why).
			Dur("duration", c.now().Sub(c.pc.Started)).Msg("connection")
	}
	c.sess = nil
}
