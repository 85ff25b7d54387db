package loop

import (
	"net/netip"
	"os"
	"strconv"
	"time"

	"loopmx/internal/metrics"
	"loopmx/plugins"
	"loopmx/proxyproto"
	"loopmx/smtpproto"
)

// maxOutPending caps the replies kept for a client that does not read
// them; past it the connection stops parsing its input. It holds a few
// hundred pipelined replies, far more than a client that reads them
// ever leaves unread, and keeps a client that does not read at a few KiB.
const maxOutPending = 8 << 10

// conn is one client's SMTP session: the protocol state, what plugins see
// of it, and the hook in progress. Its transport moves the bytes; only
// the transport's goroutine touches conn (and, while a blocking hook runs
// on the workpool, that hook touches view and call).
type conn struct {
	srv   *Server
	setup *generation // the chain and settings the connection started with
	tr    transport
	sess  *smtpproto.Session
	view  *plugins.Conn // what plugins see; the owner of the envelope

	in  []byte // unprocessed input; nil when there is none
	out []byte // unsent output; nil when there is none

	kind       listenKind // what the listener it came from speaks
	greeted    bool       // the banner was sent
	pending    bool       // a blocking hook or a Delay is outstanding
	closing    bool       // close once out is written
	quitting   bool       // QUIT was answered with nothing after it: the next write is the last
	closed     bool
	eof        bool // the client half-closed; finish its input, then close
	proxyWait  bool // waiting for the PROXY header
	secure     bool // the session runs over TLS
	handoff    bool // moving to the stream transport; it starts after this event
	earlyTalk  bool // input arrived before the banner
	ipHeld     bool // counted in the per-IP limit
	outFull    bool // parsing stopped with input left because the replies hit maxOutPending
	endReason  string
	tlsRefusal []byte // implicit TLS refused at connect: sent after the handshake

	// deadlines (guard.go): the phase, when it started and the message
	// octets read in it; moved says a command completed since the phase
	// was last noted
	ph        uint8
	moved     bool
	since     time.Time
	bodyBytes int64

	call    plugins.Call // the hook in progress
	callIdx int          // the position of its plugin in the chain
	gen     uint32       // counts blocking hooks; a result of an older one is dropped
	msg     *plugins.Message

	// the memory of the last transaction and message, used again for the
	// next while the connection is private: see spare
	txMem  *plugins.Transaction
	msgMem *plugins.Message

	refusals []string // "<hook> <code> <plugin>" of the refusals in the open transaction

	// the message body beyond memory (spool.go)
	spool    *os.File     // where the body spilled; nil while it fits in memory
	spooled  int64        // octets written to spool
	held     int          // body buffer octets counted in the server's max_body_memory
	spoolErr error        // the body could not be written: the message is refused at its end
	spilling *spillJob    // the spool write in flight
	msgWait  bool         // the message waits for its last spool write
	msgHook  plugins.Hook // the hook it will then start (a message's call has no argument)

	m connMeter // what the metrics need (metrics.go)
}

// spare is the memory of an ended connection that nothing else holds,
// kept for a later one: no job of the connection ever went to a pool, so
// only the loop and inline hooks saw it, and inline hooks keep nothing
// past their return (docs/plugins.md, "What a hook may keep"). Any field
// may be nil.
type spare struct {
	sess *smtpproto.Session
	view *plugins.Conn
	tx   *plugins.Transaction
	msg  *plugins.Message
}

// clear drops what the ended connection's objects refer to, so a spare
// keeps no message, notes or strings alive while it waits.
func (s *spare) clear() {
	if s.sess != nil {
		*s.sess = smtpproto.Session{}
	}
	if s.view != nil {
		*s.view = plugins.Conn{}
	}
	if s.tx != nil {
		*s.tx = plugins.Transaction{}
	}
	if s.msg != nil {
		*s.msg = plugins.Message{}
	}
}

// init fills a new connection accepted from l, in the memory of sp where
// it has some.
func (c *conn) init(srv *Server, peer, local netip.AddrPort, l *listener, now time.Time, load plugins.LoadReporter, sp spare) {
	c.srv = srv
	c.setup = srv.gen.Load()
	c.setup.acquire()
	if sp.sess != nil {
		sp.sess.Restart(c.setup.proto)
		c.sess = sp.sess
	} else {
		c.sess = smtpproto.NewSession(c.setup.proto)
	}
	c.kind = l.kind
	c.view = sp.view
	if c.view == nil {
		c.view = new(plugins.Conn)
	}
	c.txMem, c.msgMem = sp.tx, sp.msg
	*c.view = plugins.Conn{
		ID:         srv.idPrefix + "." + strconv.FormatUint(srv.connSeq.Add(1), 36),
		RemoteIP:   peer.Addr().Unmap(),
		RemotePort: peer.Port(),
		LocalIP:    local.Addr().Unmap(),
		LocalPort:  local.Port(),
		Hostname:   c.setup.proto.Hostname,
		Log:        &srv.log,
		Started:    now,
		LoadSource: load,
	}
	c.metricsInit(l, load)
}

