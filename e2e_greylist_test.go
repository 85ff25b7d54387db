package main

import (
	"strings"
	"testing"
	"time"

	"loopmx/internal/redisx/redistest"
)

// Two loopmx processes share one greylist in one redis-server: the first
// attempt, at one of them, gets 451 4.7.1; a retry at the other within
// the delay is still greylisted (they see the same triplet), and the retry
// after the delay is accepted by the other process and its message stored.
func TestE2EGreylistSharedByTwoProcesses(t *testing.T) {
	rs := redistest.Start(t)
	spool := t.TempDir()
	var servers [2]*server
	for i := range servers {
		dir := maildirConfig(t, spool)
		writeFiles(t, dir, map[string]string{
			"plugins":      "greylist\nrcpt_to.in_host_list\nqueue/maildir\n",
			"greylist.ini": "delay = 2s\nwindow = 1h\n",
		})
		rs.WriteINI(dir)
		servers[i] = startBinary(t, dir, "nodes = 0\n")
	}
	attempt := func(s *server) (int, string) {
		t.Helper()
		cl, err := dialSMTP(s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.expect("EHLO client.e2e.test", 250); err != nil {
			t.Fatal(err)
		}
		if err := cl.expect("MAIL FROM:<sender@e2e.test>", 250); err != nil {
			t.Fatal(err)
		}
		code, text, err := cl.cmd("RCPT TO:<bob@example.com>")
		if err != nil {
			t.Fatal(err)
		}
		if code == 250 {
			if c, txt, err := cl.sendData(testMessage("greylisted", 300)); err != nil || c != 250 {
				t.Fatalf("the message after the retry: %d %s %v", c, txt, err)
			}
		}
		return code, text
	}
	if code, text := attempt(servers[0]); code != 451 || !strings.HasPrefix(text, "4.7.1") {
		t.Fatalf("first attempt at process A: %d %s, want 451 4.7.1", code, text)
	}
	if code, text := attempt(servers[1]); code != 451 {
		t.Fatalf("an early retry at process B: %d %s, want 451: B does not share A's greylist", code, text)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, text := attempt(servers[1])
		if code == 250 {
			break
		}
		if code != 451 || time.Now().After(deadline) {
			t.Fatalf("retry at process B: %d %s (30 s after the first attempt, with delay = 2s)", code, text)
		}
		time.Sleep(250 * time.Millisecond) // a sender's retry pace, not a wait for a condition
	}
	if files := readMaildir(t, spool, "new"); len(files) != 1 {
		t.Fatalf("the spool holds %d messages, want the one accepted after the delay", len(files))
	}
}
