package loop_test

// Overload and isolation over real TCP: timeouts, connection limits, a
// full workpool, slow and panicking hooks, and clients that do not read.

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"loopmx/loop"
	"loopmx/plugins"
)

func TestInactivityTimeout(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { o.InactivityTimeout = time.Second }, 2, 16, hostList(), rec)

	idle := connect(t, ts.addr)
	idle.hello()

	inData := connect(t, ts.addr)
	inData.hello()
	inData.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	inData.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	inData.cmd("DATA", "354 ")
	inData.write("Subject: unfinished\r\n\r\nno end")

	// A client that keeps talking is not dropped.
	busy := connect(t, ts.addr)
	busy.hello()
	stop := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(stop) {
		busy.cmd("NOOP", "250 2.0.0")
		time.Sleep(200 * time.Millisecond)
	}

	idle.expectLine("421 4.4.2 mx.test Error: timeout exceeded")
	idle.expectEOF()
	// A silent message is one sent too slowly (command_timeout, at most
	// the inactivity timeout, plus what its octets earned).
	inData.expectLine("421 4.4.2 mx.test Error: message data too slow")
	inData.expectEOF()
	busy.cmd("QUIT", "221 2.0.0")
	busy.expectEOF()
	if n := len(rec.messages()); n != 0 {
		t.Fatalf("the unfinished message was queued (%d messages)", n)
	}
}

func TestMaxConnections(t *testing.T) {
	cases := []struct {
		name string
		edit func(*loop.Options)
		want string
	}{
		{"total", func(o *loop.Options) { o.MaxConnections = 2 }, "421 4.7.0 mx.test Too many connections, try again later"},
		{"per IP", func(o *loop.Options) { o.MaxConnectionsPerIP = 2 }, "421 4.7.0 mx.test Too many connections from your address (limit 2), try again later"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.edit, 2, 16, hostList(), &recorder{})
			first := connect(t, ts.addr)
			second := connect(t, ts.addr)
			second.hello()

			third := dial(t, ts.addr)
			third.expectLine(tc.want)
			third.expectEOF()

			// The open sessions are unaffected, and a slot that frees up
			// is given to the next client.
			first.hello()
			first.cmd("QUIT", "221 2.0.0")
			first.expectEOF()
			ts.waitConnections(t, 1)
			fourth := connect(t, ts.addr)
			fourth.hello()
			second.cmd("NOOP", "250 2.0.0")

			fifth := dial(t, ts.addr)
			fifth.expectLine(tc.want)
			fifth.expectEOF()
		})
	}
}

// gatedConnect is a connect hook that waits on the workpool for g.
func gatedConnect(g *gate, entered signal) *hooks {
	return &hooks{
		name:     "test/gated-connect",
		blocking: []plugins.Hook{plugins.HookConnect},
		gate:     g,
		connect: func(*plugins.Conn) plugins.Result {
			entered.ping()
			g.wait()
			return plugins.NoOpinion()
		},
	}
}

func TestWorkpoolFull(t *testing.T) {
	g, entered := newGate(), newSignal()
	// One worker and a queue of one job.
	ts := startServer(t, nil, 1, 1, gatedConnect(g, entered), hostList(), &recorder{})

	held := dial(t, ts.addr)
	entered.await(t, "the first connect hook")
	queued := dial(t, ts.addr)
	// Wait until the second client's hook sits in the pool's queue.
	deadline := time.Now().Add(ioTimeout)
	for ts.pool.Queued() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the second connect hook never reached the queue")
		}
		time.Sleep(5 * time.Millisecond)
	}

	for i := 0; i < 3; i++ {
		shed := dial(t, ts.addr)
		shed.expectLine("421 4.3.2 mx.test Service busy, try again later")
		shed.expectEOF()
	}

	g.open()
	for _, c := range []*client{held, queued} {
		c.expectLine("220 mx.test ESMTP loopmx")
		c.hello()
		c.cmd("QUIT", "221 2.0.0")
	}
	// Recovered: new clients are served again.
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("QUIT", "221 2.0.0")
}