// start runs the connect hooks, then greets.
func (c *conn) start() {
	if c.setup.chain.Has(plugins.HookConnect) {
		c.runHook(plugins.Call{Hook: plugins.HookConnect}, 0)
	} else {
		c.greet()
	}
	c.tr.flush()
}

func (c *conn) greet() {
	if c.kind.TLS && !c.secure {
		c.tr.startTLS() // implicit TLS: handshake first, banner after
		return
	}
	c.greeted = true
	c.tr.write(c.setup.proto.Banner())
	c.bannerSent()
	c.process()
}

// parseProxy reads the PROXY protocol header that a load balancer sends
// before anything else, and reports whether it is complete and valid. A
// malformed one closes the connection without a banner; a valid one
// replaces the client address everywhere. The transport then ends its
// wait for the header and calls proxied.
func (c *conn) parseProxy() bool {
	h, n, err := proxyproto.Parse(c.in)
	if err == proxyproto.ErrNeedMore {
		c.tr.retain()
		return false
	}
	if err != nil {
		c.proxyHeader(metrics.ProxyMalformed)
		c.tr.logger().Info().Str("conn", c.view.ID).Str("ip", c.view.RemoteIP.String()).Err(err).Msg("bad PROXY header; closing")
		c.close("bad PROXY header")
		return false
	}
	c.in = c.in[n:]
	c.proxyWait = false
	c.proxyHeader(proxyOutcome(h.Local))
	if !h.Local {
		c.view.RemoteIP, c.view.RemotePort = h.Source.Addr().Unmap(), h.Source.Port()
		c.view.LocalIP, c.view.LocalPort = h.Dest.Addr().Unmap(), h.Dest.Port()
	}
	return true
}

// proxied starts the session of a client named by a PROXY header, after
// the per-address limit.
func (c *conn) proxied() {
	srv := c.srv
	if !srv.acquireIP(c.view.RemoteIP) {
		c.tr.write(srv.replyTooManyIP)
		c.shutdown("too many connections from the address")
		return
	}
	c.ipHeld = true
	c.earlyTalk = len(c.in) > 0
	c.start()
}

// process feeds buffered input to the session until it needs more input, a
// hook waits, or the connection is to close.
func (c *conn) process() {
	if c.handoff {
		return
	}
	c.outFull = false
	for c.greeted && !c.pending && !c.closing && !c.closed && len(c.out) < maxOutPending {
		if c.tr.draining() && !c.sess.Tx().Active {
			// Shutting down: a session outside a transaction ends here,
			// before it can start another one.
			c.drainCheck()
			break
		}
		c.peekCommand()
		n, ev := c.sess.Next(c.in)
		c.in = c.in[n:]
		if ev.Kind != smtpproto.KindNeedMore {
			c.moved = true // progress: the deadline starts again
		}
		if len(ev.Reply) > 0 {
			c.tr.write(c.replied(plugins.NoHook, ev.Reply))
		}
		switch ev.Kind {
		case smtpproto.KindNeedMore:
			c.spillCheck()
			c.tr.retain()
			if c.tr.draining() {
				c.drainCheck()
			}
			if c.eof {
				c.shutdown("client closed")
			}
			return
		case smtpproto.KindReset:
			c.endTx("reset", 0, 0)
		case smtpproto.KindReply:
			if ev.EndTx {
				c.endTx("refused", replyCode(ev.Reply), 0)
			}
		case smtpproto.KindQuit:
			c.quit()
			return
		case smtpproto.KindStartTLS:
			c.tr.startTLS()
			return
		default:
			if h, ok := plugins.HookFor(ev.Kind, c.sess.PendingEHLO()); ok {
				call := plugins.Call{Hook: h, Arg: ev.Arg}
				if h == plugins.HookMail {
					// The mail hooks already see the transaction they
					// decide on (and record their results in it).
					c.beginTx(ev.Arg)
				}
				if ev.Kind == smtpproto.KindMessage {
					c.endOfMessage(call)
					continue
				}
				c.runHook(call, 0)
			}
		}
		if ev.Close {
			c.shutdown("too many errors")
		}
	}
	// Input left because the client does not read its replies: the
	// transport resumes parsing once they are written, whether or not
	// more input arrives.
	c.outFull = len(c.out) >= maxOutPending && len(c.in) > 0
	c.tr.retain()
}

// phase tells which deadline applies to the connection now (guard.go).
func (c *conn) phase() uint8 {
	switch {
	case c.closing:
		return phaseClosing
	case c.sess.InBody():
		return phaseBody
	case len(c.in) > 0:
		// A command has begun, or complete ones wait behind replies the
		// client does not read.
		return phaseLine
	}
	return phaseIdle
}

