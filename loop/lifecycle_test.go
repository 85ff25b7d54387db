package loop_test

// The ends of connections and of the server: clients that vanish or
// half-close, and graceful shutdown.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/loop"
)

func TestDisconnectMidDataQueuesNothing(t *testing.T) {
	for _, block := range []bool{false, true} {
		rec := &recorder{block: block}
		ts := startServer(t, nil, 2, 16, hostList(), rec)
		c := connect(t, ts.addr)
		c.hello()
		c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
		c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
		c.cmd("DATA", "354 ")
		c.write("Subject: cut\r\n\r\nhalf a message\r\n.")
		c.conn.Close()

		// A BDAT chunk cut short, too.
		d := connect(t, ts.addr)
		d.write("EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.com>\r\nBDAT 100 LAST\r\nonly part")
		d.expectEHLO()
		d.expectAll("250 2.1.0", "250 2.1.5")
		d.conn.Close()

		ts.waitConnections(t, 0)
		if msgs := rec.messages(); len(msgs) != 0 {
			t.Fatalf("block=%v: queued %+v", block, msgs)
		}
	}
}

// halfCloseInput is a whole pipelined transaction.
const halfCloseInput = "EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nhalf-closed\r\n.\r\n"

func TestHalfCloseGetsAllReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		quit  bool
		block bool
	}{
		{"inline", true, false},
		{"inline without QUIT", false, false},
		{"blocking", true, true},
		{"blocking without QUIT", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{block: tc.block}
			if tc.block {
				rec.gate, rec.entered = newGate(), newSignal()
			}
			ts := startServer(t, nil, 2, 16, hostList(), rec)
			c := connect(t, ts.addr)
			in := halfCloseInput
			if tc.quit {
				in += "QUIT\r\n"
			}
			c.write(in)
			if err := c.conn.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if tc.block {
				// Let the end of input reach the server while the queue
				// hook still runs.
				rec.entered.await(t, "the queue hook")
				// The FIN arrived: the server's socket is in CLOSE_WAIT
				// (state 08 in /proc/net/tcp).
				waitServerSocket(t, c.conn, "the client's FIN", func(state, _ string) bool { return state == "08" })
				rec.gate.open()
			}
			c.expectEHLO()
			c.expectAll("250 2.1.0", "250 2.1.5", "354 ", "250 2.0.0 Ok: queued")
			if tc.quit {
				c.expect("221 2.0.0")
			}
			c.expectEOF()
			if m := rec.only(t); m.Body != "half-closed\r\n" {
				t.Errorf("stored %q", m.Body)
			}
		})
	}
}

// shutdownAsync starts a graceful shutdown and returns a channel closed
// when it has finished.
func shutdownAsync(ts *testServer, grace time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		ts.srv.Shutdown(ctx)
		close(done)
	}()
	return done
}

func awaitShutdown(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(ioTimeout):
		t.Fatal("Shutdown did not return")
	}
}

const shutdownReply = "421 4.3.2 mx.test Service shutting down, try again later"

// One loop, so the idle client's 421 proves that the loop serving the
// other client is draining too.
func oneLoop(o *loop.Options) { o.Loops = 1 }

func TestGracefulShutdown(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, oneLoop, 2, 16, hostList(), rec)
	idle := connect(t, ts.addr)
	idle.hello()
	busy := connect(t, ts.addr)
	busy.hello()
	busy.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	busy.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	fresh := connect(t, ts.addr) // not even EHLO yet

	done := shutdownAsync(ts, 15*time.Second)
	idle.expectLine(shutdownReply)
	idle.expectEOF()
	fresh.expectLine(shutdownReply)
	fresh.expectEOF()

	// The transaction in progress may finish, then the session ends.
	busy.expectSilence(200 * time.Millisecond)
	busy.cmd("DATA", "354 ")
	busy.cmd("finished during shutdown\r\n.", "250 2.0.0 Ok: queued")
	busy.expectLine(shutdownReply)
	busy.expectEOF()
	awaitShutdown(t, done)
	if m := rec.only(t); m.Body != "finished during shutdown\r\n" {
		t.Errorf("stored %q", m.Body)
	}
}

