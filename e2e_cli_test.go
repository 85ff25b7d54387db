package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/config"
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

// checkConfigCase is a config directory that check-config and the server
// must both refuse with the same one-line error.
type checkConfigCase struct {
	name  string
	files map[string]string
	want  string   // the whole line, when the message is fixed
	parts []string // otherwise words the line must contain
}

// tlsCases are tls.ini mistakes the server refuses at start: check-config
// must find each of them too, since it loads tls.ini the same way.
func tlsCases(t *testing.T) []checkConfigCase {
	t.Helper()
	ca := newE2ECA(t)
	certs := t.TempDir()
	ca.writeServerCert(t, certs, "mx.test")
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(certs, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	good := map[string]string{
		"plugins":   "rcpt_to.in_host_list\nqueue/maildir\n",
		"host_list": "example.com\n",
		"mx.crt":    read("mx.test.crt"),
		"mx.key":    read("mx.test.key"),
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	return []checkConfigCase{
		{
			name:  "tls.ini missing certificate",
			files: with(map[string]string{"tls.ini": "cert = missing.crt\nkey = mx.key\n"}),
			parts: []string{"config: tls.ini: cert ", "missing.crt", "no such file or directory"},
		},
		{
			name:  "tls.ini unreadable key",
			files: with(map[string]string{"tls.ini": "cert = mx.crt\nkey = keydir\n", "keydir/README": "a directory where the key should be\n"}),
			parts: []string{"config: tls.ini: cert ", "key ", "keydir", "is a directory"},
		},
		{
			name:  "tls.ini key that is not a key",
			files: with(map[string]string{"tls.ini": "cert = mx.crt\nkey = mx.crt\n"}),
			parts: []string{"config: tls.ini: cert ", "mx.crt"},
		},
		{
			name:  "tls.ini typo",
			files: with(map[string]string{"tls.ini": "cert = mx.crt\nkey = mx.key\nmin_versoin = 1.2\n"}),
			want:  `config: tls.ini: [main] unknown key "min_versoin"`,
		},
		{
			name:  "tls.ini bad value",
			files: with(map[string]string{"tls.ini": "cert = mx.crt\nkey = mx.key\nmin_version = 1.4\n"}),
			want:  `config: tls.ini: min_version: "1.4" is not one of 1.0, 1.1, 1.2, 1.3`,
		},
		{
			name:  "smtps_listen without a certificate",
			files: with(map[string]string{"smtp.ini": "listen = 127.0.0.1:2600\nsmtps_listen = 127.0.0.1:2465\n"}),
			parts: []string{"config: smtp.ini: [main] smtps_listen: ", "127.0.0.1:2465", "tls.ini"},
		},
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
		if !strings.Contains(out, "queue/maildir: the spool "+spool+" does not exist; it will be created by ") {
			t.Errorf("output does not say the spool will be created at start:\n%s", out)
		}
		if _, err := os.Stat(spool); !os.IsNotExist(err) {
			t.Errorf("check-config created the spool %s (%v)", spool, err)
		}
	})

	bad := []checkConfigCase{
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
			name:  "no plugins file",
			files: map[string]string{"smtp.ini": "listen = 127.0.0.1:2600\n"},
			parts: []string{"config: ", "/plugins: no such file", "every message would get 451"},
		},
		{
			name:  "no queue plugin",
			files: map[string]string{"plugins": "rcpt_to.in_host_list\n", "host_list": "example.com\n"},
			parts: []string{"/plugins: no queue plugin", "queue/maildir"},
		},
		{
			name:  "spool under a file",
			files: map[string]string{"plugins": "queue/maildir\n", "maildir.ini": "path = host_list/spool\n", "host_list": "example.com\n"},
			parts: []string{"config: maildir.ini: path = ", "host_list/spool", "not a directory"},
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
	bad = append(bad, tlsCases(t)...)
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

// TestE2EHelp: -h, --help and help print the usage to stdout and exit 0:
// the commands, the signals, UV_THREADPOOL_SIZE and where the docs are.
// Each command has its own help; a bad flag exits 2 with a hint.
func TestE2EHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		out, errOut, code := runBinary(t, args...)
		if code != 0 || errOut != "" {
			t.Errorf("loopmx %s: exit %d, stderr %q; want 0 and nothing", args[0], code, errOut)
		}
		for _, want := range []string{"loopmx check-config [-c DIR]", "loopmx doctor [-c DIR]", "--version",
			"TERM, INT", "HUP", "USR2", "UV_THREADPOOL_SIZE", "docs/", "config.md", "supervisor.md", "contrib/config"} {
			if !strings.Contains(out, want) {
				t.Errorf("loopmx %s lacks %q:\n%s", args[0], want, out)
			}
		}
	}
	for cmd, wants := range map[string][]string{
		"check-config": {"usage: loopmx check-config [-c DIR]", "changes nothing on disk", "tls.ini", "Exit status"},
		"doctor":       {"usage: loopmx doctor [-c DIR]", "net.core.somaxconn", "CHANGE", "Exit status"},
	} {
		for _, h := range []string{"-h", "--help"} {
			out, errOut, code := runBinary(t, cmd, h)
			if code != 0 || errOut != "" {
				t.Errorf("loopmx %s %s: exit %d, stderr %q; want 0 and nothing", cmd, h, code, errOut)
			}
			for _, want := range wants {
				if !strings.Contains(out, want) {
					t.Errorf("loopmx %s %s lacks %q:\n%s", cmd, h, want, out)
				}
			}
		}
	}
	out, errOut, code := runBinary(t, "--no-such-flag")
	if code != 2 || out != "" || !strings.Contains(errOut, "no-such-flag") || !strings.Contains(errOut, "loopmx -h") {
		t.Errorf("a bad flag: exit %d, stdout %q, stderr %q; want 2 and a hint on stderr", code, out, errOut)
	}
	_, errOut, code = runBinary(t, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("an unknown command: exit %d, stderr %q", code, errOut)
	}
}

// TestE2EConsoleLogWithoutTerminal: with [log] format = console and the
// log going to a pipe (a file, the journal), there are no colour escapes.
func TestE2EConsoleLogWithoutTerminal(t *testing.T) {
	t.Parallel()
	conf := maildirConfig(t, t.TempDir())
	srv := startBinary(t, conf, "[log]\nformat = console\n")
	deliverOne(t, srv.addr, "console")
	srv.stop()
	out := srv.stderr.String()
	if !strings.Contains(out, "loopmx ready") || !strings.Contains(out, "INF") {
		t.Fatalf("no console log lines:\n%s", out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("colour escapes in a log that goes to a pipe:\n%q", tail(out, 600))
	}
}

// TestIsTerminal: a pseudo-terminal is a terminal, a pipe and a file are
// not; the console log has colours on the first and none in a file.
func TestIsTerminal(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if !isTerminal(pts) || isTerminal(w) || isTerminal(file) || isTerminal(&bytes.Buffer{}) {
		t.Errorf("isTerminal: pty %v, pipe %v, file %v, buffer %v; want true, false, false, false",
			isTerminal(pts), isTerminal(w), isTerminal(file), isTerminal(&bytes.Buffer{}))
	}
	cfg := &config.Config{Log: config.Log{Level: "info", Format: "console"}}
	termLog := newLogger(cfg, pts)
	termLog.Info().Msg("coloured")
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	var seen []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(seen, []byte("coloured")) {
		k, err := master.Read(buf)
		seen = append(seen, buf[:k]...)
		if err != nil {
			t.Fatalf("reading the terminal: %v (read %q)", err, seen)
		}
	}
	if !bytes.Contains(seen, []byte("\x1b[")) {
		t.Errorf("console log on a terminal has no colours: %q", seen)
	}
	log := newLogger(cfg, file)
	log.Info().Msg("plain")
	b, _ := os.ReadFile(file.Name())
	if !strings.Contains(string(b), "plain") || strings.Contains(string(b), "\x1b[") {
		t.Errorf("console log to a file: %q, want the line without escapes", b)
	}
}
