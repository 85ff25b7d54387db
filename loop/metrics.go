package loop

import (
	"crypto/tls"
	"sync"
	"time"

	"loopmx/internal/metrics"
	"loopmx/plugins"
)

// The loop's side of the metrics (docs/metrics.md). Each event loop keeps
// its counts in a metrics.Shard of its own, written with plain stores by
// the loop's goroutine alone; a scrape asks every loop to copy its shard
// out (ctlMetrics) and adds the copies up. Connections on the stream
// transport (TLS, and every connection where epoll does not exist) share
// one shard under a lock: they are few, and each costs a TLS handshake.
// With metrics off (no metrics_listen) there are no meters, and every
// recording call below returns at its first test.

// meter is one shard and the way to read it from another goroutine.
type meter struct {
	shard *metrics.Shard
	mu    *sync.Mutex // the stream meter's lock; nil for a loop's own

	// A loop's accepts, for the accept queue check (metrics_linux.go): the
	// iteration of the last one, and since when it has accepted in every
	// iteration.
	lastIter uint64
	streak   time.Time
	short    int // connections of the streak the kernel said waited 0 ms, in a row (or skipped after)

	// A loop's published copy, for scrapes.
	pubMu   sync.Mutex
	pub     *metrics.Shard
	final   bool            // the loop stopped: pub is its last word
	waiters []chan struct{} // scrapes waiting for the next copy
}

func newMeter(listeners int, shared bool) *meter {
	m := &meter{shard: metrics.NewShard(listeners), pub: metrics.NewShard(listeners)}
	if shared {
		m.mu = &sync.Mutex{}
	}
	return m
}

// lock takes the stream meter's lock; a loop's meter has none.
func (m *meter) lock() {
	if m.mu != nil {
		m.mu.Lock()
	}
}

func (m *meter) unlock() {
	if m.mu != nil {
		m.mu.Unlock()
	}
}

// publish copies the shard out for the scrapes waiting; the owner calls
// it (a loop on ctlMetrics, and once more as it stops).
func (m *meter) publish(final bool) {
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	m.shard.CopyTo(m.pub)
	m.final = m.final || final
	for _, w := range m.waiters {
		close(w)
	}
	m.waiters = nil
}

// request registers a scrape waiting for a fresh copy; nil means the
// published copy is final.
func (m *meter) request() chan struct{} {
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	if m.final {
		return nil
	}
	w := make(chan struct{})
	m.waiters = append(m.waiters, w)
	return w
}

// addPublished adds the published copy to dst.
func (m *meter) addPublished(dst *metrics.Shard) {
	m.pubMu.Lock()
	dst.Add(m.pub)
	m.pubMu.Unlock()
}

// addLocked adds the stream meter's live shard to dst.
func (m *meter) addLocked(dst *metrics.Shard) {
	m.lock()
	dst.Add(m.shard)
	m.unlock()
}

// scrapeWait bounds how long a scrape waits for a busy loop's copy; a
// loop that does not answer in time contributes its previous copy.
const scrapeWait = time.Second

// MetricsSnapshot implements metrics.Source: the stream transports'
// counts, then every event loop's (in that order, so that a connection
// that left its loop for TLS is never counted closed before opened), and
// the gauges of the moment.
func (s *Server) MetricsSnapshot(out *metrics.Snapshot) {
	if s.stream == nil {
		return
	}
	out.Shard = *metrics.NewShard(len(s.listeners))
	s.stream.addLocked(&out.Shard)
	s.addLoopMeters(&out.Shard)
	for _, l := range s.listeners {
		out.Listeners = append(out.Listeners, l.addr.String())
	}
	out.Open = s.conns.Load()
	out.LoopLag = s.loopLags()
	out.PoolQueued, out.PoolBusy, out.PoolWorkers = s.pool.Queued(), s.pool.Busy(), s.pool.Workers()
}

