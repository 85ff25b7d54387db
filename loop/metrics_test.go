package loop_test

import (
	"testing"
	"time"

	"loopmx/internal/metrics"
	"loopmx/loop"
	"loopmx/plugins"
)

// snapshot reads the server's counts as a scrape would.
func snapshot(ts *testServer) metrics.Snapshot {
	var s metrics.Snapshot
	ts.srv.MetricsSnapshot(&s)
	return s
}

// TestMetricsCountWhatClientsSee: the counts a scrape reads match the
// dialogs the clients had: connections, banners, replies by command and
// class, a hook's refusal by plugin, the blocking queue hook's time and
// wait, the message and how each connection ended.
func TestMetricsCountWhatClientsSee(t *testing.T) {
	deny := &hooks{name: "test/deny", rcpt: func(_ *plugins.Conn, to string) plugins.Result {
		if to == "nobody@example.com" {
			return plugins.Deny(550, "5.1.1", "No such user")
		}
		return plugins.OK()
	}}
	rec := &recorder{block: true}
	ts := startServer(t, func(o *loop.Options) { o.Metrics = true }, 2, 8, deny, rec)

	c := connect(t, ts.addr)
	c.hello()
	c.cmd("MAIL FROM:<a@example.org>", "250")
	c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1")
	c.cmd("RCPT TO:<user@example.com>", "250")
	c.cmd("DATA", "354")
	c.write("Subject: hi\r\n\r\nhello\r\n.\r\n")
	c.expect("250 2.0.0")
	c.cmd("NOOP", "250")
	c.cmd("QUIT", "221")
	c.expectEOF()

	c = connect(t, ts.addr)
	c.cmd("FROB", "500")
	c.cmd("QUIT", "221")
	c.expectEOF()
	ts.waitConnections(t, 0)

	s := snapshot(ts)
	if len(s.Listeners) != 1 || s.Listeners[0] != ts.addr {
		t.Fatalf("listeners %v, want [%s]", s.Listeners, ts.addr)
	}
	l := s.Shard.Listeners[0]
	if l.Opened != 2 || l.Banner.Count() != 2 || l.Closed["quit"] != 2 {
		t.Errorf("opened %d, banners %d, closed %v; want 2, 2 and 2 by quit", l.Opened, l.Banner.Count(), l.Closed)
	}
	for _, r := range []struct {
		cmd   metrics.Command
		class int
		want  uint64
	}{
		{metrics.CmdConnect, 2, 2}, {metrics.CmdEhlo, 2, 1}, {metrics.CmdMail, 2, 1}, {metrics.CmdRcpt, 5, 1},
		{metrics.CmdRcpt, 2, 1}, {metrics.CmdData, 3, 1}, {metrics.CmdMessage, 2, 1}, {metrics.CmdNoop, 2, 1},
		{metrics.CmdQuit, 2, 2}, {metrics.CmdOther, 5, 1},
	} {
		if got := s.Replies[r.cmd][r.class]; got != r.want {
			t.Errorf("replies to %s of class %dxx: %d, want %d", r.cmd, r.class, got, r.want)
		}
	}
	if n := s.Refusals[metrics.Refusal{Plugin: "test/deny", Hook: "rcpt", Code: 550}]; n != 1 || len(s.Refusals) != 1 {
		t.Errorf("refusals %v, want one 550 by test/deny at rcpt", s.Refusals)
	}
	if h := s.Hooks[metrics.HookKey{Plugin: "test/deny", Hook: "rcpt"}]; h == nil || h.Count() != 2 {
		t.Errorf("test/deny's rcpt hook timed %v times, want 2", h)
	}
	if h := s.Hooks[metrics.HookKey{Plugin: "test/recorder", Hook: "queue"}]; h == nil || h.Count() != 1 || s.PoolWait.Count() != 1 {
		t.Errorf("the blocking queue hook: timed %v, pool waits %d; want 1 each", h, s.PoolWait.Count())
	}
	if n := s.Messages[metrics.MessageKey{Plugin: "test/recorder", Outcome: "queued"}]; n != 1 || s.QueueTime.Count() != 1 || s.Size.Counts[0] != 1 {
		t.Errorf("messages %v, queue times %d, sizes %v; want one small message queued by test/recorder", s.Messages, s.QueueTime.Count(), s.Size.Counts)
	}
	if s.Open != 0 || len(s.LoopLag) != 2 || s.PoolWorkers != 2 {
		t.Errorf("open %d, loop lags %v, pool workers %d; want 0, two loops, 2", s.Open, s.LoopLag, s.PoolWorkers)
	}
}

