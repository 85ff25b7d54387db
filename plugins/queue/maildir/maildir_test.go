package maildir_test

import (
	"bytes"
	"fmt"
	"net/mail"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/internal/spooltest"
	"loopmx/plugins"
	"loopmx/plugins/queue/maildir"
)

// body is a message as the session hands it over: CRLF line ends, already
// dot-unstuffed, with 8-bit text and a line that starts with a dot.
const body = "From: Sender <sender@example.org>\r\n" +
	"Subject: maildir test\r\n" +
	"\r\n" +
	"first line\r\n" +
	".a line that began with two dots\r\n" +
	"gr\xc3\xbc\xc3\x9fe\r\n"

// newConn returns a connection inside a transaction from sender to rcpts,
// logging into logBuf.
func newConn(id string, logBuf *bytes.Buffer, sender string, rcpts ...string) *plugins.Conn {
	l := zerolog.New(logBuf)
	c := &plugins.Conn{
		ID:         id,
		RemoteIP:   netip.MustParseAddr("192.0.2.10"),
		RemotePort: 40000,
		Hostname:   "mx.example.net",
		Helo:       "client.example.org",
		Log:        &l,
	}
	c.BeginTx(sender, time.Now())
	c.Tx.Rcpts = rcpts
	return c
}

// queue runs the queue hook the way the event loop does: Step on the loop,
// which must stop at the blocking maildir hook, then RunFrom on a worker.
func queue(t *testing.T, ch *plugins.Chain, c *plugins.Conn, msg string) string {
	t.Helper()
	call := &plugins.Call{Hook: plugins.HookQueue, Msg: plugins.NewMessage([]byte(msg), "ESMTP")}
	res, next, done := ch.Step(c, call, 0)
	if done {
		t.Fatalf("the maildir queue hook ran inline on the event loop (result %s)", res.Action)
	}
	res = ch.RunFrom(c, call, next)
	if res.Plugin != maildir.Name {
		t.Errorf("decided by %q, want %s", res.Plugin, maildir.Name)
	}
	return string(plugins.ReplyFor(plugins.HookQueue, res).AppendTo(nil))
}

func open(t *testing.T, dir string) *plugins.Chain {
	t.Helper()
	m, err := maildir.Open(dir, "mx.example.net")
	if err != nil {
		t.Fatal(err)
	}
	ch := plugins.NewChain(m)
	t.Cleanup(func() { ch.Close() })
	return ch
}

// entries lists the names in dir/sub.
func entries(t *testing.T, dir, sub string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestQueueStoresMessage(t *testing.T) {
	dir := t.TempDir()
	ch := open(t, dir)
	var logBuf bytes.Buffer
	c := newConn("w1.q", &logBuf, "sender@example.org", "a@example.com", "b@example.com")

	if got, want := queue(t, ch, c, body), "250 2.0.0 Ok: queued as w1.q.1\r\n"; got != want {
		t.Fatalf("client reads %q, want %q", got, want)
	}
	if left := entries(t, dir, "tmp"); len(left) != 0 {
		t.Errorf("tmp/ still holds %q", left)
	}
	files := entries(t, dir, "new")
	if len(files) != 1 {
		t.Fatalf("new/ holds %q, want one file", files)
	}
	path := filepath.Join(dir, "new", files[0])
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := string(data)

	const head = "Return-Path: <sender@example.org>\r\n" +
		"X-Envelope-To: <a@example.com>\r\n" +
		"X-Envelope-To: <b@example.com>\r\n" +
		"Received: from client.example.org ([192.0.2.10])\r\n" +
		"\tby mx.example.net (loopmx) with ESMTP id w1.q.1;\r\n\t"
	if !strings.HasPrefix(got, head) {
		t.Fatalf("file starts\n%q\nwant\n%q", got[:min(len(got), len(head))], head)
	}
	rest := got[len(head):]
	eol := strings.Index(rest, "\r\n")
	if eol < 0 {
		t.Fatalf("no end to the Received date in %q", rest)
	}
	if _, err := mail.ParseDate(rest[:eol]); err != nil {
		t.Errorf("Received date %q: %v", rest[:eol], err)
	}
	if stored := rest[eol+2:]; stored != body {
		t.Errorf("stored message\n%q\nwant the body exactly\n%q", stored, body)
	}

	// A mail reader sees the added fields in front of the message's own.
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header["X-Envelope-To"]; len(got) != 2 {
		t.Errorf("X-Envelope-To = %q, want one per recipient", got)
	}
	if m.Header.Get("Subject") != "maildir test" || m.Header.Get("Return-Path") != "<sender@example.org>" {
		t.Errorf("header = %v", m.Header)
	}
}

func TestQueueNullSenderOneRecipient(t *testing.T) {
	dir := t.TempDir()
	ch := open(t, dir)
	var logBuf bytes.Buffer
	c := newConn("w1.n", &logBuf, "", "postmaster@example.com")
	if got := queue(t, ch, c, "Subject: bounce\r\n\r\nx\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("client reads %q", got)
	}
	files := entries(t, dir, "new")
	if len(files) != 1 {
		t.Fatalf("new/ holds %q", files)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "new", files[0]))
	want := "Return-Path: <>\r\nX-Envelope-To: <postmaster@example.com>\r\nReceived: from client.example.org ([192.0.2.10])\r\n" +
		"\tby mx.example.net (loopmx) with ESMTP id w1.n.1\r\n\tfor <postmaster@example.com>;\r\n\t"
	if !strings.HasPrefix(string(data), want) {
		t.Errorf("file starts %q, want %q", data, want)
	}
	if !strings.HasSuffix(string(data), "\r\nSubject: bounce\r\n\r\nx\r\n") {
		t.Errorf("file %q does not end with the message after the Received date", data)
	}
}

