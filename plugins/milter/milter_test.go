package milter_test

import (
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"loopmx/internal/servertest"
	_ "loopmx/plugins/milter"
	_ "loopmx/plugins/queue/discard"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	_ "loopmx/plugins/results"
)

// shortDir is a directory for unix sockets, whose paths must stay under
// 108 octets (t.TempDir's can be longer).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "mt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// testMilter is a milter written with go-milter's server side; its
// fields say what it does.
type testMilter struct {
	gomilter.NoOpMilter
	rejectRcpt string            // RCPT refused with SMFIR_REJECT
	eom        gomilter.Response // the answer at the end of the message
	mods       func(*gomilter.Modifier)
	hang       chan struct{} // the end of the message waits on it
	headers    chan []string // receives the fields the milter saw
	seen       []string
}

func (m *testMilter) RcptTo(rcpt string, _ *gomilter.Modifier) (gomilter.Response, error) {
	if strings.Trim(rcpt, "<>") == m.rejectRcpt {
		return gomilter.RespReject, nil
	}
	return gomilter.RespContinue, nil
}

func (m *testMilter) Header(name, value string, _ *gomilter.Modifier) (gomilter.Response, error) {
	m.seen = append(m.seen, name+": "+value)
	return gomilter.RespContinue, nil
}