// rephase notes the phase after an event and reports whether a new
// deadline starts: the phase changed or a command completed. Octets
// alone never start one.
func (c *conn) rephase(now time.Time) bool {
	p := c.phase()
	if p == c.ph && !c.moved {
		return false
	}
	c.restart(p, now)
	return true
}

// restart starts phase p at now.
func (c *conn) restart(p uint8, now time.Time) {
	c.ph, c.moved, c.since, c.bodyBytes = p, false, now, 0
}

// endTx tells the tx_end hooks, writes the transaction's log line and
// forgets the transaction.
func (c *conn) endTx(result string, code int, size int64) {
	c.releaseMessage()
	tx := c.view.Tx
	if tx == nil {
		return
	}
	if c.setup.chain.Has(plugins.HookTxEnd) {
		c.setup.chain.TxEnded(c.view, tx)
	}
	now := c.tr.now()
	f := txFields{id: tx.ID, helo: c.view.Helo, from: tx.From, result: result, ip: c.view.RemoteIP,
		rcpts: tx.Rcpts, refused: c.refusals, size: size, code: code, dur: now.Sub(tx.Started)}
	if o := c.tr.lines(); o == nil || !o.transaction(&f, now) {
		if l := c.tr.logger().Info(); l.Enabled() {
			f.log(l)
		}
	}
	c.refusals = c.refusals[:0]
	c.view.EndTx()
}

// private reports whether only this goroutine and inline hooks have seen
// the connection's objects: no job ever went to a pool (each one counts
// in gen). Then their memory may serve again (see spare).
func (c *conn) private() bool { return c.gen == 0 }

// beginTx starts the transaction of MAIL FROM:<from>, in the memory of
// the connection's last one while the connection is private.
func (c *conn) beginTx(from string) {
	if c.txMem == nil || !c.private() {
		c.txMem = new(plugins.Transaction)
	}
	c.view.BeginTxIn(c.txMem, from, c.tr.now())
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
	c.tr.write(c.srv.replyShutdown)
	c.tr.flush()
	c.shutdown("shutdown")
}

// quit closes right after the 221 is written: the client asked to end and
// has nothing more to send, so there is no reset to fear.
func (c *conn) quit() {
	// A client that sent more after its QUIT gets a reset from the close
	// (its input is unread); the 221 must then be on its way before, not
	// held for the FIN.
	c.quitting = len(c.in) == 0
	c.tr.flush()
	if len(c.out) == 0 && !c.closed {
		c.close("quit")
		return
	}
	c.shutdown("quit")
}

// shutdown closes the connection once its replies are written.
func (c *conn) shutdown(why string) {
	if c.closing || c.closed {
		return
	}
	c.closing = true
	c.setEndReason(why)
	c.tr.closeWhenFlushed()
}

// close closes the connection now.
func (c *conn) close(why string) {
	if c.closed {
		return
	}
	c.setEndReason(why)
	c.tr.closeNow()
}

// setEndReason keeps the first reason given for the end of the connection.
func (c *conn) setEndReason(why string) {
	if c.endReason == "" {
		c.endReason = why
	}
}

// ended is the transports' last step of a close: the connection no longer
// counts, and its end is logged once no hook is outstanding.
func (c *conn) ended() {
	c.closed = true
	c.closedMetrics()
	c.srv.conns.Add(-1)
	if c.ipHeld {
		c.srv.releaseIP(c.view.RemoteIP)
	}
	c.in, c.out = nil, nil
	if !c.pending {
		c.finish()
	}
}

// finish runs disconnect hooks and writes the connection's log line.
func (c *conn) finish() {
	c.endTx("aborted", 0, 0)
	ch, gen := c.setup.chain, c.setup
	release := true
	if ch.Has(plugins.HookDisconnect) {
		call := plugins.Call{Hook: plugins.HookDisconnect}
		if _, next, done := ch.Step(c.view, &call, 0); !done {
			view := c.view
			// The chain stays in use until its last disconnect hook ran.
			release = !c.srv.pool.Submit(func() { ch.RunFrom(view, &call, next); gen.release() })
			if release {
				c.tr.logger().Warn().Str("conn", c.view.ID).Msg("workpool full: disconnect hooks skipped")
			}
		}
	}
	now := c.tr.now()
	f := connFields{id: c.view.ID, helo: c.view.Helo, end: c.endReason, ip: c.view.RemoteIP,
		txs: c.view.Transactions(), errs: c.sess.Errors(), dur: now.Sub(c.view.Started)}
	if o := c.tr.lines(); o == nil || !o.connection(&f, now) {
		if l := c.tr.logger().Info(); l.Enabled() {
			f.log(l)
		}
	}
	sp := spare{sess: c.sess, view: c.view, tx: c.txMem, msg: c.msgMem}
	c.sess = nil
	if release {
		gen.release()
	}
	if release && c.private() {
		// The disconnect hooks ran here too: nothing else holds the
		// connection.
		c.tr.retire(sp)
	}
}
