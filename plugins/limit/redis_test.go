package limit_test

import (
	"context"
	"strings"
	"testing"

	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/rcpt_to.in_host_list"
)

// TestServerLimitsInMemory runs the in-memory limits through a real
// server: concurrency per IP, and closing after refusals and after
// unrecognized commands.
func TestServerLimitsInMemory(t *testing.T) {
	dir := configDir(t, "max_concurrency = 1\nmax_errors = 2\nmax_unrecognized = 2\n")
	servertest.Write(t, dir, "plugins", "limit\nrcpt_to.in_host_list\nqueue/discard\n")
	servertest.Write(t, dir, "host_list", "example.com\n")
	srv := servertest.StartDir(t, dir)

	first, ok := dialer.TryConnect(t, srv.Addr)
	if !ok {
		t.Fatal("first connection refused")
	}
	second, banner := dialer.Greet(t, srv.Addr)
	if banner != refusedConcurrency {
		t.Fatalf("second connection from 127.0.0.1: %q, want %q", banner, refusedConcurrency)
	}
	second.ExpectEOF()

	first.Cmd("EHLO client.test", "250")
	first.Cmd("MAIL FROM:<s@example.org>", "250 2.1.0")
	first.Cmd("RCPT TO:<a@elsewhere.test>", "550 5.7.1")
	first.Cmd("RCPT TO:<b@elsewhere.test>", "550 5.7.1")
	first.Cmd("RCPT TO:<c@example.com>", "421 4.7.0 Too many errors")
	first.ExpectEOF()

	// The closed connection gave its place back.
	var third *servertest.Client
	servertest.Eventually(t, poll, "a new connection is admitted", func() bool {
		third, ok = dialer.TryConnect(t, srv.Addr)
		return ok
	})
	third.Cmd("EHLO client.test", "250")
	third.Cmd("FOO", "5")
	third.Cmd("BAR", "5")
	third.Cmd("BAZ", "421 4.7.0 Too many unrecognized commands")
	third.ExpectEOF()
}

// TestSharedAcrossProcesses runs two loopmx processes on one Redis: the
// connections per IP per period and the open connections per IP are
// counted across both, and the connections of a process that dies stop
// counting once their lifetime passes.
func TestSharedAcrossProcesses(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()

	t.Run("rate", func(t *testing.T) {
		dir := configDir(t, "[rate]\nconn = 3/1h\n")
		rs.WriteINI(dir)
		a, b := startChild(t, dir), startChild(t, dir)
		for _, addr := range []string{a.addr, b.addr, a.addr} {
			c := dialer.Hello(t, addr)
			c.Mail("s@example.org", "r@example.com")
			c.Quit()
		}
		for _, addr := range []string{b.addr, a.addr} {
			c, first := dialer.Greet(t, addr)
			if first != refusedRate {
				t.Fatalf("fourth connection, to %s: %q, want %q", addr, first, refusedRate)
			}
			c.ExpectEOF()
		}
		n, err := rs.Client().Get(ctx, "limit:conn:{127.0.0.1}").Int()
		if err != nil || n != 5 {
			t.Errorf("limit:conn:{127.0.0.1} = %d, %v; want 5 connections counted", n, err)
		}
		if ttl := rs.Client().PTTL(ctx, "limit:conn:{127.0.0.1}").Val(); ttl <= 0 {
			t.Errorf("the counter has no expiry (PTTL %v)", ttl)
		}
	})

	t.Run("concurrency", func(t *testing.T) {
		dir := configDir(t, "max_concurrency = 2\nconcurrency_ttl = 2s\n")
		rs.WriteINI(dir)
		a, b := startChild(t, dir), startChild(t, dir)
		a1, ok1 := dialer.TryConnect(t, a.addr)
		b1, ok2 := dialer.TryConnect(t, b.addr)
		if !ok1 || !ok2 {
			t.Fatal("connections within the limit refused")
		}
		for _, addr := range []string{a.addr, b.addr} {
			c, first := dialer.Greet(t, addr)
			if first != refusedConcurrency {
				t.Fatalf("third open connection, to %s: %q, want %q", addr, first, refusedConcurrency)
			}
			c.ExpectEOF()
		}
		if n := rs.Client().ZCard(ctx, "limit:open:{127.0.0.1}").Val(); n != 2 {
			t.Errorf("limit:open:{127.0.0.1} holds %d members, want 2", n)
		}

		// Closing a connection on B frees a place on A.
		b1.Quit()
		var a2 *servertest.Client
		servertest.Eventually(t, poll, "A admits a connection after one closed on B", func() bool {
			var ok bool
			a2, ok = dialer.TryConnect(t, a.addr)
			return ok
		})
		a1.Quit()
		var b2 *servertest.Client
		servertest.Eventually(t, poll, "B admits a connection after one closed on A", func() bool {
			var ok bool
			b2, ok = dialer.TryConnect(t, b.addr)
			return ok
		})
		_ = b2

		// B dies with its connection open. Its member is no longer
		// refreshed and stops counting after concurrency_ttl, while A's
		// connection, older than that, is refreshed and still counts.
		b.kill()
		var a3 *servertest.Client
		servertest.Eventually(t, poll, "the connection of the dead process stops counting", func() bool {
			var ok bool
			a3, ok = dialer.TryConnect(t, a.addr)
			return ok
		})
		c, first := dialer.Greet(t, a.addr)
		if first != refusedConcurrency {
			t.Fatalf("with a2 and a3 open: %q, want refused (a2 must still count)", first)
		}
		c.ExpectEOF()
		a2.Quit()
		a3.Quit()
		servertest.Eventually(t, poll, "the open set empties when the connections close", func() bool {
			return rs.Client().ZCard(ctx, "limit:open:{127.0.0.1}").Val() == 0
		})
	})
}

