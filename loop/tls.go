package loop

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/plugins"
)

// tlsState is what a connection has once it left its event loop for TLS:
// crypto/tls needs blocking reads, so after "220 Ready to start TLS" (or
// at once on an implicit-TLS listener) the descriptor goes to a goroutine
// that drives the same session and plugin chain. Plain connections never
// pay for this.
type tlsState struct {
	conn    *tls.Conn
	results chan hookResult
	buf     []byte
}

// inTLS reports whether c left its loop for a TLS goroutine.
func (c *conn) inTLS() bool { return c.t != nil }

// now is the loop's clock on the loop, the wall clock in a TLS goroutine.
func (c *conn) now() time.Time {
	if c.t != nil {
		return time.Now()
	}
	return c.el.now
}

// draining reads the drain flag the goroutine-safe way.
func (c *conn) draining() bool {
	if c.t != nil {
		return c.el.srv.draining.Load()
	}
	return c.el.draining
}

// startTLS is called on the loop after the STARTTLS reply (or the connect
// hooks of an implicit-TLS listener). It waits until the reply is on the
// wire, then hands the descriptor over.
func (c *conn) startTLS() {
	c.wantTLS = true
	c.flush() // hands off as soon as the reply is on the wire
}

// handOff takes the connection off the loop. Input that arrived after the
// STARTTLS command is dropped: RFC 3207 5 forbids acting on it (a man in
// the middle could have injected it in plaintext; CVE-2011-0411).
func (c *conn) handOff() {
	el := c.el
	srv := el.srv
	c.wantTLS = false
	var early []byte
	if !c.greeted && len(c.in) > 0 {
		// Implicit TLS: bytes read before the hand-off (during a connect
		// hook) are the start of the client's handshake; keep them.
		early = append([]byte(nil), c.in...)
	}
	c.in = nil
	c.borrowed = false
	rawEpollCtl(el.epfd, unix.EPOLL_CTL_DEL, c.fd, 0)
	el.conns[c.fd] = nil
	el.nconns--
	el.removeIdle(c)
	el.removeTimer(c)
	f := os.NewFile(uintptr(c.fd), "smtp")
	nc, err := net.FileConn(f) // dups the descriptor into Go's netpoller
	f.Close()
	c.fd = -1
	if err != nil {
		srv.log.Error().Err(err).Str("conn", c.pc.ID).Msg("cannot hand the connection to TLS")
		c.t = &tlsState{}
		c.closeTLS("tls hand-off failed")
		return
	}
	if early != nil {
		nc = &prefixConn{Conn: nc, prefix: early}
	}
	c.t = &tlsState{conn: tls.Server(nc, srv.opts.TLS.Config()), results: make(chan hookResult, 1)}
	srv.trackTLS(c, true)
	// The goroutine starts once the loop is done with this event: code up
	// the loop's call stack may still look at c (it sees c.handing).
	c.handing = true
	el.handoffs = append(el.handoffs, c)
}

// runTLS is the connection's goroutine after the hand-off.
func (c *conn) runTLS() {
	c.handing = false
	srv := c.el.srv
	defer srv.trackTLS(c, false)
	t := c.t
	t.conn.SetDeadline(time.Now().Add(srv.opts.TLS.HandshakeTimeout))
	if err := t.conn.Handshake(); err != nil {
		srv.log.Info().Str("conn", c.pc.ID).Str("ip", c.pc.RemoteIP.String()).Err(err).Msg("TLS handshake failed")
		c.closeTLS("tls handshake failed")
		return
	}
	t.conn.SetDeadline(time.Time{})
	st := t.conn.ConnectionState()
	c.pc.TLS = &st
	c.pc.Helo, c.pc.Extended = "", false
	c.sess.StartedTLS()
	if c.tlsRefusal != nil {
		c.write(c.tlsRefusal)
		c.flush()
		c.closeTLS("rejected at connect")
		return
	}
	if !c.greeted {
		c.greet() // implicit TLS: the banner comes after the handshake
	}
	c.flush()
	t.buf = make([]byte, 4<<10) // small: an idle TLS session holds it while it waits
	for !c.closed {
		if c.closing {
			c.closeTLS("")
			return
		}
		// A wake-up for a drain may have come while this goroutine was
		// busy (the deadline below replaces it): look at the flags first.
		switch {
		case srv.forcing.Load():
			c.write(srv.replyShutdown)
			c.flush()
			c.closeTLS("shutdown")
			return
		case srv.draining.Load() && !c.sess.Tx().Active:
			c.drainCheck()
			continue
		}
		t.conn.SetReadDeadline(time.Now().Add(srv.opts.InactivityTimeout))
		n, err := t.conn.Read(t.buf)
		if n > 0 {
			c.in = append(c.in, t.buf[:n]...)
			c.process()
			c.flush()
		}
		if err == nil {
			continue
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout() && srv.forcing.Load():
			// The graceful time is over: 421 like a plain session.
			c.write(srv.replyShutdown)
			c.flush()
			c.closeTLS("shutdown")
		case errors.As(err, &ne) && ne.Timeout() && srv.draining.Load() && !c.sess.Tx().Active:
			c.drainCheck()
		case errors.As(err, &ne) && ne.Timeout() && srv.draining.Load():
			// Woken for a drain inside a transaction: let it finish.
		case errors.As(err, &ne) && ne.Timeout():
			c.write(srv.replyTimeout)
			c.flush()
			c.closeTLS("timeout")
		default:
			c.closeTLS("client closed")
		}
	}
}

