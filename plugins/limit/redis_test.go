package limit_test

import (
	"context"
	"strings"
	"testing"

	_ "loopmx/plugins/rcpt_to.in_host_list"
	"loopmx/plugins/redisx/redistest"
)

// TestServerLimitsInMemory runs the in-memory limits through a real
// server: concurrency per IP, and closing after refusals and after
// unrecognized commands.
func TestServerLimitsInMemory(t *testing.T) {
	dir := configDir(t, "max_concurrency = 1\nmax_errors = 2\nmax_unrecognized = 2\n")
	write(t, dir, "plugins", "limit\nrcpt_to.in_host_list\nqueue/discard\n")
	write(t, dir, "host_list", "example.com\n")
	srv := startServer(t, dir)

	first, ok := tryConnect(t, srv.addr)
	if !ok {
		t.Fatal("first connection refused")
	}
	second, banner := dial(t, srv.addr)
	if banner != refusedConcurrency {
		t.Fatalf("second connection from 127.0.0.1: %q, want %q", banner, refusedConcurrency)
	}
	second.closed()

	first.cmd("EHLO client.test", "250")
	first.cmd("MAIL FROM:<s@example.org>", "250 2.1.0")
	first.cmd("RCPT TO:<a@elsewhere.test>", "550 5.7.1")
	first.cmd("RCPT TO:<b@elsewhere.test>", "550 5.7.1")
	first.cmd("RCPT TO:<c@example.com>", "421 4.7.0 Too many errors")
	first.closed()

	// The closed connection gave its place back.
	var third *client
	eventually(t, "a new connection is admitted", func() bool {
		third, ok = tryConnect(t, srv.addr)
		return ok
	})
	third.cmd("EHLO client.test", "250")
	third.cmd("FOO", "5")
	third.cmd("BAR", "5")
	third.cmd("BAZ", "421 4.7.0 Too many unrecognized commands")
	third.closed()
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
			c, ok := tryConnect(t, addr)
			if !ok {
				t.Fatalf("connection to %s within the rate refused", addr)
			}
			c.cmd("EHLO client.test", "250")
			c.mail("s@example.org", "r@example.com")
			c.quit()
		}
		for _, addr := range []string{b.addr, a.addr} {
			c, first := dial(t, addr)
			if first != refusedRate {
				t.Fatalf("fourth connection, to %s: %q, want %q", addr, first, refusedRate)
			}
			c.closed()
		}
		n, err := rs.Client().Get(ctx, "limit:conn:127.0.0.1").Int()
		if err != nil || n != 5 {
			t.Errorf("limit:conn:127.0.0.1 = %d, %v; want 5 connections counted", n, err)
		}
		if ttl := rs.Client().PTTL(ctx, "limit:conn:127.0.0.1").Val(); ttl <= 0 {
			t.Errorf("the counter has no expiry (PTTL %v)", ttl)
		}
	})

	t.Run("concurrency", func(t *testing.T) {
		dir := configDir(t, "max_concurrency = 2\nconcurrency_ttl = 2s\n")
		rs.WriteINI(dir)
		a, b := startChild(t, dir), startChild(t, dir)
		a1, ok1 := tryConnect(t, a.addr)
		b1, ok2 := tryConnect(t, b.addr)
		if !ok1 || !ok2 {
			t.Fatal("connections within the limit refused")
		}
		for _, addr := range []string{a.addr, b.addr} {
			c, first := dial(t, addr)
			if first != refusedConcurrency {
				t.Fatalf("third open connection, to %s: %q, want %q", addr, first, refusedConcurrency)
			}
			c.closed()
		}
		if n := rs.Client().ZCard(ctx, "limit:open:127.0.0.1").Val(); n != 2 {
			t.Errorf("limit:open:127.0.0.1 holds %d members, want 2", n)
		}

		// Closing a connection on B frees a place on A.
		b1.quit()
		var a2 *client
		eventually(t, "A admits a connection after one closed on B", func() bool {
			var ok bool
			a2, ok = tryConnect(t, a.addr)
			return ok
		})
		a1.quit()
		var b2 *client
		eventually(t, "B admits a connection after one closed on A", func() bool {
			var ok bool
			b2, ok = tryConnect(t, b.addr)
			return ok
		})
		_ = b2

		// B dies with its connection open. Its member is no longer
		// refreshed and stops counting after concurrency_ttl, while A's
		// connection, older than that, is refreshed and still counts.
		b.kill()
		var a3 *client
		eventually(t, "the connection of the dead process stops counting", func() bool {
			var ok bool
			a3, ok = tryConnect(t, a.addr)
			return ok
		})
		c, first := dial(t, a.addr)
		if first != refusedConcurrency {
			t.Fatalf("with a2 and a3 open: %q, want refused (a2 must still count)", first)
		}
		c.closed()
		a2.quit()
		a3.quit()
		eventually(t, "the open set empties when the connections close", func() bool {
			return rs.Client().ZCard(ctx, "limit:open:127.0.0.1").Val() == 0
		})
	})
}