// waitPublished waits until every channel in ws is closed, or scrapeWait.
func waitPublished(ws []chan struct{}) {
	t := time.NewTimer(scrapeWait)
	defer t.Stop()
	for _, w := range ws {
		if w == nil {
			continue
		}
		select {
		case <-w:
		case <-t.C:
			return
		}
	}
}

// startMetrics makes the stream transports' meter when metrics are on.
func (s *Server) startMetrics() {
	if s.opts.Metrics {
		s.stream = newMeter(len(s.listeners), true)
	}
}

// loopMeter returns a new loop's meter, or nil with metrics off.
func (s *Server) loopMeter() *meter {
	if s.stream == nil {
		return nil
	}
	return newMeter(len(s.listeners), false)
}

// listenerIndex returns the position of l among the server's listeners.
func (s *Server) listenerIndex(l *listener) int {
	for i := range s.listeners {
		if &s.listeners[i] == l {
			return i
		}
	}
	return 0
}

// opened counts a connection accepted on listener li and served.
func (m *meter) opened(li int) {
	if m != nil {
		m.lock()
		m.shard.Listeners[li].Opened++
		m.unlock()
	}
}

// refusedAt counts a connection refused right after accept.
func (m *meter) refusedAt(li int, why metrics.AcceptRefusal) {
	if m == nil {
		return
	}
	m.lock()
	m.shard.Listeners[li].Refused[why]++
	if why == metrics.RefusedProxyUntrusted {
		m.shard.Proxy[metrics.ProxyUntrusted]++
	}
	m.unlock()
}

// acceptFailed counts an accept(2) error.
func (m *meter) acceptFailed(li int, e metrics.AcceptError) {
	if m != nil {
		m.lock()
		m.shard.Listeners[li].Errors[e]++
		m.unlock()
	}
}

// connMeter is what a connection keeps for its metrics.
type connMeter struct {
	met        *meter    // its owner's: the loop's, or the stream transports'
	lst        int       // its listener's index
	since      time.Time // the banner's clock: accept, or entry into the accept queue
	cmd        metrics.Command
	paused     time.Duration // Delays asked for before the banner
	banner     bool          // the banner was counted
	call       *callTiming   // the blocking hook in progress
	queueStart time.Time     // when the first queue plugin started
}

// callTiming is when a blocking hook was submitted, started and ended.
// The workpool goroutine writes start and end before it hands the result
// back; the connection reads them only once it has the result.
type callTiming struct {
	submitted, start, end time.Time
}

// metricsInit sets up a new connection's meter: its loop's, or the
// stream transports' (load is the loop on Linux, the server elsewhere).
func (c *conn) metricsInit(l *listener, load plugins.LoadReporter) {
	srv := c.srv
	if srv.stream == nil {
		return
	}
	c.m.met = srv.stream
	if lm, ok := load.(interface{ loopMeter() *meter }); ok {
		c.m.met = lm.loopMeter()
	}
	c.m.lst = srv.listenerIndex(l)
	c.m.since = c.view.Started
	c.view.Timer = c
}

// toStream moves the connection's counts to the stream transports' meter.
func (c *conn) toStream() {
	if c.m.met != nil {
		c.m.met = c.srv.stream
	}
}

// HookTook implements plugins.HookTimer: an inline hook's time.
func (c *conn) HookTook(plugin string, h plugins.Hook, d time.Duration) {
	m := c.m.met
	m.lock()
	m.shard.Hook(plugin, h.String()).Observe(d)
	m.unlock()
}

// bannerSent counts the banner just written: the time since accept,
// less the Delays connect hooks asked for.
func (c *conn) bannerSent() {
	m := c.m.met
	if m == nil || c.m.banner {
		return
	}
	c.m.banner = true
	d := time.Since(c.m.since) - c.m.paused
	m.lock()
	m.shard.Listeners[c.m.lst].Banner.Observe(d)
	m.shard.Replies[metrics.CmdConnect][2]++
	m.unlock()
}

// paused notes a Delay asked for by a hook; before the banner it does
// not count in the banner's time.
func (c *conn) paused(d time.Duration) {
	if c.m.met != nil && !c.greeted {
		c.m.paused += d
	}
}

