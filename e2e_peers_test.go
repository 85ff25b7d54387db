package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runPeer runs an outside SMTP client to completion (at most 60s) and
// returns its combined output and error.
func runPeer(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// TestE2ESwaks delivers with swaks, an independent SMTP client, in the
// modes it offers.
func TestE2ESwaks(t *testing.T) {
	t.Parallel()
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Skip("swaks is not installed")
	}
	spool := t.TempDir()
	srv := startBinary(t, maildirConfig(t, spool), "")
	help, _ := runPeer(t, swaks, "--help")

	cases := []struct {
		name string
		args []string
		need string // a word swaks --help must mention, or ""
	}{
		{"pipelining", []string{"--pipeline"}, ""},
		{"esmtp", []string{"--protocol", "ESMTP"}, ""},
		{"smtp", []string{"--protocol", "SMTP"}, ""},
		{"bdat", []string{"--bdat"}, "bdat"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.need != "" && !strings.Contains(strings.ToLower(help), tc.need) {
				t.Skipf("this swaks has no %s support", tc.need)
			}
			id := "swaks-" + tc.name
			args := append([]string{
				"--server", srv.addr, "--to", "u@example.com", "--from", "sender@e2e.test",
				"--helo", "client.e2e.test",
				"--header", "Message-ID: <" + id + "@e2e.test>",
				"--body", "Sent by swaks in mode " + tc.name + ".",
			}, tc.args...)
			out, err := runPeer(t, swaks, args...)
			if err != nil {
				t.Fatalf("swaks %s: %v\n%s", strings.Join(tc.args, " "), err, out)
			}
			if tc.name == "pipelining" && !strings.Contains(out, " -> MAIL FROM:<sender@e2e.test>\n -> RCPT TO:<u@example.com>\n -> DATA\n") {
				t.Errorf("swaks did not pipeline MAIL, RCPT and DATA:\n%s", out)
			}
			var hits []spoolFile
			for _, f := range readMaildir(t, spool, "new") {
				if f.id == id {
					hits = append(hits, f)
				}
			}
			if len(hits) != 1 {
				t.Fatalf("%d files in new/ with id %s, want 1; swaks said:\n%s", len(hits), id, out)
			}
			body := string(hits[0].data)
			for _, want := range []string{"Received: ", "Sent by swaks in mode " + tc.name + "."} {
				if !strings.Contains(body, want) {
					t.Errorf("stored message lacks %q:\n%s", want, body)
				}
			}
		})
	}
}

// TestE2ESmtpSource drives the server with postfix's smtp-source: 200
// messages of 2 KiB over 10 parallel sessions must give 200 files.
func TestE2ESmtpSource(t *testing.T) {
	t.Parallel()
	const tool = "/usr/sbin/smtp-source"
	if _, err := exec.LookPath(tool); err != nil {
		t.Skip("smtp-source (postfix) is not installed")
	}
	spool := t.TempDir()
	srv := startBinary(t, maildirConfig(t, spool), "")
	out, err := runPeer(t, tool, "-s", "10", "-m", "200", "-l", "2048", "-t", "u@example.com", srv.addr)
	if err != nil {
		t.Fatalf("smtp-source: %v\n%s", err, out)
	}
	files := readMaildir(t, spool, "new")
	if len(files) != 200 {
		t.Fatalf("%d files in new/ after smtp-source sent 200 messages, want 200\nsmtp-source said:\n%s", len(files), out)
	}
	for _, f := range files {
		if !strings.Contains(string(f.data), "Received: ") || len(f.data) < 2048 {
			t.Errorf("new/%s: %d bytes, Received header %v; want a whole 2 KiB message with one", f.name, len(f.data), strings.Contains(string(f.data), "Received: "))
			break
		}
	}
	if !srv.alive() {
		t.Fatalf("loopmx exited: %v", srv.state)
	}
}