func TestWorkpoolFullAtMail(t *testing.T) {
	slow, g, entered := gatedMail()
	ts := startServer(t, nil, 1, 1, slow, hostList(), &recorder{})
	held := connect(t, ts.addr)
	held.hello()
	held.write("MAIL FROM:<a@client.test>\r\n")
	entered.await(t, "the first MAIL hook")
	queued := connect(t, ts.addr)
	queued.hello()
	queued.write("MAIL FROM:<b@client.test>\r\n")
	deadline := time.Now().Add(ioTimeout)
	for ts.pool.Queued() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the second MAIL hook never reached the queue")
		}
		time.Sleep(5 * time.Millisecond)
	}
	shed := connect(t, ts.addr)
	shed.hello()
	shed.cmd("MAIL FROM:<c@client.test>", "421 4.3.2")
	shed.expectEOF()

	g.open()
	held.expect("250 2.1.0")
	queued.expect("250 2.1.0")
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("MAIL FROM:<d@client.test>", "250 2.1.0")
}

// A blocking hook that sleeps for one client does not hold up another
// client on the same loop.
func TestSlowHookDoesNotDelayOthers(t *testing.T) {
	const sleep = 2 * time.Second
	entered := newSignal()
	slow := &hooks{
		name:     "test/slow-mail",
		blocking: []plugins.Hook{plugins.HookMail},
		mail: func(_ *plugins.Conn, from string) plugins.Result {
			if from == "slow@client.test" {
				entered.ping()
				time.Sleep(sleep)
			}
			return plugins.NoOpinion()
		},
	}
	ts := startServer(t, func(o *loop.Options) { o.Loops = 1 }, 4, 16, slow, hostList(), &recorder{})
	a := connect(t, ts.addr)
	a.hello()
	a.write("MAIL FROM:<slow@client.test>\r\n")
	entered.await(t, "the slow hook")

	slowest := time.Duration(0)
	timed := func(f func()) {
		start := time.Now()
		f()
		slowest = max(slowest, time.Since(start))
	}
	var b *client
	timed(func() { b = connect(t, ts.addr) })
	timed(func() { b.hello() })
	timed(func() { b.cmd("MAIL FROM:<fast@client.test>", "250 2.1.0") })
	timed(func() { b.cmd("RCPT TO:<a@example.com>", "250 2.1.5") })
	timed(func() { b.cmd("DATA", "354 ") })
	timed(func() { b.cmd("fast\r\n.", "250 2.0.0 Ok: queued") })
	timed(func() { b.cmd("QUIT", "221 2.0.0") })
	if slowest > sleep/2 {
		t.Errorf("another client waited %v for a reply while one hook slept %v", slowest, sleep)
	}
	a.expect("250 2.1.0")
}

