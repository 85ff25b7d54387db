package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/smtp"
	"net/textproto"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runBinary runs the binary with args to completion and returns its
// stdout, stderr and exit code. A run that does not end within 20s is
// killed and fails the test.
func runBinary(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, loopmxBinary(t), args...)
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("loopmx %s did not end within 20s", strings.Join(args, " "))
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

func TestE2EVersion(t *testing.T) {
	t.Parallel()
	out, errOut, code := runBinary(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "loopmx ") {
		t.Errorf("--version: exit %d, stdout %q, stderr %q; want exit 0 and \"loopmx ...\"", code, out, errOut)
	}
}

func TestE2ECheckConfig(t *testing.T) {
	t.Parallel()
	t.Run("good", func(t *testing.T) {
		spool := filepath.Join(t.TempDir(), "spool")
		dir := maildirConfig(t, spool)
		writeFiles(t, dir, map[string]string{"smtp.ini": "listen = 127.0.0.1:2600\nmax_recipients = 7\n[log]\nlevel = warn\n"})
		out, errOut, code := runBinary(t, "check-config", "-c", dir)
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
		for _, want := range []string{
			"listen", "127.0.0.1:2600", "max_recipients", "= 7", "level", "warn",
			"queue/maildir", "rcpt_to.in_host_list", "example.com", "config OK\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if !strings.HasSuffix(out, "config OK\n") {
			t.Errorf("output does not end with \"config OK\":\n%s", out)
		}
	})

	bad := []struct {
		name  string
		files map[string]string
		want  string   // the whole line, when the message is fixed
		parts []string // otherwise words the line must contain
	}{
		{
			name:  "bad number",
			files: map[string]string{"smtp.ini": "max_recipients = ten\n"},
			want:  `config: smtp.ini: [main] max_recipients: "ten" is not a number`,
		},
		{
			name:  "unknown key",
			files: map[string]string{"smtp.ini": "listen = 127.0.0.1:2600\nmax_recipient = 10\n"},
			want:  `config: smtp.ini: [main] unknown key "max_recipient"`,
		},
		{
			name:  "bad log level",
			files: map[string]string{"smtp.ini": "[log]\nlevel = loud\n"},
			parts: []string{"smtp.ini", "[log]", "level", `"loud"`},
		},
		{
			name:  "unknown plugin",
			files: map[string]string{"plugins": "rcpt_to.in_host_list\nqueue/mailbox\n"},
			parts: []string{"config: plugins:", "unknown plugin", `"queue/mailbox"`},
		},
		{
			name: "maildir.ini unknown key",
			files: map[string]string{
				"plugins":     "queue/maildir\n",
				"maildir.ini": "path = ./spool\ndir = ./other\n",
			},
			want: `config: maildir.ini: [main] unknown key "dir"`,
		},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			out, errOut, code := runBinary(t, "check-config", "-c", dir)
			if code == 0 {
				t.Fatalf("exit 0, want non-zero; stdout:\n%s", out)
			}
			if strings.Contains(out, "config OK") {
				t.Errorf("stdout says config OK for a bad directory:\n%s", out)
			}
			line := strings.TrimSuffix(errOut, "\n")
			if line == "" || strings.Contains(line, "\n") {
				t.Fatalf("stderr is not exactly one line:\n%s", errOut)
			}
			if tt.want != "" && line != tt.want {
				t.Errorf("stderr\n got %s\nwant %s", line, tt.want)
			}
			for _, p := range tt.parts {
				if !strings.Contains(line, p) {
					t.Errorf("stderr %q does not name %s", line, p)
				}
			}
			// The server itself refuses the same directory with the same
			// message, printed as is or inside a JSON log line.
			_, serveErr, serveCode := runBinary(t, "-c", dir)
			quoted, _ := json.Marshal(line)
			if serveCode == 0 || !strings.Contains(serveErr, line) && !strings.Contains(serveErr, string(quoted[1:len(quoted)-1])) {
				t.Errorf("serve on the bad directory: exit %d, stderr %q; want non-zero and %q", serveCode, serveErr, line)
			}
		})
	}
}

// TestE2EEmbeddedDefault runs the binary with no -c: it must listen on
// 127.0.0.1:2525 and deliver mail for example.com into ./var/spool of the
// directory it was started in.
func TestE2EEmbeddedDefault(t *testing.T) {
	t.Parallel()
	bin := loopmxBinary(t)
	const addr = "127.0.0.1:2525"
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("%s is taken (%v); the embedded default needs it", addr, err)
	}
	l.Close()
	work := t.TempDir()
	srv, err := launch(t, []string{bin}, work, addr)
	if errors.Is(err, errAddrInUse) {
		t.Skipf("%s was taken before loopmx could bind it", addr)
	}
	if err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(srv.stderr.String(), "embedded default") {
		t.Errorf("the ready line does not say the embedded default config is in use:\n%s", srv.stderr.String())
	}
	msg := testMessage("default-1", 500)
	if err := smtp.SendMail(addr, nil, "sender@e2e.test", []string{"user@example.com"}, msg); err != nil {
		t.Fatalf("net/smtp SendMail: %v", err)
	}
	spool := filepath.Join(work, "var", "spool")
	files := readMaildir(t, spool, "new")
	if len(files) != 1 {
		t.Fatalf("%d files in %s/new, want 1", len(files), spool)
	}
	checkStored(t, files[0], msg)

	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.e2e.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@e2e.test"); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("user@other.org")
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != 550 || !strings.HasPrefix(te.Msg, "5.7.1") {
		t.Errorf("RCPT TO:<user@other.org>: %v, want 550 5.7.1", err)
	}
	c.Quit()
}