func TestShutdownWithPipelinedQuit(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, oneLoop, 2, 16, hostList(), rec)
	idle := connect(t, ts.addr)
	idle.hello()
	busy := connect(t, ts.addr)
	busy.hello()
	busy.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	busy.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	done := shutdownAsync(ts, 15*time.Second)
	idle.expectLine(shutdownReply)
	idle.expectEOF()
	// The client ends its transaction and quits in one write: it gets
	// its answers, and the 421 stands in for the 221.
	busy.write("DATA\r\nlast one\r\n.\r\nQUIT\r\n")
	busy.expectAll("354 ", "250 2.0.0 Ok: queued")
	if r := busy.next(); r.Last() != shutdownReply && r.Code != 221 {
		t.Fatalf("after the message: %q", r)
	}
	busy.expectEOF()
	awaitShutdown(t, done)
	rec.only(t)
}

// When the graceful time runs out, the sessions still open get 421 too.
func TestShutdownTimeoutForcesClose(t *testing.T) {
	ts := startServer(t, oneLoop, 2, 16, hostList(), &recorder{})
	busy := connect(t, ts.addr)
	busy.hello()
	busy.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	done := shutdownAsync(ts, 500*time.Millisecond)
	busy.expectLine(shutdownReply)
	busy.expectEOF()
	awaitShutdown(t, done)
}

// With a queue hook on the workpool (the maildir case), a transaction that
// ends during a shutdown gets its 250 and then, without more input from
// the client, the 421.
func TestGracefulShutdownBlockingQueue(t *testing.T) {
	rec := &recorder{block: true}
	ts := startServer(t, oneLoop, 2, 16, hostList(), rec)
	idle := connect(t, ts.addr)
	idle.hello()
	busy := connect(t, ts.addr)
	busy.hello()
	busy.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	busy.cmd("RCPT TO:<a@example.com>", "250 2.1.5")

	done := shutdownAsync(ts, 15*time.Second)
	idle.expectLine(shutdownReply)
	idle.expectEOF()
	busy.cmd("DATA", "354 ")
	busy.cmd("finished during shutdown\r\n.", "250 2.0.0 Ok: queued")
	// Well before the graceful time runs out.
	busy.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	busy.expectLine(shutdownReply)
	busy.expectEOF()
	awaitShutdown(t, done)
	rec.only(t)
}

// Once a shutdown has begun, a new client is refused by the kernel: the
// listeners are closed when every loop has stopped accepting, so nobody
// hangs in a backlog no loop reads (a regression test).
func TestNewConnectionDuringShutdown(t *testing.T) {
	ts := startServer(t, oneLoop, 2, 16, hostList(), &recorder{})
	idle := connect(t, ts.addr)
	idle.hello()
	busy := connect(t, ts.addr)
	busy.hello()
	busy.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	done := shutdownAsync(ts, 15*time.Second)
	idle.expectLine(shutdownReply)
	idle.expectEOF()

	// The drain is under way (busy keeps it open). A new client must be
	// refused at once: either the connection fails or it is told 421.
	nc, err := net.DialTimeout("tcp", ts.addr, 2*time.Second)
	if err == nil {
		late := &client{t: t, conn: nc.(*net.TCPConn), r: bufio.NewReader(nc)}
		t.Cleanup(func() { nc.Close() })
		nc.SetReadDeadline(time.Now().Add(2 * time.Second))
		r, err := late.read()
		switch {
		case err == nil && r.Last() == shutdownReply:
		case err != nil && (errors.Is(err, io.EOF) || isReset(err)):
		default:
			t.Errorf("a client connecting during the shutdown got reply %q, error %v; want 421 4.3.2 or a refused connection", r, err)
		}
	}
	busy.cmd("RSET", "250 2.0.0")
	busy.expectLine(shutdownReply)
	awaitShutdown(t, done)
}

// A hook that ends after its loop stopped (here after the graceful time
// ran out) must not write its wake-up into the loop's closed eventfd,
// whose number may by then belong to a socket: its peer would receive
// stray octets (a regression test).
func TestHookEndingAfterShutdownWritesNowhere(t *testing.T) {
	slow, g, entered := gatedMail()
	ts := startServer(t, oneLoop, 1, 4, slow, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	c.write("MAIL FROM:<s@client.test>\r\n")
	entered.await(t, "the MAIL hook")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	ts.srv.Shutdown(ctx)
	cancel()
	c.expectLine(shutdownReply)
	c.expectEOF()

	// Take the descriptor numbers the server just released.
	var fds []int
	for i := 0; i < 16; i++ {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	g.open()
	for ts.pool.Busy() > 0 || ts.pool.Queued() > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	buf := make([]byte, 64)
	for _, fd := range fds {
		if n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT); err == nil && n > 0 {
			t.Errorf("an unrelated socket received %d stray octets %x after the server stopped", n, buf[:n])
		}
	}
}