func (m *testMilter) Headers(textproto.MIMEHeader, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (m *testMilter) Body(mod *gomilter.Modifier) (gomilter.Response, error) {
	if m.headers != nil {
		m.headers <- m.seen
	}
	m.seen = nil
	if m.hang != nil {
		<-m.hang
	}
	if m.mods != nil {
		m.mods(mod)
	}
	if m.eom != nil {
		return m.eom, nil
	}
	return gomilter.RespAccept, nil
}

// serveMilter serves a fresh copy of proto on a unix socket and returns
// the socket's path.
func serveMilter(t *testing.T, proto testMilter) string {
	t.Helper()
	path := filepath.Join(shortDir(t), "m.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &gomilter.Server{
		NewMilter: func() gomilter.Milter { m := proto; return &m },
		Actions: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptChangeBody |
			gomilter.OptAddRcpt | gomilter.OptRemoveRcpt | gomilter.OptQuarantine | gomilter.OptChangeFrom,
	}
	go srv.Serve(ln)
	// go-milter's Server.Close races with Serve; closing the listener
	// ends Serve as well.
	t.Cleanup(func() { ln.Close() })
	return path
}

// start serves a loopmx with milter.ini's text, results, the milter
// plugin and a Maildir.
func start(t *testing.T, ini string, chain ...string) (*servertest.Server, string) {
	t.Helper()
	spool := t.TempDir()
	plugins := "results\nmilter\nrcpt_to.in_host_list\nqueue/maildir\n"
	if len(chain) > 0 {
		plugins = chain[0]
	}
	return servertest.Start(t, map[string]string{
		"plugins":     plugins,
		"host_list":   "example.com\n",
		"milter.ini":  ini,
		"maildir.ini": "path = " + spool + "\n",
	}), spool
}

func header(msg string) string {
	h, _, _ := strings.Cut(msg, "\r\n\r\n")
	return h
}

const msg = "From: Alice <alice@example.org>\r\nTo: user@example.com\r\nSubject: milter test\r\n" +
	"Message-ID: <m1@example.org>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n" +
	"X-Folded: first\r\n\tsecond\r\n\r\nHello,\r\nthe body.\r\n"

var env = servertest.Plain("alice@example.org", "user@example.com")

// A real opendkim in signing mode, with a key the test makes: the
// DKIM-Signature it asks for is in the stored message.
func TestOpenDKIMSigns(t *testing.T) {
	for _, bin := range []string{"/usr/sbin/opendkim", "/usr/sbin/opendkim-genkey"} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("%s is not installed (Debian packages opendkim, opendkim-tools; make deps installs them)", bin)
		}
	}
	dir := shortDir(t)
	if out, err := exec.Command("/usr/sbin/opendkim-genkey", "-D", dir, "-d", "example.org", "-s", "test").CombinedOutput(); err != nil {
		t.Fatalf("opendkim-genkey: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "dkim.sock")
	conf := "Syslog no\nSocket local:" + sock + "\nDomain example.org\nSelector test\nKeyFile " + dir + "/test.private\n" +
		"Mode sv\nPidFile " + dir + "/opendkim.pid\nRequireSafeKeys false\nBackground no\nCanonicalization relaxed/relaxed\n"
	if err := os.WriteFile(filepath.Join(dir, "opendkim.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/opendkim", "-f", "-x", filepath.Join(dir, "opendkim.conf"))
	out, _ := os.Create(filepath.Join(dir, "opendkim.log"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
		out.Close()
	})
	servertest.Eventually(t, 20*time.Millisecond, "opendkim listens on "+sock, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	// milter after rcpt_to.in_host_list, which accepts each RCPT: opendkim
	// is told MAIL and RCPT at the message (catch-up), as its protocol
	// wants.
	srv, spool := start(t, "milters = opendkim\n[opendkim]\nsocket = unix:"+sock+"\n",
		"results\nrcpt_to.in_host_list\nmilter\nqueue/maildir\n")
	if r := servertest.Deliver(t, srv.Addr, env, msg); r.Code != 250 {
		logs, _ := os.ReadFile(filepath.Join(dir, "opendkim.log"))
		t.Fatalf("got %s, want 250\nloopmx:\n%s\nopendkim:\n%s", r, srv.Log, logs)
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	h := header(msgs[0])
	if !strings.Contains(h, "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;") ||
		!strings.Contains(h, "s=test;") {
		t.Fatalf("no DKIM-Signature by opendkim in the stored header:\n%s", h)
	}
	// The signature sits above the message's own fields, below loopmx's
	// Received.
	if strings.Index(h, "Received:") > strings.Index(h, "DKIM-Signature:") ||
		strings.Index(h, "DKIM-Signature:") > strings.Index(h, "From: Alice") {
		t.Errorf("DKIM-Signature out of place:\n%s", h)
	}
	if !strings.HasSuffix(msgs[0], "Hello,\r\nthe body.\r\n") {
		t.Errorf("body changed: %q", msgs[0])
	}
}

func TestMilterRejectsRecipient(t *testing.T) {
	headers := make(chan []string, 1)
	sock := serveMilter(t, testMilter{rejectRcpt: "blocked@example.com", headers: headers})
	srv, spool := start(t, "milters = check\n[check]\nsocket = "+sock+"\n")
	c := servertest.Dialer{}.Hello(t, srv.Addr)
	c.Cmd("MAIL FROM:<alice@example.org>", "250 ")
	c.CmdExact("RCPT TO:<blocked@example.com>", "550 5.7.1 Command rejected")
	c.Cmd("RCPT TO:<user@example.com>", "250 ")
	c.Cmd("DATA", "354 ")
	c.Send(strings.ReplaceAll(msg, "\r\n.", "\r\n..") + ".")
	c.Expect("250 ")
	c.Quit()
	seen := <-headers
	want := []string{"Subject: milter test", "X-Folded: first\n\tsecond"}
	for _, w := range want {
		found := false
		for _, s := range seen {
			found = found || s == w
		}
		if !found {
			t.Errorf("the milter did not see %q; it saw %q", w, seen)
		}
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 || strings.Contains(msgs[0], "blocked@") {
		t.Fatalf("want one message, for user@ only: %q", msgs)
	}
}

func TestMilterReplyAtEndOfMessage(t *testing.T) {
	sock := serveMilter(t, testMilter{eom: gomilter.NewResponseStr('y', "554 5.7.0 Virus found")})
	srv, spool := start(t, "milters = av\n[av]\nsocket = "+sock+"\n")
	r := servertest.Deliver(t, srv.Addr, env, msg)
	if r.Code != 554 || r.Text() != "5.7.0 Virus found" {
		t.Fatalf("got %s, want the milter's 554 5.7.0 Virus found", r)
	}
	if n := len(servertest.Stored(t, spool)); n != 0 {
		t.Fatalf("%d messages stored after a refusal", n)
	}
}

// A milter that hangs costs one message_timeout; then the fail mode
// answers: 451 4.7.1 (tempfail) or the message is stored (open).
func TestMilterHangs(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	sock := serveMilter(t, testMilter{hang: hang})
	for _, c := range []struct {
		fail string
		code int
	}{{"tempfail", 451}, {"open", 250}} {
		srv, spool := start(t, "milters = slow\n[slow]\nsocket = "+sock+"\nmessage_timeout = 1s\nfail = "+c.fail+"\n")
		r := servertest.Deliver(t, srv.Addr, env, msg)
		if r.Code != c.code {
			t.Fatalf("fail = %s: got %s, want %d", c.fail, r, c.code)
		}
		if c.code == 451 && r.Text() != "4.7.1 Service unavailable, try again later" {
			t.Errorf("fail = tempfail: got %s", r)
		}
		if n := len(servertest.Stored(t, spool)); (n == 1) != (c.code == 250) {
			t.Errorf("fail = %s: %d messages stored", c.fail, n)
		}
		servertest.Eventually(t, 10*time.Millisecond, "the failure is logged", func() bool {
			return strings.Contains(srv.Log.String(), `"milter":"slow"`) && strings.Contains(srv.Log.String(), "milter failed")
		})
	}
}

// The changes loopmx can make are made; the others are refused with a
// warning, and the message is stored as it came.
func TestMilterModifications(t *testing.T) {
	sock := serveMilter(t, testMilter{mods: func(m *gomilter.Modifier) {
		m.AddHeader("X-Checked", "yes\n\tfolded")
		m.ChangeHeader(1, "Subject", "changed")
		m.ChangeHeader(1, "X-Folded", "") // a delete
		m.ReplaceBody([]byte("new body\r\n"))
		m.AddRecipient("copy@example.com")
		m.Quarantine("looks odd")
	}})
	srv, spool := start(t, "milters = mod\n[mod]\nsocket = "+sock+"\n")
	if r := servertest.Deliver(t, srv.Addr, env, msg); r.Code != 250 {
		t.Fatalf("got %s, want 250", r)
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	h := header(msgs[0])
	for _, want := range []string{"X-Checked: yes\r\n\tfolded", "Subject: milter test", "X-Envelope-To: <copy@example.com>"} {
		if !strings.Contains(h, want) {
			t.Errorf("stored header lacks %q:\n%s", want, h)
		}
	}
	if strings.Contains(h, "X-Folded") {
		t.Errorf("the field the milter deleted is stored:\n%s", h)
	}
	if !strings.HasSuffix(msgs[0], "the body.\r\n") {
		t.Errorf("the body was replaced: %q", msgs[0])
	}
	servertest.Eventually(t, 10*time.Millisecond, "the refusal and the quarantine are logged", func() bool {
		l := srv.Log.String()
		return strings.Contains(l, "milter asked for changes loopmx cannot make") &&
			strings.Contains(l, `"refused":["change header Subject","replace body"]`) &&
			strings.Contains(l, "fail (quarantine): mod: looks odd")
	})
}

func TestMilterDiscard(t *testing.T) {
	sock := serveMilter(t, testMilter{eom: gomilter.RespDiscard})
	srv, spool := start(t, "milters = bin\n[bin]\nsocket = "+sock+"\n")
	if r := servertest.Deliver(t, srv.Addr, env, msg); r.Code != 250 {
		t.Fatalf("got %s, want 250 (discarded)\n%s", r, srv.Log)
	}
	if n := len(servertest.Stored(t, spool)); n != 0 {
		t.Fatalf("a discarded message was stored (%d)", n)
	}
}

// A milter that is not there: the connection is served, MAIL gets 451
// 4.7.1 with fail = tempfail; with fail = open the message is stored.
func TestMilterDown(t *testing.T) {
	sock := filepath.Join(shortDir(t), "none.sock")
	srv, _ := start(t, "milters = gone\n[gone]\nsocket = "+sock+"\n")
	c := servertest.Dialer{}.Hello(t, srv.Addr)
	c.CmdExact("MAIL FROM:<alice@example.org>", "451 4.7.1 Service unavailable, try again later")
	c.Quit()

	srv, spool := start(t, "milters = gone\n[gone]\nsocket = "+sock+"\nfail = open\n")
	if r := servertest.Deliver(t, srv.Addr, env, msg); r.Code != 250 {
		t.Fatalf("fail = open: got %s, want 250", r)
	}
	if n := len(servertest.Stored(t, spool)); n != 1 {
		t.Fatalf("fail = open: %d messages stored", n)
	}
}

// Two milters run in order; the first one's refusal leaves the second
// unasked.
func TestMiltersInOrder(t *testing.T) {
	first := serveMilter(t, testMilter{mods: func(m *gomilter.Modifier) { m.AddHeader("X-First", "1") }})
	second := serveMilter(t, testMilter{mods: func(m *gomilter.Modifier) { m.AddHeader("X-Second", "2") }})
	srv, spool := start(t, "milters = a, b\n[a]\nsocket = "+first+"\n[b]\nsocket = "+second+"\n")
	if r := servertest.Deliver(t, srv.Addr, env, msg); r.Code != 250 {
		t.Fatalf("got %s", r)
	}
	h := header(servertest.Stored(t, spool)[0])
	if i, j := strings.Index(h, "X-First: 1"), strings.Index(h, "X-Second: 2"); i < 0 || j < i {
		t.Fatalf("want X-First then X-Second:\n%s", h)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct{ ini, want string }{
		{"", "lists no milter"},
		{"milters = a\n", `[a] socket: "" is missing`},
		{"milters = a\n[a]\nsocket = relative\n", "is not unix:/path"},
		{"milters = a\n[a]\nsocket = /x.sock\nfail = maybe\n", `fail: "maybe" is not one of open, tempfail`},
		{"milters = a, a\n[a]\nsocket = /x.sock\n", "listed twice"},
		{"milters = a\n[a]\nsocket = /x.sock\nmessage_timeout = 40s\n", "timeout"},
		{"milters = a\n[a]\nsocket = /x.sock\ncolour = red\n", `unknown key "colour"`},
	} {
		servertest.CheckBuild(t, map[string]string{"plugins": "milter\nqueue/discard\n", "milter.ini": c.ini}, "milter.ini", c.want)
	}
}
