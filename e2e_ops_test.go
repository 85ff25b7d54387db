package main

import (
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// deliverOne sends one message to u@example.com on a new connection.
func deliverOne(t *testing.T, addr, id string) []byte {
	t.Helper()
	cl, err := dialSMTP(addr)
	if err != nil {
		t.Fatalf("deliver %s: %v", id, err)
	}
	defer cl.Close()
	if err := cl.startTx(true, "u@example.com"); err != nil {
		t.Fatalf("deliver %s: %v", id, err)
	}
	msg := testMessage(id, 2000)
	code, text, err := cl.sendData(msg)
	if err != nil || code != 250 {
		t.Fatalf("deliver %s: end of data got %d %s %v, want 250", id, code, text, err)
	}
	cl.expect("QUIT", 221)
	return msg
}

// findStored fails unless new/ holds exactly one file with id, equal to msg.
func findStored(t *testing.T, spool, id string, msg []byte) {
	t.Helper()
	var hits []spoolFile
	for _, f := range readMaildir(t, spool, "new") {
		if f.id == id {
			hits = append(hits, f)
		}
	}
	if len(hits) != 1 {
		t.Fatalf("%d files in new/ with id %s, want 1", len(hits), id)
	}
	checkStored(t, hits[0], msg)
}

// TestE2EOutOfDescriptors starts the server with 64 descriptors and opens
// far more connections than that at once. The server must survive, say so
// in its log without flooding it, and serve normally once they are gone.
func TestE2EOutOfDescriptors(t *testing.T) {
	t.Parallel()
	spool := t.TempDir()
	conf := maildirConfig(t, spool)
	var wrap []string
	if p, err := exec.LookPath("prlimit"); err == nil {
		wrap = []string{p, "--nofile=64:64"}
	} else {
		wrap = []string{"sh", "-c", `ulimit -n 64 && exec "$0" "$@"`}
	}
	started := time.Now()
	srv := startBinary(t, conf, "max_connections_per_ip = 0\n", wrap...) // every test client is 127.0.0.1

	const n = 100
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", srv.addr, 10*time.Second)
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if !srv.waitLog("accept failed", 15*time.Second) {
		t.Errorf("no \"accept failed\" line in the log with %d connections open and 64 descriptors", n)
	} else if !strings.Contains(srv.stderr.String(), "too many open files") {
		t.Errorf("the \"accept failed\" line does not give the reason (too many open files):\n%s", tail(srv.stderr.String(), 2000))
	}
	if !srv.alive() {
		t.Fatalf("loopmx exited while out of descriptors: %v", srv.state)
	}
	// Some connections were served: they have a banner waiting.
	var greeted atomic.Int32
	for _, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 4)
			if k, _ := io.ReadFull(c, buf); k == 4 && string(buf) == "220 " {
				greeted.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d connections were greeted while the server was short of descriptors", greeted.Load(), n)
	if greeted.Load() == 0 {
		t.Error("no connection at all got a banner")
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}

	// Once the crowd has left, a new client is served as usual. The
	// server may still be backing off from accept, so allow it time.
	msg := deliverOne(t, srv.addr, "after-emfile")
	findStored(t, spool, "after-emfile", msg)
	if !srv.alive() {
		t.Fatalf("loopmx exited: %v", srv.state)
	}

	// The accept failures are logged at most once a second.
	lines := strings.Count(srv.stderr.String(), "accept failed")
	if limit := int(time.Since(started)/time.Second) + 2; lines > limit {
		t.Errorf("%d \"accept failed\" lines in %v; the log is not rate-limited", lines, time.Since(started).Round(time.Second))
	}
	t.Logf("%d \"accept failed\" log lines", lines)
}

// TestE2ESigtermDrain sends SIGTERM while one client is idle and another
// is inside a transaction: the idle one is told 421 4.3.2 at once, the
// other may finish its message, and the process then exits 0.
func TestE2ESigtermDrain(t *testing.T) {
	t.Parallel()
	spool := t.TempDir()
	conf := maildirConfig(t, spool)
	srv := startBinary(t, conf, "graceful_timeout = 30s\n")

	idle, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := idle.expect("EHLO idle.e2e.test", 250); err != nil {
		t.Fatal(err)
	}
	busy, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := busy.startTx(true, "u@example.com"); err != nil {
		t.Fatal(err)
	}

	srv.signal(syscall.SIGTERM)
	code, text, err := idle.reply()
	if err != nil || code != 421 || !strings.HasPrefix(text, "4.3.2") {
		t.Errorf("idle client after SIGTERM: %d %q %v, want 421 4.3.2", code, text, err)
	}
	idle.Close()
	if !srv.alive() {
		t.Fatalf("loopmx exited with a transaction open: %v", srv.state)
	}

	msg := testMessage("during-drain", 3000)
	code, text, err = busy.sendData(msg)
	if err != nil || code != 250 {
		t.Fatalf("message finished during the drain: %d %q %v, want 250", code, text, err)
	}
	// A client that says goodbye is let go (the reply may also be the
	// server's own 421, or none when it closed first).
	if code, text, err := busy.cmd("QUIT"); err == nil && code != 221 && code != 421 {
		t.Errorf("QUIT during the drain: %d %q, want 221 or 421", code, text)
	}
	if !srv.wait(20 * time.Second) {
		t.Fatal("loopmx still running 20s after the last client left")
	}
	if c := srv.exitCode(); c != 0 {
		t.Errorf("exit code %d after a clean drain, want 0", c)
	}
	findStored(t, spool, "during-drain", msg)
	if !strings.Contains(srv.stderr.String(), `"stopped"`) {
		t.Errorf("the log does not say the server stopped:\n%s", tail(srv.stderr.String(), 2000))
	}
}

// TestE2ESecondSigterm: while a drain waits for a transaction that does
// not move, a second SIGTERM ends the process without waiting out
// graceful_timeout.
func TestE2ESecondSigterm(t *testing.T) {
	t.Parallel()
	spool := t.TempDir()
	conf := maildirConfig(t, spool)
	srv := startBinary(t, conf, "graceful_timeout = 30s\n")

	stuck, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if err := stuck.startTx(true, "u@example.com"); err != nil {
		t.Fatal(err)
	}
	srv.signal(syscall.SIGTERM)
	if !srv.waitLog("stopping", 10*time.Second) {
		t.Fatal("no \"stopping\" line in the log after SIGTERM")
	}
	if srv.wait(500 * time.Millisecond) {
		t.Fatalf("loopmx exited on the first SIGTERM with a transaction open: %v", srv.state)
	}
	srv.signal(syscall.SIGTERM)
	if !srv.wait(10 * time.Second) {
		t.Fatal("loopmx still running 10s after the second SIGTERM (graceful_timeout is 30s)")
	}
	t.Logf("exit code after the second SIGTERM: %d", srv.exitCode())
	if n := len(readMaildir(t, spool, "new")); n != 0 {
		t.Errorf("%d files in new/, want none", n)
	}
}

// TestE2EDrainReleasesClientAfterTransaction: during a drain, a client
// whose transaction has just ended is told 421 4.3.2 and let go, rather
// than kept until graceful_timeout; it cannot start another transaction.
func TestE2EDrainReleasesClientAfterTransaction(t *testing.T) {
	t.Parallel()
	spool := t.TempDir()
	conf := maildirConfig(t, spool)
	srv := startBinary(t, conf, "graceful_timeout = 30s\n")

	quiet, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	eager, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer eager.Close()
	for _, cl := range []*smtpClient{quiet, eager} {
		if err := cl.startTx(true, "u@example.com"); err != nil {
			t.Fatal(err)
		}
	}
	srv.signal(syscall.SIGTERM)
	if !srv.waitLog("stopping", 10*time.Second) {
		t.Fatal("no \"stopping\" line in the log after SIGTERM")
	}

	// The eager client goes straight on to a second transaction.
	if code, text, err := eager.sendData(testMessage("eager-1", 500)); err != nil || code != 250 {
		t.Fatalf("first message of the eager client: %d %q %v, want 250", code, text, err)
	}
	if code, text, err := eager.cmd("MAIL FROM:<sender@e2e.test>"); err == nil && code == 250 {
		t.Errorf("MAIL after the drain began: %d %q; a new transaction was opened during the shutdown", code, text)
	}

	// The quiet client finishes its message and says nothing more.
	if code, text, err := quiet.sendData(testMessage("quiet-1", 500)); err != nil || code != 250 {
		t.Fatalf("message of the quiet client: %d %q %v, want 250", code, text, err)
	}
	code, text, err := quiet.reply()
	if err == nil && (code != 421 || !strings.HasPrefix(text, "4.3.2")) {
		t.Errorf("quiet client after its transaction: %d %q, want 421 4.3.2", code, text)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		t.Errorf("quiet client after its transaction: %v, want 421 4.3.2 (no reply within %v)", err, ioTimeout)
	}
	if !srv.wait(10 * time.Second) {
		t.Fatal("loopmx still running 10s after every transaction ended (graceful_timeout is 30s)")
	}
	if c := srv.exitCode(); c != 0 {
		t.Errorf("exit code %d, want 0", c)
	}
}