func TestPanickingPluginGets451(t *testing.T) {
	boom := &hooks{
		name:     "test/panics",
		blocking: []plugins.Hook{plugins.HookRcpt},
		mail: func(_ *plugins.Conn, from string) plugins.Result {
			if from == "boom@client.test" {
				panic("secret detail from the mail hook")
			}
			return plugins.NoOpinion()
		},
		rcpt: func(_ *plugins.Conn, to string) plugins.Result {
			if to == "boom@example.com" {
				panic("secret detail from the rcpt hook")
			}
			return plugins.NoOpinion()
		},
	}
	rec := &recorder{block: true}
	ts := startServer(t, nil, 2, 16, boom, hostList(), rec)
	c := connect(t, ts.addr)
	c.hello()
	for _, step := range []struct{ in, want string }{
		{"MAIL FROM:<boom@client.test>", "451 4.3.0"}, // inline hook
		{"MAIL FROM:<s@client.test>", "250 2.1.0"},
		{"RCPT TO:<boom@example.com>", "451 4.3.0"}, // hook on the workpool
		{"RCPT TO:<a@example.com>", "250 2.1.5"},
		{"DATA", "354 "},
		{"after a panic\r\n.", "250 2.0.0 Ok: queued"},
	} {
		r := c.cmd(step.in, step.want)
		if strings.Contains(r.String(), "secret") {
			t.Errorf("reply %q leaks the panic", r)
		}
	}
	// The server keeps serving other connections.
	d := connect(t, ts.addr)
	d.hello()
	d.cmd("MAIL FROM:<boom@client.test>", "451 4.3.0")
	d.cmd("QUIT", "221 2.0.0")
	c.cmd("QUIT", "221 2.0.0")

	if m := rec.only(t); m.Body != "after a panic\r\n" {
		t.Errorf("stored %q", m.Body)
	}
	logs := ts.log.String()
	for _, want := range []string{"plugin panicked", "secret detail from the mail hook", "secret detail from the rcpt hook"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// panickingQueue is a queue plugin that panics on the workpool.
type panickingQueue struct{}

func (panickingQueue) Name() string                                         { return "test/panicking-queue" }
func (panickingQueue) Blocks(h plugins.Hook) bool                           { return h == plugins.HookQueue }
func (panickingQueue) Queue(*plugins.Conn, *plugins.Message) plugins.Result { panic("disk on fire") }

func TestPanickingQueueIsNotAcknowledged(t *testing.T) {
	ts := startServer(t, nil, 2, 16, hostList(), panickingQueue{})
	c := connect(t, ts.addr)
	c.write("EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\nNOOP\r\nQUIT\r\n")
	c.expectEHLO()
	c.expectAll("250 2.1.0", "250 2.1.5", "354 ", "451 4.3.0", "250 2.0.0", "221 2.0.0")
	c.expectEOF()
}

// noopBlock is 999 NOOPs and one HELP, so the order of replies shows.
var noopBlock = strings.Repeat("NOOP\r\n", 999) + "HELP\r\n"

// flooder writes noopBlock to a client's connection, never reading, until
// stopped.
type flooder struct {
	written atomic.Int64 // octets
	blocks  atomic.Int64
	stop    chan struct{}
	done    chan error
}

// flood shrinks the client's socket buffers (so what piles up is the
// server's), starts writing and returns once the writes have stalled,
// that is once the server has stopped reading.
func flood(t *testing.T, c *client) *flooder {
	t.Helper()
	c.conn.SetReadBuffer(16 << 10)
	c.conn.SetWriteBuffer(16 << 10)
	const limit = 64 << 20 // more than any sane buffering
	f := &flooder{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		for f.written.Load() < limit {
			select {
			case <-f.stop:
				f.done <- nil
				return
			default:
			}
			c.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
			if _, err := c.conn.Write([]byte(noopBlock)); err != nil {
				f.done <- err
				return
			}
			f.written.Add(int64(len(noopBlock)))
			f.blocks.Add(1)
		}
		f.done <- errors.New("the server read everything")
	}()
	last, still := int64(-1), 0
	for still < 10 {
		select {
		case err := <-f.done:
			t.Fatalf("writer ended before stalling after %d octets: %v", f.written.Load(), err)
		case <-time.After(100 * time.Millisecond):
		}
		if n := f.written.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	t.Logf("writes stalled after %d octets", last)
	return f
}

// A client that sends megabytes of pipelined commands and never reads the
// replies: the server stops reading it instead of buffering without bound,
// keeps serving others, and answers everything once the client reads.
func TestClientThatDoesNotRead(t *testing.T) {
	ts := startServer(t, nil, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	f := flood(t, c)

	// Other clients are served meanwhile.
	other := connect(t, ts.addr)
	other.hello()
	other.cmd("NOOP", "250 2.0.0")
	other.cmd("QUIT", "221 2.0.0")

	// Now read: every reply comes, in order, and the writer gets going.
	close(f.stop)
	var (
		wg      sync.WaitGroup
		readErr error
		got     int64
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			// A deadline per reply: it catches a stall, not a slow machine.
			c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
			r, err := readReply(c.r)
			if err != nil {
				readErr = err
				return
			}
			if r.Code == 221 {
				return
			}
			want := "250 2.0.0 Ok"
			if (got+1)%1000 == 0 {
				want = "214 2.0.0"
			}
			if !strings.HasPrefix(r.Last(), want) {
				readErr = fmt.Errorf("reply %d is %q, want %q", got+1, r, want)
				return
			}
			got++
		}
	}()
	if err := <-f.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	c.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.conn.Write([]byte("QUIT\r\n")); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if readErr != nil {
		t.Fatalf("after %d replies: %v", got, readErr)
	}
	if want := f.blocks.Load() * 1000; got != want {
		t.Fatalf("read %d replies before 221, want %d", got, want)
	}
	c.expectEOF()
}

// A client that stops reading (and has stopped writing) is dropped after
// the inactivity timeout, with at most one 421 4.4.2 queued behind its
// unread replies.
func TestStalledClientIsDroppedOnTimeout(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.InactivityTimeout = time.Second }, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	f := flood(t, c)
	// The client now sits still. Well after the timeout the server must
	// have let go of it.
	deadline := time.Now().Add(10 * time.Second)
	for ts.srv.Connections() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := ts.srv.Connections(); n != 0 {
		t.Errorf("%d connection(s) still open 10s after a 1s inactivity timeout", n)
	}
	// What the client can still read holds at most one timeout reply.
	close(f.stop)
	c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	timeouts := 0
	for {
		r, err := readReply(c.r)
		if err != nil {
			break
		}
		if r.Code == 421 {
			timeouts++
		}
	}
	if timeouts > 1 {
		t.Errorf("the client was sent %d timeout replies", timeouts)
	}
}