func TestFileNames(t *testing.T) {
	dir := t.TempDir()
	m, err := maildir.Open(dir, "mx:2525/a.example.net")
	if err != nil {
		t.Fatal(err)
	}
	ch := plugins.NewChain(m)
	defer ch.Close()
	var logBuf bytes.Buffer
	for i := range 3 {
		c := newConn("w1."+strconv.Itoa(i), &logBuf, "s@example.org", "r@example.com")
		if got := queue(t, ch, c, body); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("client reads %q", got)
		}
	}
	// Maildir's "time.unique.host", where the host part may hold neither
	// '/' nor ':'.
	re := regexp.MustCompile(`^[0-9]+\.M[0-9]+P` + strconv.Itoa(os.Getpid()) + `Q[0-9]+\.mx_2525_a\.example\.net$`)
	for _, n := range entries(t, dir, "new") {
		if !re.MatchString(n) {
			t.Errorf("file name %q does not match %s", n, re)
		}
	}
}

func TestOpenCreatesMaildir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "deep", "spool")
	m, err := maildir.Open(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, sub := range []string{"tmp", "new", "cur"} {
		if st, err := os.Stat(filepath.Join(dir, sub)); err != nil || !st.IsDir() {
			t.Errorf("%s/ was not created: %v", sub, err)
		}
	}
	if m.Name() != "queue/maildir" {
		t.Errorf("Name() = %q", m.Name())
	}
}

func TestConcurrentQueueNamesAreUnique(t *testing.T) {
	dir := t.TempDir()
	ch := open(t, dir)
	const n = 100
	replies := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var logBuf bytes.Buffer
			c := newConn(fmt.Sprintf("w1.c%d", i), &logBuf, "s@example.org", fmt.Sprintf("user%d@example.com", i))
			call := &plugins.Call{Hook: plugins.HookQueue, Msg: plugins.NewMessage([]byte(body), "ESMTP")}
			res := ch.RunFrom(c, call, 0)
			replies[i] = string(plugins.ReplyFor(plugins.HookQueue, res).AppendTo(nil))
		})
	}
	wg.Wait()
	for i, r := range replies {
		if want := fmt.Sprintf("250 2.0.0 Ok: queued as w1.c%d.1\r\n", i); r != want {
			t.Errorf("message %d: client reads %q, want %q", i, r, want)
		}
	}
	files := entries(t, dir, "new")
	if len(files) != n {
		t.Fatalf("new/ holds %d files, want %d", len(files), n)
	}
	seen := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, "new", f))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		seen[m.Header.Get("X-Envelope-To")] = true
	}
	for i := range n {
		if to := fmt.Sprintf("<user%d@example.com>", i); !seen[to] {
			t.Errorf("no file for %s", to)
		}
	}
	if left := entries(t, dir, "tmp"); len(left) != 0 {
		t.Errorf("tmp/ still holds %d files", len(left))
	}
}