// TestRedisDown kills Redis under running servers: nothing crashes,
// fail = open lets mail through and logs the outage once, fail = closed
// refuses (421 at connect, 451 at RCPT), and when Redis is back on the
// same port every server recovers by itself.
func TestRedisDown(t *testing.T) {
	rs := redistest.Start(t)
	setup := func(ini string) *server {
		dir := configDir(t, ini)
		rs.WriteINI(dir)
		return startServer(t, dir)
	}
	open := setup("fail = open\nmax_concurrency = 50\n[rate]\nconn = 1000/1h\nrcpt_sender = 1000/1h\n")
	closedConnect := setup("fail = closed\nmax_concurrency = 50\n")
	closedRcpt := setup("fail = closed\n[rate]\nrcpt_sender = 1000/1h\n")

	send := func(srv *server) {
		c, ok := tryConnect(t, srv.addr)
		if !ok {
			t.Fatalf("connection to %s refused", srv.addr)
		}
		c.cmd("EHLO client.test", "250")
		c.mail("s@example.org", "r@example.com")
		c.quit()
	}
	for _, srv := range []*server{open, closedConnect, closedRcpt} {
		send(srv)
	}

	rs.Kill()

	for range 5 {
		send(open)
	}
	if n := open.log.count(`"plugin":"limit"`, "redis unavailable"); n != 1 {
		t.Errorf("fail = open logged %d redis unavailable lines for 5 sessions, want 1:\n%s", n, open.log)
	}
	for range 3 {
		c, first := dial(t, closedConnect.addr)
		if first != "421 4.3.0 Service temporarily unavailable, try again later" {
			t.Fatalf("fail = closed at connect: %q", first)
		}
		c.closed()
	}
	c, ok := tryConnect(t, closedRcpt.addr)
	if !ok {
		t.Fatal("fail = closed with only a sender rate refused the connection")
	}
	c.cmd("EHLO client.test", "250")
	c.cmd("MAIL FROM:<s@example.org>", "250")
	c.cmd("RCPT TO:<r@example.com>", "451 4.3.0")
	c.cmd("RSET", "250")
	c.cmd("MAIL FROM:<>", "250") // bounces are not counted per sender
	c.cmd("RCPT TO:<r@example.com>", "250")
	c.quit()

	rs.Restart()

	eventually(t, "fail = closed admits connections again", func() bool {
		c, ok := tryConnect(t, closedConnect.addr)
		if ok {
			c.quit()
		}
		return ok
	})
	eventually(t, "fail = closed accepts recipients again", func() bool {
		c, ok := tryConnect(t, closedRcpt.addr)
		if !ok {
			t.Fatal("connection refused")
		}
		defer c.quit()
		c.cmd("EHLO client.test", "250")
		c.cmd("MAIL FROM:<s@example.org>", "250")
		return strings.HasPrefix(c.cmd("RCPT TO:<r@example.com>", ""), "250")
	})
	eventually(t, "fail = open logs the recovery", func() bool {
		send(open)
		return open.log.count(`"plugin":"limit"`, "redis available again") == 1
	})
	send(open)
	if n := open.log.count("redis available again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	if n := open.log.count("panic"); n != 0 {
		t.Errorf("a panic was logged:\n%s", open.log)
	}
}