// flushTLS writes what the connection owes over TLS.
func (c *conn) flushTLS() {
	if len(c.out) == 0 || c.closed {
		c.out = c.out[:0]
		return
	}
	c.t.conn.SetWriteDeadline(time.Now().Add(c.el.srv.opts.InactivityTimeout))
	_, err := c.t.conn.Write(c.out)
	c.out = c.out[:0]
	if err != nil {
		c.closeTLS("write error")
	}
}

// closeTLS ends a connection that runs in a TLS goroutine.
func (c *conn) closeTLS(why string) {
	if c.closed {
		return
	}
	if c.why == "" {
		c.why = why
	}
	c.closed = true
	srv := c.el.srv
	if c.t.conn != nil {
		c.t.conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.t.conn.Close()
	}
	srv.conns.Add(-1)
	if c.ipHeld {
		srv.releaseIP(c.pc.RemoteIP)
	}
	c.in, c.out = nil, nil
	if !c.pending {
		c.finish()
	}
}

// submitTLS runs the blocking plugin at position i on the workpool and
// waits for it here, up to the plugin's timeout.
func (c *conn) submitTLS(call plugins.Call, i int) {
	srv := c.el.srv
	ch := srv.chain
	c.gen++
	gen, pc, results := c.gen, c.pc, c.t.results
	job := func() {
		res := ch.RunOne(pc, &call, i)
		select {
		case results <- hookResult{c: c, gen: gen, res: res}:
		default: // the goroutine gave up on this hook (timeout)
		}
	}
	if !srv.pool.Submit(job) {
		c.write(srv.opts.Proto.BusyReply())
		c.shutdown("workpool full")
		return
	}
	c.call, c.callIdx = call, i
	timer := time.NewTimer(ch.Timeout(call.Hook, i))
	defer timer.Stop()
	for {
		select {
		case r := <-results:
			if r.gen != c.gen {
				continue
			}
			c.continueChain(r.res)
			return
		case <-timer.C:
			c.t.results = make(chan hookResult, 1) // the late result goes nowhere
			c.resolve(c.call, c.hookTimedOut())
			return
		}
	}
}

// trackTLS keeps the set of TLS connections so a shutdown can reach them.
func (s *Server) trackTLS(c *conn, add bool) {
	s.tlsMu.Lock()
	defer s.tlsMu.Unlock()
	if add {
		s.tlsConns[c] = struct{}{}
		s.tlsWG.Add(1)
		return
	}
	delete(s.tlsConns, c)
	s.tlsWG.Done()
}

// wakeTLS makes every TLS goroutine look at the drain flag (force closes
// them instead).
func (s *Server) wakeTLS(force bool) {
	s.tlsMu.Lock()
	defer s.tlsMu.Unlock()
	if force {
		s.forcing.Store(true)
	}
	for c := range s.tlsConns {
		// Wake the goroutine from its read; it sees draining or forcing.
		c.t.conn.SetReadDeadline(time.Now())
		if force {
			// One that is not reading (a hook, a stuck write) gets a
			// moment, then its socket is closed under it.
			tc := c.t.conn
			time.AfterFunc(2*time.Second, func() { tc.Close() })
		}
	}
}

// prefixConn returns bytes already read from the socket before reading
// more.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