// replaceWithFile swaps the directory dir/sub for a regular file. Running
// as root, a chmod would not stop the plugin; a file in the way does.
func replaceWithFile(t *testing.T, dir, sub string) {
	t.Helper()
	p := filepath.Join(dir, sub)
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("in the way\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestQueueFailures(t *testing.T) {
	const internal = "451 4.3.0 Internal error, try again later\r\n"
	for _, tc := range []struct {
		name     string
		sabotage func(t *testing.T, dir string)
		check    []string // subfolders that must stay directories and be empty
	}{
		{"tmp/ is not a directory", func(t *testing.T, dir string) { replaceWithFile(t, dir, "tmp") }, []string{"new"}},
		{"new/ is not a directory", func(t *testing.T, dir string) { replaceWithFile(t, dir, "new") }, []string{"tmp"}},
		{"the spool is gone", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			ch := open(t, dir)
			tc.sabotage(t, dir)
			var logBuf bytes.Buffer
			c := newConn("w1.f", &logBuf, "sender@example.org", "user@example.com")
			if got := queue(t, ch, c, body); got != internal {
				t.Errorf("client reads %q, want %q", got, internal)
			}
			for _, sub := range tc.check {
				if left := entries(t, dir, sub); len(left) != 0 {
					t.Errorf("%s/ holds %q after a failure", sub, left)
				}
			}
			if st, err := os.Stat(filepath.Join(dir, "new")); err == nil && !st.IsDir() {
				data, _ := os.ReadFile(filepath.Join(dir, "new"))
				if string(data) != "in the way\n" {
					t.Errorf("the file in place of new/ was changed to %q", data)
				}
			}
			log := logBuf.String()
			for _, want := range []string{`"level":"error"`, `"plugin":"queue/maildir"`, `"tx":"w1.f.1"`, "cannot store message", dir} {
				if !strings.Contains(log, want) {
					t.Errorf("log %q lacks %s", log, want)
				}
			}
		})
	}
}

// buildFrom loads a config directory holding files, builds its chain and
// starts it, as the server does.
func buildFrom(t *testing.T, files map[string]string) (string, *plugins.Chain, error) {
	t.Helper()
	files["smtp.ini"] = "[main]\nme = mx.example.net\n"
	dir := servertest.WriteDir(t, files)
	ch, err := servertest.BuildDir(t, dir)
	if err == nil {
		err = ch.Start()
	}
	return dir, ch, err
}

func TestSetupRelativePath(t *testing.T) {
	dir, ch, err := buildFrom(t, map[string]string{"plugins": "queue/maildir\n", "maildir.ini": "path = spool\n"})
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	if got := queue(t, ch, newConn("w1.s", &logBuf, "s@example.org", "r@example.com"), body); !strings.HasPrefix(got, "250 2.0.0 ") {
		t.Fatalf("client reads %q", got)
	}
	if files := entries(t, filepath.Join(dir, "spool"), "new"); len(files) != 1 {
		t.Errorf("<config dir>/spool/new holds %q, want the message", files)
	}
	if _, err := os.Stat(filepath.Join(dir, "spool", "cur")); err != nil {
		t.Errorf("cur/ was not created: %v", err)
	}
}

func TestSetupDefaultPath(t *testing.T) {
	dir, _, err := buildFrom(t, map[string]string{"plugins": "queue/maildir\n"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "var", "spool", "new")); err != nil {
		t.Errorf("without maildir.ini the spool is not <config dir>/var/spool: %v", err)
	}
}

func TestSetupAbsolutePath(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "abs-spool")
	_, _, err := buildFrom(t, map[string]string{"plugins": "queue/maildir\n", "maildir.ini": "; absolute\npath = " + spool + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(spool, "new")); err != nil {
		t.Errorf("absolute path not used: %v", err)
	}
}

func TestSetupEmbeddedDefault(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	cfg, err := config.Default(nil)
	if err != nil {
		t.Skipf("the built-in config does not load on this host: %v", err)
	}
	cfg.Plugins = []string{maildir.Name}
	ch, err := plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(wd, "var", "spool", "new")); err != nil {
		t.Errorf("the built-in config's spool is not ./var/spool of the working directory: %v", err)
	}
}