// peekCommand notes which command the session is about to read.
func (c *conn) peekCommand() {
	if c.m.met == nil || c.sess.InBody() {
		return
	}
	c.m.cmd = commandOf(c.in)
}

// commandOf names the verb that starts in, from its first four letters
// (STARTTLS is the one verb of more).
func commandOf(in []byte) metrics.Command {
	if len(in) < 4 {
		return metrics.CmdOther
	}
	v := uint32(in[0]&^0x20)<<24 | uint32(in[1]&^0x20)<<16 | uint32(in[2]&^0x20)<<8 | uint32(in[3]&^0x20)
	if !verbEnds(in, 4) {
		if v == verb("STAR") && len(in) >= 8 && upper4(in[4:8]) == [4]byte{'T', 'T', 'L', 'S'} && verbEnds(in, 8) {
			return metrics.CmdStartTLS
		}
		return metrics.CmdOther
	}
	switch v {
	case verb("HELO"):
		return metrics.CmdHelo
	case verb("EHLO"):
		return metrics.CmdEhlo
	case verb("MAIL"):
		return metrics.CmdMail
	case verb("RCPT"):
		return metrics.CmdRcpt
	case verb("DATA"):
		return metrics.CmdData
	case verb("BDAT"):
		return metrics.CmdBdat
	case verb("RSET"):
		return metrics.CmdRset
	case verb("NOOP"):
		return metrics.CmdNoop
	case verb("QUIT"):
		return metrics.CmdQuit
	case verb("VRFY"):
		return metrics.CmdVrfy
	case verb("HELP"):
		return metrics.CmdHelp
	}
	return metrics.CmdOther
}

// verbEnds reports whether a verb of n letters ends in at n.
func verbEnds(in []byte, n int) bool {
	return len(in) == n || in[n] == ' ' || in[n] == '\r' || in[n] == '\n'
}

// verb packs a four-letter verb as commandOf reads one.
func verb(s string) uint32 {
	return uint32(s[0])<<24 | uint32(s[1])<<16 | uint32(s[2])<<8 | uint32(s[3])
}

// upper4 upper-cases four letters.
func upper4(b []byte) [4]byte {
	return [4]byte{b[0] &^ 0x20, b[1] &^ 0x20, b[2] &^ 0x20, b[3] &^ 0x20}
}

// replied counts the reply b (to the command being answered, or to the
// message when h is a message hook) and returns it.
func (c *conn) replied(h plugins.Hook, b []byte) []byte {
	m := c.m.met
	if m == nil || len(b) == 0 {
		return b
	}
	cmd := c.m.cmd
	switch h {
	case plugins.HookConnect:
		cmd = metrics.CmdConnect
	case plugins.HookDataPost, plugins.HookQueue:
		cmd = metrics.CmdMessage
	}
	m.lock()
	m.shard.Replies[cmd][metrics.ClassOf(b)]++
	m.unlock()
	return b
}

// refused counts a refusal a hook decided.
func (c *conn) refused(h plugins.Hook, plugin string, code int) {
	m := c.m.met
	if m == nil {
		return
	}
	if plugin == "" {
		plugin = "none"
	}
	m.lock()
	m.shard.Refusals[metrics.Refusal{Plugin: plugin, Hook: h.String(), Code: code}]++
	m.unlock()
}

// timed wraps a blocking hook's job to note when it starts and ends on
// the workpool.
func (c *conn) timed(job func() plugins.Result) func() plugins.Result {
	if c.m.met == nil {
		return job
	}
	t := &callTiming{submitted: time.Now()}
	c.m.call = t
	return func() plugins.Result {
		t.start = time.Now()
		r := job()
		t.end = time.Now()
		return r
	}
}

// hookTimed counts the blocking hook that just answered: its wait for a
// worker and its run.
func (c *conn) hookTimed() { c.blockingDone(true) }

// hookTimedOut counts a blocking hook that overran its timeout, for the
// time until it was given up on (its job may still run: its times are
// not read).
func (c *conn) hookTimedOut() { c.blockingDone(false) }

