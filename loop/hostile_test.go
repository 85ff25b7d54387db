package loop_test

// Hostile clients over real TCP: tricklers that would hold a connection
// with a byte now and then, stress mode, the per-address limit, and the
// memory a client that does not read, declares a large SIZE or sends a
// message certain to be refused may cost.

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"loopmx/loop"
)

// trickle writes data one octet every interval, until it is all sent,
// stop is closed or a write fails.
func trickle(w io.Writer, data string, every time.Duration, stop <-chan struct{}) {
	go func() {
		for i := 0; i < len(data); i++ {
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
			if _, err := w.Write([]byte{data[i]}); err != nil {
				return
			}
		}
	}()
}

// deliverOne runs one whole transaction on c and requires the 250.
func deliverOne(c *client, body string) {
	c.t.Helper()
	c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.cmd(body+"\r\n.", "250 2.0.0")
}

// A client that trickles a command line a byte every 200 ms is cut once
// the line's deadline (command_timeout) has passed, although it is never
// silent for long; an honest client on the same server is served. The
// inactivity timeout (30 s) is longer than the client's read timeout, so
// the 421 can only come from the line deadline.
func TestTricklerIsCutMidLine(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { o.CommandTimeout = time.Second }, 2, 16, hostList(), rec)
	tr := connect(t, ts.addr)
	stop := make(chan struct{})
	defer close(stop)
	trickle(tr.conn, "EHLO "+strings.Repeat("a", 400)+"\r\n", 200*time.Millisecond, stop)

	honest := connect(t, ts.addr)
	honest.hello()
	deliverOne(honest, "Subject: hi\r\n\r\nhello")
	honest.cmd("QUIT", "221 2.0.0")

	tr.expectLine("421 4.4.2 mx.test Error: command line not completed in time")
	tr.expectEOF()
	if n := len(rec.messages()); n != 1 {
		t.Fatalf("%d messages queued, want the honest one", n)
	}
	waitLog(t, ts, `"end":"command timeout"`)
}

// A message trickled a byte every 200 ms (5 bytes/s) against a minimum
// rate of 100 bytes/s is cut after its grace and dropped, while one sent
// well above the rate for longer than the grace is taken.
func TestSlowMessageIsCut(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) {
		o.CommandTimeout = time.Second
		o.DataMinRate = 100
	}, 2, 16, hostList(), rec)

	slow := connect(t, ts.addr)
	slow.hello()
	slow.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	slow.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	slow.cmd("DATA", "354 ")
	stop := make(chan struct{})
	defer close(stop)
	trickle(slow.conn, "Subject: slow\r\n\r\n"+strings.Repeat("x", 1000)+"\r\n.\r\n", 200*time.Millisecond, stop)

	// 200 bytes every 100 ms, 20 times the minimum rate, for 2 s: longer
	// than the grace, but the octets earned the time.
	steady := connect(t, ts.addr)
	steady.hello()
	steady.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	steady.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	steady.cmd("DATA", "354 ")
	line := strings.Repeat("y", 198) + "\r\n"
	for range 20 {
		steady.write(line)
		time.Sleep(100 * time.Millisecond)
	}
	steady.cmd(".", "250 2.0.0")

	slow.expectLine("421 4.4.2 mx.test Error: message data too slow")
	slow.expectEOF()
	msgs := rec.messages()
	if len(msgs) != 1 || !strings.HasPrefix(msgs[0].Body, "yyy") {
		t.Fatalf("queued %d messages, want the steady one only", len(msgs))
	}
}

