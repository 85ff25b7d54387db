package loop

import (
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/rs/zerolog"

	"loopmx/loop/workpool"
	"loopmx/plugins"
)

// stream is the goroutine transport: one goroutine reads a net.Conn with
// blocking calls and drives the connection. crypto/tls needs blocking
// reads, so a connection moves here when TLS starts (after "220 Ready to
// start TLS", or at once on an implicit-TLS listener); where epoll does
// not exist, every connection lives here from its accept. Plain
// connections on Linux never pay for it.
type stream struct {
	c       *conn
	raw     net.Conn // the socket; deadlines set on it reach a TLS layer too
	nc      net.Conn // what is read and written: raw, or TLS over it
	tlsNext bool     // handshake before reading on
	results chan streamResult
	buf     []byte
}

// streamResult carries a blocking hook's outcome to the goroutine.
type streamResult struct {
	gen uint32
	res plugins.Result
}

// streamReadBuf is small: an idle TLS session holds it while it waits.
const streamReadBuf = 4 << 10

func newStream(c *conn, nc net.Conn) *stream {
	c.toStream()
	return &stream{c: c, raw: nc, nc: nc, results: make(chan streamResult, 1)}
}

func (s *stream) write(b []byte) { s.c.out = append(s.c.out, b...) }

func (s *stream) retain() {
	if len(s.c.in) == 0 {
		s.c.in = nil // input is always the connection's own here
	}
}

func (s *stream) now() time.Time          { return time.Now() }
func (s *stream) draining() bool          { return s.c.srv.draining.Load() }
func (s *stream) logger() *zerolog.Logger { return &s.c.srv.log }
func (s *stream) lines() *lineOut         { return nil }
func (s *stream) retire(spare)            {}
func (s *stream) startTLS()               { s.tlsNext = true }
func (s *stream) closeWhenFlushed()       {} // run closes after its next flush

// flush writes what the connection owes.
func (s *stream) flush() {
	c := s.c
	if c.handoff {
		return // the goroutine has not started yet; it flushes first
	}
	if len(c.out) == 0 || c.closed {
		c.out = c.out[:0]
		return
	}
	// A client that does not read its replies gets command_timeout, as on
	// an event loop.
	s.raw.SetWriteDeadline(time.Now().Add(c.srv.limitsNow().line))
	_, err := s.nc.Write(c.out)
	c.out = c.out[:0]
	if err != nil {
		c.close("write error")
	}
}

// flushAll writes the replies and, while the session stopped for
// replies not yet written (maxOutPending), parses on and writes again.
func (s *stream) flushAll() {
	c := s.c
	s.flush()
	for c.outFull && !c.closed && !c.handoff {
		c.outFull = false
		c.process()
		s.flush()
	}
}

func (s *stream) closeNow() {
	c := s.c
	if c.closed {
		return
	}
	s.raw.SetWriteDeadline(time.Now().Add(time.Second))
	s.nc.Close()
	c.ended()
}

// await runs the job (a blocking hook or a spool write) on its pool and
// waits for it here, up to timeout.
func (s *stream) await(pool *workpool.Pool, job func() plugins.Result, w awaiter, gen uint32, timeout time.Duration) bool {
	c := s.c
	results := s.results
	ok := pool.Submit(func() {
		r := job()
		select {
		case results <- streamResult{gen: gen, res: r}:
		default: // the goroutine gave up on this hook (timeout)
		}
	})
	if !ok {
		return false
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case r := <-results:
			if r.gen != c.gen {
				continue
			}
			w.returned(r.res)
			return true
		case <-timer.C:
			s.results = make(chan streamResult, 1) // the late result goes nowhere
			w.expired()
			return true
		}
	}
}

// pause waits out a hook's Delay. Before the banner of a plain session it
// reads meanwhile, so a client that talks first is seen (early talk).
func (s *stream) pause(d time.Duration) {
	c := s.c
	until := time.Now().Add(d)
	for !c.closed && time.Now().Before(until) {
		if c.srv.forcing.Load() {
			break // the graceful time is over: run closes the connection
		}
		if c.kind.TLS && !c.secure {
			// Before an implicit-TLS handshake (hosts without epoll)
			// there is no SMTP to read: the pause is only a wait.
			time.Sleep(time.Until(until))
			break
		}
		s.raw.SetReadDeadline(until)
		n, err := s.nc.Read(s.readBuf())
		if n > 0 {
			c.in = append(c.in, s.buf[:n]...)
			c.earlyTalk = true
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			c.close("client closed")
			return
		}
	}
	if !c.closed {
		c.pauseOver()
	}
}

func (s *stream) readBuf() []byte {
	if s.buf == nil {
		s.buf = make([]byte, streamReadBuf)
	}
	return s.buf
}