// TestRedisDown kills Redis under running servers: nothing crashes,
// fail = open lets mail through and logs the outage once, fail = closed
// refuses (421 at connect, 451 at RCPT), and when Redis is back on the
// same port every server recovers by itself.
func TestRedisDown(t *testing.T) {
	rs := redistest.Start(t)
	setup := func(ini string) *servertest.Server {
		dir := configDir(t, ini)
		rs.WriteINI(dir)
		return servertest.StartDir(t, dir)
	}
	open := setup("fail = open\nmax_concurrency = 50\n[rate]\nconn = 1000/1h\nrcpt_sender = 1000/1h\n")
	closedConnect := setup("fail = closed\nmax_concurrency = 50\n")
	closedRcpt := setup("fail = closed\n[rate]\nrcpt_sender = 1000/1h\n")

	send := func(srv *servertest.Server) {
		c := dialer.Hello(t, srv.Addr)
		c.Mail("s@example.org", "r@example.com")
		c.Quit()
	}
	for _, srv := range []*servertest.Server{open, closedConnect, closedRcpt} {
		send(srv)
	}

	rs.Kill()

	for range 5 {
		send(open)
	}
	if n := open.Log.Count(`"plugin":"limit"`, "redis unavailable"); n != 1 {
		t.Errorf("fail = open logged %d redis unavailable lines for 5 sessions, want 1:\n%s", n, open.Log)
	}
	for range 3 {
		c, first := dialer.Greet(t, closedConnect.Addr)
		if first != "421 4.3.0 Service temporarily unavailable, try again later" {
			t.Fatalf("fail = closed at connect: %q", first)
		}
		c.ExpectEOF()
	}
	c := dialer.Hello(t, closedRcpt.Addr)
	c.Cmd("MAIL FROM:<s@example.org>", "250")
	c.Cmd("RCPT TO:<r@example.com>", "451 4.3.0")
	c.Cmd("RSET", "250")
	c.Cmd("MAIL FROM:<>", "250") // bounces are not counted per sender
	c.Cmd("RCPT TO:<r@example.com>", "250")
	c.Quit()

	rs.Restart()

	servertest.Eventually(t, poll, "fail = closed admits connections again", func() bool {
		c, ok := dialer.TryConnect(t, closedConnect.Addr)
		if ok {
			c.Quit()
		}
		return ok
	})
	servertest.Eventually(t, poll, "fail = closed accepts recipients again", func() bool {
		c := dialer.Hello(t, closedRcpt.Addr)
		defer c.Quit()
		c.Cmd("MAIL FROM:<s@example.org>", "250")
		return strings.HasPrefix(c.Cmd("RCPT TO:<r@example.com>", ""), "250")
	})
	servertest.Eventually(t, poll, "fail = open logs the recovery", func() bool {
		send(open)
		return open.Log.Count(`"plugin":"limit"`, "redis available again") == 1
	})
	send(open)
	if n := open.Log.Count("redis available again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	if n := open.Log.Count("panic"); n != 0 {
		t.Errorf("a panic was logged:\n%s", open.Log)
	}
}