// The stream transport (TLS) keeps the same deadlines.
func TestTricklerIsCutOverTLS(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts := startServer(t, func(o *loop.Options) {
		env.with(o)
		o.CommandTimeout = time.Second
	}, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	stop := make(chan struct{})
	defer close(stop)
	trickle(s.conn, "EHLO "+strings.Repeat("b", 400)+"\r\n", 200*time.Millisecond, stop)
	s.expectLine("421 4.4.2 mx.test Error: command line not completed in time")
	s.expectEOF()
}

// Stress mode: with half of max_connections open, idle clients are cut
// after stress_timeout instead of the inactivity timeout; the log says so
// once, and a second bout within the minute adds no line.
func TestStressModeShortensTimeouts(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) {
		o.Loops = 1
		o.MaxConnections = 10
		o.StressThreshold = 50
		o.StressTimeout = time.Second
	}, 2, 16, hostList(), &recorder{})
	for bout := 1; bout <= 2; bout++ {
		var idle []*client
		for range 5 {
			c := connect(t, ts.addr)
			c.hello()
			idle = append(idle, c)
		}
		for _, c := range idle {
			c.expectLine("421 4.4.2 mx.test Error: timeout exceeded")
		}
		for _, c := range idle {
			c.expectEOF()
		}
		ts.waitConnections(t, 0)
		waitLog(t, ts, "stress over")
	}
	logs := ts.log.String()
	if n := strings.Count(logs, "server under stress"); n != 1 {
		t.Errorf("%d stress lines in the log, want 1 (at most one a minute):\n%s", n, logs)
	}
}

// waitLog waits until the server's log holds s.
func waitLog(t *testing.T, ts *testServer, s string) {
	t.Helper()
	waitLogCount(t, ts, s, 1)
}

// waitLogCount waits until the server's log holds s n times.
func waitLogCount(t *testing.T, ts *testServer, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for strings.Count(ts.log.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the log said %q %d times, not %d:\n%s", s, strings.Count(ts.log.String(), s), n, ts.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialFrom connects from the local address ip, without reading the banner.
func dialFrom(t *testing.T, addr, ip string) *client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	return &client{t: t, conn: nc.(*net.TCPConn), r: bufio.NewReader(nc)}
}

// The per-address limit: the connection past it from 127.0.0.1 gets
// 421 4.7.0, another address is still served, and the refusals are
// logged at most once a second with their count.
func TestPerAddressLimit(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { o.MaxConnectionsPerIP = 3 }, 2, 16, hostList(), rec)
	for range 3 {
		dialFrom(t, ts.addr, "127.0.0.1").expectLine("220 mx.test ESMTP loopmx")
	}
	start := time.Now()
	const refusals = 10
	for range refusals {
		c := dialFrom(t, ts.addr, "127.0.0.1")
		c.expectLine("421 4.7.0 mx.test Too many connections from your address (limit 3), try again later")
		c.expectEOF()
	}
	elapsed := time.Since(start)

	other := dialFrom(t, ts.addr, "127.0.0.2")
	other.expectLine("220 mx.test ESMTP loopmx")
	other.hello()
	deliverOne(other, "Subject: fair\r\n\r\nshare")
	other.cmd("QUIT", "221 2.0.0")

	logs := ts.log.String()
	lines := strings.Count(logs, "too many connections from one address")
	if lines < 1 || lines > 1+int(elapsed/time.Second) || lines >= refusals {
		t.Errorf("%d refusal lines for %d refusals in %v, want one a second at most:\n%s", lines, refusals, elapsed, logs)
	}
	if !strings.Contains(logs, `"ip":"127.0.0.1","limit":3`) {
		t.Errorf("the refusal line does not name the address and the limit:\n%s", logs)
	}
}

// With per_ip_v4_prefix = 24, addresses of one /24 share the limit.
func TestPerAddressLimitByPrefix(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) {
		o.MaxConnectionsPerIP = 2
		o.PerIPPrefixV4 = 24
	}, 2, 16, hostList(), &recorder{})
	dialFrom(t, ts.addr, "127.0.0.1").expectLine("220 mx.test ESMTP loopmx")
	dialFrom(t, ts.addr, "127.0.0.2").expectLine("220 mx.test ESMTP loopmx")
	c := dialFrom(t, ts.addr, "127.0.0.3")
	c.expectLine("421 4.7.0 mx.test Too many connections from your address (limit 2), try again later")
	c.expectEOF()
	waitLog(t, ts, `"ip":"127.0.0.0/24"`)
}