// handshake runs the TLS handshake and resets the session as RFC 3207 4.2
// asks. Input read before it is dropped: a man in the middle could have
// injected it in plaintext (CVE-2011-0411).
func (s *stream) handshake() bool {
	c := s.c
	srv := c.srv
	s.tlsNext = false
	tc := tls.Server(s.nc, srv.opts.TLS.Config())
	s.raw.SetDeadline(time.Now().Add(srv.opts.TLS.HandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		c.tlsHandshake(nil, err)
		srv.log.Info().Str("conn", c.view.ID).Str("ip", c.view.RemoteIP.String()).Err(err).Msg("TLS handshake failed")
		c.close("tls handshake failed")
		return false
	}
	s.raw.SetDeadline(time.Time{})
	c.restart(phaseIdle, time.Now()) // the handshake's time is not the client's
	s.nc = tc
	st := tc.ConnectionState()
	c.tlsHandshake(&st, nil)
	c.secure = true
	c.in = nil
	c.endTx("reset", 0, 0)
	c.view.StartedTLS(&st)
	c.sess.StartedTLS()
	if c.tlsRefusal != nil {
		s.write(c.tlsRefusal)
		s.flush()
		c.close("rejected at connect")
		return false
	}
	if !c.greeted {
		c.greet() // implicit TLS: the banner comes after the handshake
	}
	s.flush()
	return true
}

// run is the connection's goroutine. fresh says the connection was just
// accepted (its session has not started); otherwise it comes from an
// event loop mid-session.
func (s *stream) run(fresh bool) {
	c := s.c
	srv := c.srv
	c.handoff = false
	c.restart(phaseIdle, time.Now())
	defer srv.trackStream(s, false)
	if fresh && !c.proxyWait {
		c.start()
	}
	s.flush()
	for !c.closed {
		switch {
		case s.tlsNext:
			if !s.handshake() {
				return
			}
			continue
		case c.closing:
			s.closeNow()
			return
		case srv.forcing.Load():
			// The graceful time is over: 421 like a plain session.
			s.write(srv.replyShutdown)
			s.flush()
			c.close("shutdown")
			return
		case srv.draining.Load() && !c.pending && !c.sess.Tx().Active:
			// A wake-up for a drain may have come while this goroutine was
			// busy (the deadline below replaces it): look at the flags first.
			c.drainCheck()
			continue
		}
		// The same deadlines as on an event loop (guard.go): a phase
		// starts again on progress, never on bytes alone.
		now := time.Now()
		var deadline time.Time
		if c.proxyWait {
			deadline = now.Add(srv.opts.ProxyTimeout)
		} else {
			c.rephase(now)
			deadline = srv.limitsNow().deadline(c.ph, c.since, c.bodyBytes)
		}
		s.raw.SetReadDeadline(deadline)
		n, err := s.nc.Read(s.readBuf())
		if n > 0 {
			if c.ph == phaseBody {
				c.bodyBytes += int64(n)
			}
			c.in = append(c.in, s.buf[:n]...)
			if c.proxyWait {
				if c.parseProxy() {
					c.proxied()
				}
			} else {
				c.process()
			}
			s.flushAll()
		}
		if err == nil {
			continue
		}
		var ne net.Error
		timeout := errors.As(err, &ne) && ne.Timeout()
		switch {
		case timeout && (srv.forcing.Load() || srv.draining.Load()):
			// Woken for a drain: the checks at the top decide.
		case timeout && c.proxyWait:
			c.close("no PROXY header in time")
		case timeout:
			reply, why := srv.timeoutReply(c.ph)
			s.write(reply)
			s.flush()
			c.close(why)
		case len(c.in) > 0:
			// Half-close after pipelined commands: answer them, then close.
			c.eof = true
			c.process()
			s.flushAll()
			c.close("client closed")
		default:
			c.close("client closed")
		}
	}
}

// trackStream keeps the set of stream transports so a shutdown can reach
// them.
func (srv *Server) trackStream(s *stream, add bool) {
	srv.streamMu.Lock()
	defer srv.streamMu.Unlock()
	if add {
		srv.streams[s] = struct{}{}
		srv.streamWG.Add(1)
		return
	}
	delete(srv.streams, s)
	srv.streamWG.Done()
}

// wakeStreams makes every stream goroutine look at the drain flag (force
// closes them instead).
func (srv *Server) wakeStreams(force bool) {
	srv.streamMu.Lock()
	defer srv.streamMu.Unlock()
	if force {
		srv.forcing.Store(true)
	}
	for s := range srv.streams {
		// Wake the goroutine from its read; it sees draining or forcing.
		s.raw.SetReadDeadline(time.Now())
		if force {
			// One that is not reading (a hook, a stuck write) gets a
			// moment, then its socket is closed under it.
			raw := s.raw
			time.AfterFunc(2*time.Second, func() { raw.Close() })
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
