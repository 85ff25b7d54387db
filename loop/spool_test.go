package loop_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"loopmx/loop"
)

// bigBody is a message of n lines of 78 octets plus CRLF, with a
// dot-stuffed line every so often so the unstuffing across spill writes
// shows.
func bigBody(n int) (wire, stored string) {
	var w, s strings.Builder
	w.WriteString("Subject: big\r\n\r\n")
	s.WriteString("Subject: big\r\n\r\n")
	for i := range n {
		line := strings.Repeat(string(rune('a'+i%26)), 78)
		if i%97 == 0 {
			line = "." + line[1:]
			w.WriteString(".")
		}
		w.WriteString(line + "\r\n")
		s.WriteString(line + "\r\n")
	}
	return w.String(), s.String()
}

// spoolOptions spill past 16 KiB into a directory of the test's own.
func spoolOptions(dir string) func(*loop.Options) {
	return func(o *loop.Options) {
		o.SpoolAfter = 16 << 10
		o.SpoolDir = dir
	}
}

func sendMessage(c *client, wire string) {
	beginBody(c, wire)
	c.cmd(".", "250 2.0.0")
}

// beginBody sends a transaction up to the body, without its end.
func beginBody(c *client, wire string) {
	c.cmd("MAIL FROM:<big@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.write(wire)
}

// A body past spool_after is written to spool_dir as it arrives, and the
// queue plugin gets it whole; a small one never touches the disk.
func TestLargeBodySpillsAndArrivesWhole(t *testing.T) {
	dir := t.TempDir()
	rec := &recorder{}
	ts := startServer(t, spoolOptions(dir), 2, 16, hostList(), rec)
	wire, want := bigBody(20000) // 1.6 MB
	c := connect(t, ts.addr)
	c.hello()
	sendMessage(c, wire)
	sendMessage(c, "Subject: small\r\n\r\nhi\r\n")
	c.cmd("QUIT", "221")
	msgs := rec.messages()
	if len(msgs) != 2 {
		t.Fatalf("stored %d messages, want 2", len(msgs))
	}
	if !msgs[0].Spooled || msgs[0].Body != want {
		t.Errorf("large message: spooled %v, %d octets (want %d), intact %v", msgs[0].Spooled, len(msgs[0].Body), len(want), msgs[0].Body == want)
	}
	if msgs[1].Spooled || msgs[1].Body != "Subject: small\r\n\r\nhi\r\n" {
		t.Errorf("small message: spooled %v, body %q", msgs[1].Spooled, msgs[1].Body)
	}
	waitNoSpoolFiles(t, dir)
}

// BDAT chunks spill the same way.
func TestLargeBDATSpills(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, spoolOptions(t.TempDir()), 2, 16, hostList(), rec)
	_, body := bigBody(5000)
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("MAIL FROM:<big@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	half := len(body) / 2
	c.write("BDAT " + strconv.Itoa(half) + "\r\n" + body[:half])
	c.expect("250 2.0.0")
	c.write("BDAT " + strconv.Itoa(len(body)-half) + " LAST\r\n" + body[half:])
	c.expect("250 2.0.0")
	if m := rec.only(t); !m.Spooled || m.Body != body {
		t.Errorf("spooled %v, %d octets, intact %v", m.Spooled, len(m.Body), m.Body == body)
	}
}

// Past max_body_memory a session spills long before spool_after.
func TestBodyMemoryBudgetSpillsEarly(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) {
		o.SpoolAfter = 8 << 20
		o.MaxBodyMemory = 1
		o.SpoolDir = t.TempDir()
	}, 2, 16, hostList(), rec)
	wire, want := bigBody(2000) // 160 KB: far under spool_after
	c := connect(t, ts.addr)
	c.hello()
	sendMessage(c, wire)
	if m := rec.only(t); !m.Spooled || m.Body != want {
		t.Errorf("spooled %v, intact %v; want a spooled, intact body", m.Spooled, m.Body == want)
	}
}

// A spool_dir that cannot be written refuses the message with 451 (never
// a 250 for what was not kept), and the session goes on.
func TestSpoolFailureRefusesWith451(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	rec := &recorder{}
	ts := startServer(t, spoolOptions(dir), 2, 16, hostList(), rec)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	wire, _ := bigBody(2000)
	c := connect(t, ts.addr)
	c.hello()
	beginBody(c, wire)
	c.cmd(".", "451 4.3.0")
	sendMessage(c, "Subject: small\r\n\r\nstill served\r\n")
	if m := rec.only(t); m.Body != "Subject: small\r\n\r\nstill served\r\n" {
		t.Errorf("stored %q", abbrev(m.Body))
	}
	if !strings.Contains(ts.log.String(), "cannot write the message to spool_dir") {
		t.Errorf("the log does not say why: %s", ts.log.String())
	}
}

// A client that goes away in the middle of a spilled body leaves no spool
// file open: its disk space is freed at once.
func TestAbortedBodyLeavesNoSpoolFile(t *testing.T) {
	dir := t.TempDir()
	rec := &recorder{}
	ts := startServer(t, spoolOptions(dir), 2, 16, hostList(), rec)
	wire, _ := bigBody(5000)
	c := connect(t, ts.addr)
	c.hello()
	beginBody(c, wire)
	waitSpoolFiles(t, dir, func(n int) bool { return n > 0 }, "a spool file open while the body arrives")
	c.conn.Close()
	waitNoSpoolFiles(t, dir)
	if n := len(rec.messages()); n != 0 {
		t.Errorf("stored %d messages of an aborted body", n)
	}
}

// Files a crash left in spool_dir are removed at start.
func TestStartRemovesLeftoverSpoolFiles(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, "loopmx-spill-123")
	other := filepath.Join(dir, "not-ours")
	for _, p := range []string{left, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	startServer(t, spoolOptions(dir), 2, 16, hostList(), &recorder{})
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("leftover spool file still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file that is not a spool file was touched: %v", err)
	}
}

// spoolFiles counts this process's open files in dir (spool files have
// no name, so the directory listing cannot show them).
func spoolFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, dir+"/") {
			n++
		}
	}
	return n
}

func waitSpoolFiles(t *testing.T, dir string, ok func(int) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !ok(spoolFiles(t, dir)) {
		if time.Now().After(deadline) {
			t.Fatalf("waited for %s; %d spool files open", what, spoolFiles(t, dir))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitNoSpoolFiles(t *testing.T, dir string) {
	t.Helper()
	waitSpoolFiles(t, dir, func(n int) bool { return n == 0 }, "every spool file closed")
}

// Over TLS (the stream transport) a large body spills the same way.
func TestLargeBodySpillsOverTLS(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { env.with(o); spoolOptions(t.TempDir())(o) }, 2, 16, hostList(), rec)
	wire, want := bigBody(10000)
	c := connect(t, ts.addr)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	s.hello()
	s.deliver("a@example.com", wire)
	s.quit()
	if m := rec.only(t); !m.Spooled || m.Body != want {
		t.Errorf("spooled %v, %d octets (want %d), intact %v", m.Spooled, len(m.Body), len(want), m.Body == want)
	}
}