// heapNow is the live heap after a collection.
func heapNow() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Clients that pipeline NOOPs and never read the replies: each costs the
// server a few KiB (input and output caps), not hundreds. The clients are
// in this process too; their part (a 4 KiB reader each) is small.
func TestClientsThatDoNotReadCostLittle(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.MaxConnectionsPerIP = 0 }, 2, 16, hostList(), &recorder{})
	const n = 100
	before := heapNow()
	var written atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	for range n {
		c := connect(t, ts.addr)
		c.conn.SetReadBuffer(16 << 10)
		c.conn.SetWriteBuffer(16 << 10)
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
				if _, err := c.conn.Write([]byte(noopBlock)); err != nil {
					return
				}
				written.Add(int64(len(noopBlock)))
			}
		}()
	}
	// Wait until the server has stopped reading every one of them.
	last, still := int64(-1), 0
	deadline := time.Now().Add(ioTimeout)
	for still < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("the clients were still writing after %v", ioTimeout)
		}
		time.Sleep(100 * time.Millisecond)
		if w := written.Load(); w == last {
			still++
		} else {
			last, still = w, 0
		}
	}
	per := int64(heapNow()-before) / n
	t.Logf("%d clients that do not read: %d bytes of heap each (%d octets written in all)", n, per, last)
	if per > 64<<10 {
		t.Errorf("each client that does not read holds %d bytes of heap, want under 64 KiB", per)
	}
	if ts.srv.Connections() != n {
		t.Errorf("%d connections open, want %d:\n%s", ts.srv.Connections(), n, ts.log.String())
	}
}

// Sessions that declare SIZE=20000000 and send a few bytes reserve a
// small buffer each, not the declared size.
func TestDeclaredSizeReservesLittle(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.MaxConnectionsPerIP = 0 }, 2, 16, hostList(), &recorder{})
	const n = 50
	before := heapNow()
	var cs []*client
	for range n {
		c := connect(t, ts.addr)
		c.hello()
		c.cmd("MAIL FROM:<s@client.test> SIZE=20000000", "250 2.1.0")
		c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
		c.cmd("DATA", "354 ") // the buffer is made before the 354
		cs = append(cs, c)
	}
	per := int64(heapNow()-before) / n
	t.Logf("%d sessions with SIZE=20000000 in DATA: %d bytes of heap each", n, per)
	if per > 64<<10 {
		t.Errorf("each session holds %d bytes of heap, want under 64 KiB", per)
	}
	for _, c := range cs {
		c.write("Subject: x\r\n\r\nx\r\n.\r\n")
		c.expect("250 2.0.0")
	}
}

// A message certain to be refused (a line over max_data_line_length under
// long_lines = reject, a bare LF under bare_line_endings = reject) is
// read on but no longer kept; the refusal comes after the final dot.
func TestCertainRefusalKeepsNothing(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { o.RecvBuffer = 64 << 10 }, 2, 16, hostList(), rec)
	cases := []struct {
		name, start, reply string
	}{
		{"long line", "Subject: " + strings.Repeat("h", 2000), "550 5.5.2 Message refused: a line is longer than 1000 octets"},
		{"bare LF", "Subject: bare\n\r\n", "550 5.6.0 "},
	}
	filler := strings.Repeat(strings.Repeat("z", 98)+"\r\n", 10000) // 1 MB
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, ts.addr)
			c.conn.SetWriteBuffer(64 << 10)
			c.hello()
			c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
			c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
			c.cmd("DATA", "354 ")
			before := heapNow()
			c.write(tc.start)
			for range 8 {
				c.write(filler)
			}
			// The socket buffers hold a few hundred KiB at most; the
			// server has read the rest of the 8 MB.
			grown := int64(heapNow()) - int64(before)
			t.Logf("heap grew by %d bytes while 8 MB of a refused message arrived", grown)
			if grown > 2<<20 {
				t.Errorf("the heap grew by %d bytes: the refused message is kept", grown)
			}
			c.cmd(".", tc.reply)
			c.cmd("QUIT", "221 2.0.0")
		})
	}
	if n := len(rec.messages()); n != 0 {
		t.Fatalf("%d messages queued, want none", n)
	}
}
