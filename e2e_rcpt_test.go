package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestE2EValidRecipientsReloadOnHUP: the binary refuses a recipient that
// valid_recipients does not list with 550; once the file lists it and
// the server got HUP, a new connection has the recipient accepted and
// its message stored. A broken file is refused and the list in force
// stays.
func TestE2EValidRecipientsReloadOnHUP(t *testing.T) {
	spool := t.TempDir()
	dir := maildirConfig(t, spool)
	writeFiles(t, dir, map[string]string{
		"plugins":          "rcpt_to.valid\nrcpt_to.in_host_list\nqueue/maildir\n",
		"valid_recipients": "bob@example.com\n",
	})
	srv := startBinary(t, dir, "nodes = 0\n")

	cl, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.startTx(true, "bob+news@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := cl.expect("RCPT TO:<carol@example.com>", 550); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	if err := os.WriteFile(filepath.Join(dir, "valid_recipients"), []byte("bob@example.com\ncarol@example.com\n"), 0o644); err != nil {
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
	if err := after.startTx(true, "carol@example.com"); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	msg := testMessage("valid", 200)
	if code, text, err := after.sendData(msg); err != nil || code != 250 {
		t.Fatalf("message to carol: %d %s %v", code, text, err)
	}
	if files := readMaildir(t, spool, "new"); len(files) != 1 {
		t.Fatalf("the spool holds %d messages, want 1", len(files))
	}

	// A line that is not an address: the reload is refused, carol stays.
	if err := os.WriteFile(filepath.Join(dir, "valid_recipients"), []byte("bob example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.signal(syscall.SIGHUP)
	if !srv.waitLog("valid_recipients:1", 20*time.Second) {
		t.Fatalf("the broken file was not reported:\n%s", tail(srv.stderr.String(), 20))
	}
	again, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.startTx(true, "carol@example.com"); err != nil {
		t.Errorf("after a refused reload the list in force must still serve: %v", err)
	}
}