func TestSetupErrors(t *testing.T) {
	for _, tc := range []struct {
		name, ini string
		want      []string
	}{
		{"unknown key", "path = spool\nfsync = no\n", []string{"maildir.ini", `"fsync"`}},
		{"unknown section", "path = spool\n[queue]\npath = x\n", []string{"maildir.ini", "queue"}},
		{"empty path", "path =\n", []string{"maildir.ini", "path"}},
		{"path under a file", "path = plugins/spool\n", []string{"maildir.ini", "path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := buildFrom(t, map[string]string{"plugins": "queue/maildir\n", "maildir.ini": tc.ini})
			if err == nil {
				t.Fatal("Build accepted the bad maildir.ini")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

func TestSetupTimeout(t *testing.T) {
	_, ch, err := buildFrom(t, map[string]string{"plugins": "queue/maildir\n", "maildir.ini": "path = spool\ntimeout = 10s\n"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ch.Timeout(plugins.HookQueue, 0); got != 10*time.Second {
		t.Errorf("the queue hook's timeout = %v, want 10s from maildir.ini", got)
	}
	_, _, err = buildFrom(t, map[string]string{"plugins": "queue/maildir\n", "maildir.ini": "timeout = 0\n"})
	if err == nil || !strings.Contains(err.Error(), "maildir.ini") || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("timeout = 0: error %v, want one naming maildir.ini and timeout", err)
	}
}

// TestSetupChangesNothing: building the chain (what check-config and a
// reload check do) creates no directory; it says the spool will be
// created at start, and by whom. Start creates it.
func TestSetupChangesNothing(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "var", "spool")
	dir := servertest.WriteDir(t, map[string]string{
		"smtp.ini":    "me = mx.example.net\n",
		"plugins":     "queue/maildir\n",
		"maildir.ini": "path = " + spool + "\n",
	})
	ch, err := servertest.BuildDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(spool)); !os.IsNotExist(err) {
		t.Fatalf("Build touched the disk: %s exists (%v)", filepath.Dir(spool), err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	plans := ch.Plans()
	want := "queue/maildir: the spool " + spool + " does not exist; it will be created by " + me.Username + " (uid " + me.Uid + ") at start"
	if len(plans) != 1 || plans[0] != want {
		t.Errorf("Plans() = %q, want [%q]", plans, want)
	}
	if err := ch.Start(); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"tmp", "new", "cur"} {
		st, err := os.Stat(filepath.Join(spool, sub))
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Errorf("after Start, %s/: %v %v, want a directory of mode 0700", sub, st, err)
		}
	}
	if plans := ch.Plans(); len(plans) != 1 || !strings.HasSuffix(plans[0], "the spool "+spool+" is writable by "+me.Username+" (uid "+me.Uid+")") {
		t.Errorf("Plans() after Start = %q", plans)
	}
}

// TestSetupChecksTheRunAsUser: with nodes >= 1 and user = nobody the
// workers run as nobody, so a spool nobody cannot write (or create) is a
// config error that names the file, the path, the user and the fix,
// before anything is created. The test needs root to make directories
// owned by someone else.
func TestSetupChecksTheRunAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes directories that belong to root and to nobody, and checks them for nobody")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody on this machine: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	// Every directory above the spool must be searchable by nobody: not
	// under t.TempDir(), whose parent is 0700.
	top, err := os.MkdirTemp("", "loopmx-runas-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	rootOwned := filepath.Join(top, "root-spool")
	if err := os.Mkdir(rootOwned, 0o700); err != nil {
		t.Fatal(err)
	}
	nobodyOwned := filepath.Join(top, "nobody-dir")
	if err := os.Mkdir(nobodyOwned, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(nobodyOwned, uid, -1); err != nil {
		t.Fatal(err)
	}
	rootNew := filepath.Join(top, "root-new")
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		if err := os.Mkdir(filepath.Join(rootNew, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		if sub != "new" {
			if err := os.Chown(filepath.Join(rootNew, sub), uid, -1); err != nil {
				t.Fatal(err)
			}
		}
	}
	who := "nobody (uid " + nobody.Uid + ")"
	for _, tc := range []struct {
		name, path string
		want       []string // in the error; none: Build succeeds
		plan       string
	}{
		{"existing spool owned by root", rootOwned,
			[]string{"config: maildir.ini: path = " + rootOwned, rootOwned + " is not searchable (x) by " + who, "mode drwx------", "fix: chown -R nobody: " + rootOwned}, ""},
		{"missing spool in a root directory", filepath.Join(top, "new-spool"),
			[]string{"maildir.ini", filepath.Join(top, "new-spool") + " does not exist and " + who + " cannot create it", "fix: install -d -o nobody -m 0750 " + filepath.Join(top, "new-spool")}, ""},
		{"new/ owned by root", rootNew,
			[]string{"maildir.ini", filepath.Join(rootNew, "new") + " is not writable by " + who, "mode drwxr-xr-x", "fix: chown -R nobody: " + rootNew}, ""},
		{"missing spool in nobody's directory", filepath.Join(nobodyOwned, "spool"), nil,
			"queue/maildir: the spool " + filepath.Join(nobodyOwned, "spool") + " does not exist; it will be created by " + who + " at start"},
		{"spool owned by nobody", nobodyOwned, nil,
			"queue/maildir: the spool " + nobodyOwned + " is writable by " + who + "; its tmp/, new/, cur/ will be created by " + who + " at start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := servertest.WriteDir(t, map[string]string{
				"smtp.ini":    "me = mx.example.net\nnodes = 1\nuser = nobody\n",
				"plugins":     "queue/maildir\n",
				"maildir.ini": "path = " + tc.path + "\n",
			})
			before, _ := os.ReadDir(top)
			ch, err := servertest.BuildDir(t, dir)
			after, _ := os.ReadDir(top)
			if len(after) != len(before) {
				t.Errorf("Build created something in %s", top)
			}
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if p := ch.Plans(); len(p) != 1 || p[0] != tc.plan {
					t.Errorf("Plans() = %q, want [%q]", p, tc.plan)
				}
				return
			}
			if err == nil {
				t.Fatalf("Build accepted a spool %s cannot write", who)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestStartFailsOnABlockedSpool: Start reports what is in the way (here a
// file where new/ should be), naming maildir.ini and the path; it never
// leaves a half-made plugin behind.
func TestStartFailsOnABlockedSpool(t *testing.T) {
	spool := t.TempDir()
	if err := os.WriteFile(filepath.Join(spool, "new"), []byte("in the way\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := maildir.New(spool, "mx.example.net")
	err := m.Start()
	if err == nil || !strings.Contains(err.Error(), "maildir.ini: path = "+spool) {
		t.Errorf("Start: %v, want an error naming maildir.ini and the path", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close after a failed Start: %v", err)
	}
}

// A body that spilled to a spool file is stored whole, after the trace
// fields and the fields plugins added.
func TestQueueStoresSpooledBodyWithAddedFields(t *testing.T) {
	dir := t.TempDir()
	ch := open(t, dir)
	body := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("z", 998)+"\r\n", 3000)
	msg := spooltest.Message(t, body)
	if err := msg.AddHeader("X-Test", "added\r\n\tfolded"); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	c := newConn("w1.s", &logBuf, "sender@example.org", "a@example.com")
	call := &plugins.Call{Hook: plugins.HookQueue, Msg: msg}
	if res := ch.RunFrom(c, call, 0); res.Action != plugins.Accept {
		t.Fatalf("result %s %v", res.Action, res.Reply)
	}
	files := entries(t, dir, "new")
	if len(files) != 1 {
		t.Fatalf("new/ holds %q", files)
	}
	data, err := os.ReadFile(filepath.Join(dir, "new", files[0]))
	if err != nil {
		t.Fatal(err)
	}
	got := string(data)
	_, after, ok := strings.Cut(got, "\tby mx.example.net (loopmx) with ESMTP id w1.s.1\r\n\tfor <a@example.com>;")
	if !ok {
		t.Fatalf("no Received header in %q", got[:min(len(got), 400)])
	}
	_, after, _ = strings.Cut(after, "\r\n") // the line of the date
	_, after, _ = strings.Cut(after, "\r\n")
	if want := "X-Test: added\r\n\tfolded\r\n" + body; after != want {
		t.Errorf("after the Received header: %d octets starting %q; want the added field then the %d-octet body", len(after), after[:min(len(after), 60)], len(body))
	}
}