// TestMetricsBannerLeavesOutDelays: a connect hook's deliberate pause is
// the plugin's choice, not the server's slowness: the banner histogram
// counts the time to the banner less the pause.
func TestMetricsBannerLeavesOutDelays(t *testing.T) {
	const pause = 500 * time.Millisecond
	delayed := &hooks{name: "test/pause", connect: func(c *plugins.Conn) plugins.Result {
		if c.EarlyTalker {
			return plugins.Deny(554, "5.5.0", "early")
		}
		if c.Note("paused") != nil {
			return plugins.NoOpinion()
		}
		c.SetNote("paused", true)
		return plugins.Result{Delay: pause}
	}}
	ts := startServer(t, func(o *loop.Options) { o.Metrics = true }, 1, 4, delayed, &recorder{})
	t0 := time.Now()
	c := connect(t, ts.addr)
	waited := time.Since(t0)
	c.cmd("QUIT", "221")
	b := snapshot(ts).Shard.Listeners[0].Banner
	if b.Count() != 1 || time.Duration(b.SumNs) >= pause || waited < pause {
		t.Errorf("the client waited %v for a banner paused %v; the histogram has %d banners summing %v, want one under the pause",
			waited, pause, b.Count(), time.Duration(b.SumNs))
	}
}

// TestMetricsRefusedAtAccept: a connection over max_connections is
// refused with 421 and counted by reason, not as a connection served.
func TestMetricsRefusedAtAccept(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.Metrics = true; o.MaxConnections = 1 }, 1, 4, &recorder{})
	c := connect(t, ts.addr)
	over := dial(t, ts.addr)
	over.expect("421 4.7.0")
	over.expectEOF()
	c.cmd("QUIT", "221")
	ts.waitConnections(t, 0)
	l := snapshot(ts).Shard.Listeners[0]
	if l.Opened != 1 || l.Refused[metrics.RefusedMaxConnections] != 1 {
		t.Errorf("opened %d, refused %v; want 1 served and 1 refused by max_connections", l.Opened, l.Refused)
	}
}

// TestMetricsOff: without Options.Metrics nothing is counted and a
// snapshot is empty.
func TestMetricsOff(t *testing.T) {
	ts := startServer(t, nil, 1, 4, &recorder{})
	c := connect(t, ts.addr)
	c.cmd("QUIT", "221")
	if s := snapshot(ts); len(s.Listeners) != 0 || s.Shard.Listeners != nil {
		t.Errorf("a server without metrics reported %+v", s)
	}
}

// TestMetricsTLSAndProxy: a STARTTLS handshake counts by version, its
// connection's end counts on its listener after the move to the stream
// transport, and PROXY headers count by outcome.
func TestMetricsTLSAndProxy(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts, proxyAddr := proxyServer(t, func(o *loop.Options) { env.with(o); o.Metrics = true }, &recorder{})

	c := connect(t, ts.addr)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	s.quit()

	p := viaProxy(t, proxyAddr, "PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
	p.cmd("QUIT", "221")
	bad := dial(t, proxyAddr)
	bad.write("PROXY NONSENSE\r\n")
	bad.expectClosedSilently()
	ts.waitConnections(t, 0)

	snap := snapshot(ts)
	if n := snap.TLS[metrics.TLSKey{Outcome: "ok", Version: "1.3"}]; n != 1 || len(snap.TLS) != 1 {
		t.Errorf("TLS handshakes %v, want one ok with 1.3", snap.TLS)
	}
	if l := snap.Shard.Listeners[0]; l.Opened != 1 || l.Closed["quit"] != 1 {
		t.Errorf("plain listener: opened %d, closed %v; want the TLS session opened and ended by quit", l.Opened, l.Closed)
	}
	if snap.Proxy[metrics.ProxyOK] != 1 || snap.Proxy[metrics.ProxyMalformed] != 1 {
		t.Errorf("PROXY outcomes %v, want one ok and one malformed", snap.Proxy)
	}
	if l := snap.Shard.Listeners[1]; l.Opened != 2 || l.Closed["quit"] != 1 || l.Closed["bad PROXY header"] != 1 {
		t.Errorf("PROXY listener: opened %d, closed %v", l.Opened, l.Closed)
	}
}

// TestMetricsCommandOf: replies are counted under the verb the client
// sent, in any case; anything else is "other".
func TestMetricsCommandOf(t *testing.T) {
	for in, want := range map[string]metrics.Command{
		"EHLO x\r\n": metrics.CmdEhlo, "ehlo x\r\n": metrics.CmdEhlo, "QUIT\r\n": metrics.CmdQuit, "rset\r\n": metrics.CmdRset,
		"StartTLS\r\n": metrics.CmdStartTLS, "STARTTLSX\r\n": metrics.CmdOther, "STAR\r\n": metrics.CmdOther,
		"MAILX FROM:<>\r\n": metrics.CmdOther, "GET / HTTP/1.1\r\n": metrics.CmdOther, "DAT": metrics.CmdOther,
		"BDAT 10 LAST\r\n": metrics.CmdBdat, "data\r\n": metrics.CmdData,
	} {
		if got := loop.CommandOf([]byte(in)); got != want {
			t.Errorf("%q counts as %s, want %s", in, got, want)
		}
	}
}