func (c *conn) blockingDone(answered bool) {
	t := c.m.call
	if t == nil {
		return
	}
	c.m.call = nil
	run := time.Since(t.submitted)
	m := c.m.met
	m.lock()
	if answered {
		run = t.end.Sub(t.start)
		m.shard.PoolWait.Observe(t.start.Sub(t.submitted))
	}
	m.shard.Hook(c.setup.chain.PluginAt(c.call.Hook, c.callIdx), c.call.Hook.String()).Observe(run)
	m.unlock()
}

// hookStarting notes when the queue hook's first plugin starts, by the
// transport's clock (an event loop's is the time it woke: a queue hook
// is timed to the batch of work, enough for fsyncs and next hops).
func (c *conn) hookStarting(h plugins.Hook, i int) {
	if c.m.met != nil && h == plugins.HookQueue && i == 0 {
		c.m.queueStart = c.tr.now()
	}
}

// messageDone counts a message the data_post or queue hooks decided on.
func (c *conn) messageDone(call plugins.Call, res plugins.Result, code int) {
	m := c.m.met
	if m == nil || call.Msg == nil {
		return
	}
	m.lock()
	defer m.unlock()
	m.shard.Size.Observe(call.Msg.Size())
	if call.Hook != plugins.HookQueue {
		return
	}
	outcome := "queued"
	switch {
	case code >= 500:
		outcome = "rejected"
	case code >= 400:
		outcome = "deferred"
	}
	plugin := res.Plugin
	if plugin == "" {
		plugin = "none"
	}
	m.shard.Messages[metrics.MessageKey{Plugin: plugin, Outcome: outcome}]++
	if !c.m.queueStart.IsZero() {
		m.shard.QueueTime.Observe(c.tr.now().Sub(c.m.queueStart))
		c.m.queueStart = time.Time{}
	}
}

// proxyHeader counts a PROXY header's outcome.
func (c *conn) proxyHeader(o metrics.ProxyOutcome) {
	m := c.m.met
	if m == nil {
		return
	}
	m.lock()
	m.shard.Proxy[o]++
	m.unlock()
}

// tlsVersionNames name the protocol versions of loopmx_tls_handshakes_total.
var tlsVersionNames = map[uint16]string{tls.VersionTLS10: "1.0", tls.VersionTLS11: "1.1", tls.VersionTLS12: "1.2", tls.VersionTLS13: "1.3"}

// tlsHandshake counts a TLS handshake: st when it succeeded, else err.
func (c *conn) tlsHandshake(st *tls.ConnectionState, err error) {
	m := c.m.met
	if m == nil {
		return
	}
	k := metrics.TLSKey{Outcome: "failed", Version: "none"}
	if err == nil && st != nil {
		k = metrics.TLSKey{Outcome: "ok", Version: tlsVersionNames[st.Version]}
		if k.Version == "" {
			k.Version = "other"
		}
	}
	m.lock()
	m.shard.TLS[k]++
	m.unlock()
}

// closedMetrics counts the connection's end.
func (c *conn) closedMetrics() {
	m := c.m.met
	if m == nil {
		return
	}
	m.lock()
	m.shard.Listeners[c.m.lst].Closed[c.endReason]++
	if c.proxyWait && c.endReason == "no PROXY header in time" {
		m.shard.Proxy[metrics.ProxyTimeout]++
	}
	m.unlock()
}

// proxyOutcome is the outcome of a valid PROXY header.
func proxyOutcome(local bool) metrics.ProxyOutcome {
	if local {
		return metrics.ProxyLocal
	}
	return metrics.ProxyOK
}

// Ready reports whether the server takes connections: it is not draining.
func (s *Server) Ready() bool { return !s.draining.Load() && !s.leaving.Load() }

// Leave makes Ready false while the server still serves: the start of a
// drain that a load balancer follows (smtp.ini drain_grace).
func (s *Server) Leave() { s.leaving.Store(true) }
