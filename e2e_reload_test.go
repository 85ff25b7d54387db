package main

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"loopmx/internal/testnotify"
)

// TestE2EReloadSingleProcess: with nodes = 0, HUP re-reads the config
// directory. A domain added to host_list is accepted by the connections
// that open after the reload, a connection opened before it finishes on
// the config it started with, and a broken config is logged and changes
// nothing.
func TestE2EReloadSingleProcess(t *testing.T) {
	spool := t.TempDir()
	dir := maildirConfig(t, spool)
	srv := startBinary(t, dir, "nodes = 0\n")

	before, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if err := before.expect("EHLO client.e2e.test", 250); err != nil {
		t.Fatal(err)
	}
	if err := before.expect("MAIL FROM:<s@e2e.test>", 250); err != nil {
		t.Fatal(err)
	}
	if err := before.expect("RCPT TO:<user@added.test>", 550); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(filepath.Join(dir, "host_list"), []byte("example.com\nadded.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.signal(syscall.SIGHUP)
	if !srv.waitLog("SIGHUP: config reloaded", 20*time.Second) {
		t.Fatalf("no reload logged:\n%s", tail(srv.stderr.String(), 20))
	}

	after, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if err := after.startTx(true, "user@added.test"); err != nil {
		t.Fatalf("a connection after the reload: %v", err)
	}
	if code, text, err := after.sendData(testMessage("reload", 200)); err != nil || code != 250 {
		t.Fatalf("message after the reload: %d %s %v", code, text, err)
	}
	// The connection from before keeps the config it started with.
	if err := before.expect("RCPT TO:<user@added.test>", 550); err != nil {
		t.Errorf("the connection opened before the reload: %v", err)
	}

	// A broken plugins file: logged, and the running config stays.
	if err := os.WriteFile(filepath.Join(dir, "plugins"), []byte("no.such.plugin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.signal(syscall.SIGHUP)
	if !srv.waitLog("config not reloaded", 20*time.Second) {
		t.Fatalf("a broken config was not reported:\n%s", tail(srv.stderr.String(), 20))
	}
	again, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.startTx(true, "user@added.test"); err != nil {
		t.Errorf("after a refused reload the reloaded config must still serve: %v", err)
	}
}

// TestE2EWatchdogSingleProcess: with nodes = 0 the process answers
// systemd's watchdog itself, so a unit with WatchdogSec does not kill it.
func TestE2EWatchdogSingleProcess(t *testing.T) {
	conf := discardConfig(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	n := testnotify.Listen(t, func() {})
	writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + addr + "\nnodes = 0\n"})
	srv, err := launch(t, []string{"env", "NOTIFY_SOCKET=" + n.Path, "WATCHDOG_USEC=200000", loopmxBinary(t), "-c", conf}, conf, addr)
	if err != nil {
		t.Fatal(err)
	}
	ready := n.WaitFor("READY=1", 0, 20*time.Second)
	if ready < 0 {
		t.Fatalf("no READY=1: %v", n.All())
	}
	if n.WaitFor("WATCHDOG=1", ready, 20*time.Second) < 0 {
		t.Fatalf("no WATCHDOG=1 from a single process: %v", n.All())
	}
	for _, m := range n.All() {
		if m.Pid != int32(srv.cmd.Process.Pid) {
			t.Errorf("%q came from pid %d, not the server's", m.Text, m.Pid)
		}
	}
}
