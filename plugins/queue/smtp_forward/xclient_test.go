package smtpforward_test

import (
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"loopmx/internal/servertest"
)

// postfix is a private Postfix instance run by a test: its own config
// directory, queue and log file, its smtpd on a free port of 127.0.0.1,
// loopmx (127.0.0.1) authorised for XCLIENT and XFORWARD, and every
// message put on hold so that the test can read what Postfix stored.
type postfix struct {
	dir  string
	addr string
}

// startPostfix starts the instance, or skips the test when Postfix is
// not installed or the test does not run as root (Postfix's master must
// start as root and give its daemons to the postfix user).
func startPostfix(t *testing.T) *postfix {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/postfix"); err != nil {
		t.Skip("postfix is not installed (Debian package postfix; make deps installs it)")
	}
	if os.Getuid() != 0 {
		t.Skip("a private Postfix instance needs root (its master starts as root); skipping the XCLIENT/XFORWARD test")
	}
	pu, err := user.Lookup("postfix")
	if err != nil {
		t.Skipf("no postfix user: %v", err)
	}
	// Postfix's daemons run as the postfix user and must reach the queue,
	// so the directory is not t.TempDir (mode 0700 under a 0700 parent).
	dir, err := os.MkdirTemp("", "postfix")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p := &postfix{dir: dir, addr: "127.0.0.1:" + strconv.Itoa(port)}
	mainCF := strings.ReplaceAll(`compatibility_level = 3.6
queue_directory = DIR/queue
data_directory = DIR/data
mail_owner = postfix
setgid_group = postdrop
myhostname = backend.test
mydestination = example.com
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = DIR/maillog
maillog_file_prefixes = DIR
smtpd_authorized_xclient_hosts = 127.0.0.1
smtpd_authorized_xforward_hosts = 127.0.0.1
header_checks = regexp:DIR/header_checks
`, "DIR", dir)
	masterCF := "127.0.0.1:" + strconv.Itoa(port) + " inet n - n - - smtpd\n" + `pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
`
	for name, content := range map[string]string{"main.cf": mainCF, "master.cf": masterCF, "header_checks": "/^Subject:/ HOLD\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	for _, d := range []string{"queue", "data"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	os.Chown(filepath.Join(dir, "data"), uid, gid)
	t.Cleanup(func() {
		exec.Command("/usr/sbin/postfix", "-c", dir, "stop").Run()
		os.RemoveAll(dir)
	})
	if out, err := exec.Command("/usr/sbin/postfix", "-c", dir, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix -c %s start: %v\n%s\n%s", dir, err, out, p.log())
	}
	servertest.Eventually(t, 50*time.Millisecond, "Postfix's smtpd listens on "+p.addr, func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return p
}

func (p *postfix) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	return string(b)
}

// held returns the header of each message on hold, as postcat shows it,
// keyed by its Subject.
func (p *postfix) held(t *testing.T) map[string]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(p.dir, "queue", "hold", "*"))
	out := map[string]string{}
	for _, f := range files {
		b, err := exec.Command("/usr/sbin/postcat", "-c", p.dir, "-h", f).CombinedOutput()
		if err != nil {
			continue // still being written
		}
		h := string(b)
		if i := strings.Index(h, "Subject: "); i >= 0 {
			subj, _, _ := strings.Cut(h[i+len("Subject: "):], "\n")
			out[subj] = h
		}
	}
	return out
}

// sendFrom sends one message to loopmx from the local address from, with
// helo as HELO name.
func sendFrom(t *testing.T, addr, from, helo, subject string) {
	t.Helper()
	c := servertest.Dialer{}.DialFrom(t, addr, from)
	c.Expect("220 ")
	c.EHLO(helo)
	c.Cmd("MAIL FROM:<alice@example.org>", "250 ")
	c.Cmd("RCPT TO:<user@example.com>", "250 ")
	c.Cmd("DATA", "354 ")
	c.Send("From: alice@example.org\r\nSubject: " + subject + "\r\n\r\nhello\r\n.")
	c.Expect("250 ")
	c.Quit()
}

// The next hop, a real Postfix smtpd, names the original client in its
// Received header (XCLIENT) or its log (XFORWARD); two clients in turn
// share loopmx's pooled session, and each message carries its own.
func TestNextHopSeesTheClient(t *testing.T) {
	for _, mode := range []string{"xclient", "xforward"} {
		t.Run(mode, func(t *testing.T) {
			pf := startPostfix(t)
			srv := servertest.Start(t, forwardINI(pf.addr, "xclient = "+mode))
			sendFrom(t, srv.Addr, "127.0.0.2", "first.client.test", "one")
			sendFrom(t, srv.Addr, "127.0.0.3", "second.client.test", "two")
			var held map[string]string
			servertest.Eventually(t, 50*time.Millisecond, "two messages on hold at Postfix", func() bool {
				held = pf.held(t)
				return len(held) == 2
			})
			log := pf.log()
			switch mode {
			case "xclient":
				for subj, want := range map[string]string{
					"one": "Received: from first.client.test (unknown [127.0.0.2])",
					"two": "Received: from second.client.test (unknown [127.0.0.3])",
				} {
					if !strings.Contains(held[subj], want) {
						t.Errorf("message %q at Postfix lacks %q:\n%s", subj, want, held[subj])
					}
				}
			case "xforward":
				for _, want := range []string{"orig_client=unknown[127.0.0.2]", "orig_client=unknown[127.0.0.3]"} {
					if !strings.Contains(log, want) {
						t.Errorf("Postfix's log lacks %q:\n%s", want, log)
					}
				}
			}
			if t.Failed() {
				t.Logf("Postfix's log:\n%s", log)
			}
		})
	}
}

// With xclient = off (the default) Postfix sees loopmx.
func TestNextHopSeesLoopmxWhenOff(t *testing.T) {
	pf := startPostfix(t)
	srv := servertest.Start(t, forwardINI(pf.addr))
	sendFrom(t, srv.Addr, "127.0.0.2", "first.client.test", "one")
	var held map[string]string
	servertest.Eventually(t, 50*time.Millisecond, "the message on hold at Postfix", func() bool {
		held = pf.held(t)
		return len(held) == 1
	})
	if !strings.Contains(held["one"], "Received: from mx.test (localhost [127.0.0.1])") {
		t.Errorf("want Postfix to name loopmx as the client:\n%s", held["one"])
	}
}
