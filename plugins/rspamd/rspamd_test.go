package rspamd_test

import (
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/internal/rspamdtest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/queue/discard"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	_ "loopmx/plugins/results"
)

// One rspamd serves every test of the package (it takes seconds to
// start); TestMain stops it. The test that stops rspamd mid-way starts
// its own.
var (
	shared     *rspamdtest.Server
	sharedErr  error
	sharedDir  string
	sharedOnce sync.Once
)

func rspamd(t testing.TB) *rspamdtest.Server {
	t.Helper()
	if !rspamdtest.Installed() {
		t.Skip("rspamd is not installed (Debian package rspamd; make deps installs it)")
	}
	sharedOnce.Do(func() {
		if sharedDir, sharedErr = os.MkdirTemp("", "rspamdtest"); sharedErr == nil {
			shared, sharedErr = rspamdtest.New(sharedDir)
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

const gtube = "From: spammer@example.org\r\nTo: user@example.com\r\nSubject: offer\r\n\r\n" +
	"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"

func message(subject string) string {
	return "From: Alice <alice@example.org>\r\nTo: user@example.com\r\nSubject: " + subject + "\r\n" +
		"Message-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.org>\r\n" +
		"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\nHello Bob,\r\nlunch at noon?\r\n"
}

// start serves a loopmx whose chain scans with rspamd at url and stores
// into a Maildir, with rspamd.ini's extra lines; it returns the server
// and the Maildir.
func start(t *testing.T, url, ini string, smtpINI ...string) (*servertest.Server, string) {
	t.Helper()
	spool := t.TempDir()
	files := map[string]string{
		"plugins":     "results\nrcpt_to.in_host_list\nrspamd\nqueue/maildir\n",
		"host_list":   "example.com\n",
		"rspamd.ini":  "url = " + url + "\n" + ini,
		"maildir.ini": "path = " + spool + "\n",
	}
	if len(smtpINI) > 0 {
		files["smtp.ini"] = servertest.SMTPINI + smtpINI[0]
	}
	return servertest.Start(t, files), spool
}

func header(msg string) string {
	h, _, _ := strings.Cut(msg, "\r\n\r\n")
	return h
}

func TestGTUBEIsRefused(t *testing.T) {
	rs := rspamd(t)
	srv, spool := start(t, rs.URL, "")
	r := servertest.Deliver(t, srv.Addr, servertest.Plain("spammer@example.org", "user@example.com"), gtube)
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.1 Gtube pattern") {
		t.Fatalf("GTUBE got %s, want 550 5.7.1 Gtube pattern", r)
	}
	if got := servertest.Stored(t, spool); len(got) != 0 {
		t.Fatalf("a refused message was stored: %q", got)
	}
	servertest.Eventually(t, 10*time.Millisecond, "the rejected line names rspamd", func() bool {
		return strings.Contains(srv.Log.String(), `"plugin":"rspamd"`)
	})
}

func TestCleanMessageIsStoredWithRspamdHeaders(t *testing.T) {
	rs := rspamd(t)
	srv, spool := start(t, rs.URL, "")
	r := servertest.Deliver(t, srv.Addr, servertest.Plain("alice@example.org", "user@example.com"), message("lunch"))
	if r.Code != 250 {
		t.Fatalf("clean message got %s, want 250", r)
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	h := header(msgs[0])
	id := strings.TrimSpace(r.Text()[strings.LastIndex(r.Text(), " "):])
	for _, want := range []string{
		"X-Rspamd-Queue-Id: " + id, // rspamd's own field: it got our Queue-Id
		"X-Spamd-Result: default: False [",
		"X-Spam-Action: no action",
		"X-Spam-Score: ",
		"Subject: lunch",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("stored header lacks %q:\n%s", want, h)
		}
	}
	if strings.Contains(h, "X-Spam-Flag") {
		t.Errorf("a clean message is flagged:\n%s", h)
	}
	if !strings.HasSuffix(msgs[0], "lunch at noon?\r\n") {
		t.Errorf("body changed: %q", msgs[0])
	}
}

func TestActions(t *testing.T) {
	rs := rspamd(t)
	srv, spool := start(t, rs.URL, "")
	env := servertest.Plain("alice@example.org", "user@example.com")

	r := servertest.Deliver(t, srv.Addr, env, message("soft "+rspamdtest.SubjectSoftReject))
	if r.Code != 451 || r.Text() != "4.7.1 Come back later" {
		t.Errorf("soft reject got %s, want 451 4.7.1 Come back later", r)
	}
	r = servertest.Deliver(t, srv.Addr, env, message("grey "+rspamdtest.SubjectGreylist))
	if r.Code != 451 || !strings.HasPrefix(r.Text(), "4.7.1 ") {
		t.Errorf("greylist got %s, want 451 4.7.1", r)
	}
	if got := servertest.Stored(t, spool); len(got) != 0 {
		t.Fatalf("deferred messages were stored: %q", got)
	}

	// A forged X-Spam field that rspamd asks to remove is left out of
	// the stored message, and the finding says so.
	forged := strings.Replace(message("cheap "+rspamdtest.SubjectAddHeader), "\r\n\r\n", "\r\nX-Spam: No\r\n\r\n", 1)
	r = servertest.Deliver(t, srv.Addr, env, forged)
	if r.Code != 250 {
		t.Fatalf("add header got %s, want 250", r)
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	h := header(msgs[0])
	for _, want := range []string{"X-Spam-Flag: YES", "X-Spam-Action: add header", "RSPAMDTEST_ADD_HEADER(7.00)", "X-Rspamd-Action: add header"} {
		if !strings.Contains(h, want) {
			t.Errorf("stored header lacks %q:\n%s", want, h)
		}
	}
	if strings.Contains(h, "X-Spam: No") {
		t.Errorf("the forged field rspamd asked to remove is stored:\n%s", h)
	}
	servertest.Eventually(t, 10*time.Millisecond, "the results of the add header message", func() bool {
		log := srv.Log.String()
		return strings.Contains(log, `fail (add_header): score 7.`) &&
			strings.Contains(log, "removed at rspamd's request: X-Spam")
	})
}

// A spooled body (past spool_after) is streamed to rspamd from its file.
func TestSpooledMessageIsScanned(t *testing.T) {
	rs := rspamd(t)
	srv, spool := start(t, rs.URL, "", "spool_after = 4k\n")
	filler := strings.Repeat("filler line of a large message\r\n", 2000)
	env := servertest.Plain("alice@example.org", "user@example.com")
	r := servertest.Deliver(t, srv.Addr, env, message("big "+rspamdtest.SubjectSoftReject)+filler)
	if r.Code != 451 {
		t.Fatalf("a 60 KB message that rspamd soft-rejects got %s, want 451", r)
	}
	r = servertest.Deliver(t, srv.Addr, env, message("big "+rspamdtest.SubjectAddHeader)+filler)
	if r.Code != 250 {
		t.Fatalf("a 60 KB message that rspamd flags got %s, want 250", r)
	}
	msgs := servertest.Stored(t, spool)
	if len(msgs) != 1 || !strings.Contains(header(msgs[0]), "X-Spam-Flag: YES") || !strings.HasSuffix(msgs[0], filler) {
		t.Fatalf("the large message was not stored whole with its scan: %d messages", len(msgs))
	}
}

func TestMaxSizeSkipsTheScan(t *testing.T) {
	rs := rspamd(t)
	srv, spool := start(t, rs.URL, "max_size = 100\n")
	r := servertest.Deliver(t, srv.Addr, servertest.Plain("spammer@example.org", "user@example.com"), gtube)
	if r.Code != 250 {
		t.Fatalf("a GTUBE over max_size got %s, want 250 (not scanned)", r)
	}
	if msgs := servertest.Stored(t, spool); len(msgs) != 1 || strings.Contains(msgs[0], "X-Spam") {
		t.Fatalf("want the message stored without X-Spam fields: %q", msgs)
	}
}

// rspamd stopped mid-test: fail = open stores without a scan, fail =
// tempfail answers 451 4.7.1; once rspamd is back, the retried message
// is scanned and stored. Nothing is acknowledged that is not stored.
func TestRspamdDown(t *testing.T) {
	if !rspamdtest.Installed() {
		t.Skip("rspamd is not installed (Debian package rspamd; make deps installs it)")
	}
	rs := rspamdtest.Start(t)
	open, openSpool := start(t, rs.URL, "fail = open\n")
	closed, closedSpool := start(t, rs.URL, "")
	env := servertest.Plain("alice@example.org", "user@example.com")
	if r := servertest.Deliver(t, closed.Addr, env, message("before")); r.Code != 250 {
		t.Fatalf("with rspamd up: %s", r)
	}

	rs.Stop()
	for i := range 3 { // the first fails on the network, the next on the breaker
		if r := servertest.Deliver(t, open.Addr, env, message("open")); r.Code != 250 {
			t.Fatalf("fail = open, message %d: %s, want 250", i, r)
		}
		if r := servertest.Deliver(t, closed.Addr, env, message("closed")); r.Code != 451 || r.Text() != "4.7.1 Content scanner unavailable, try again later" {
			t.Fatalf("fail = tempfail, message %d: %s, want 451 4.7.1", i, r)
		}
	}
	if msgs := servertest.Stored(t, openSpool); len(msgs) != 3 || strings.Contains(msgs[0], "X-Spam") {
		t.Fatalf("fail = open stored %d messages (want 3, unscanned)", len(msgs))
	}
	if msgs := servertest.Stored(t, closedSpool); len(msgs) != 1 {
		t.Fatalf("fail = tempfail stored %d messages, want only the one sent before the outage", len(msgs))
	}

	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	// The sender retries the deferred message until the breaker lets a
	// probe through.
	servertest.Eventually(t, 50*time.Millisecond, "the deferred message is taken once rspamd is back", func() bool {
		return servertest.Deliver(t, closed.Addr, env, message("retried")).Code == 250
	})
	msgs := servertest.Stored(t, closedSpool)
	if len(msgs) != 2 {
		t.Fatalf("fail = tempfail stored %d messages, want 2", len(msgs))
	}
	for _, m := range msgs {
		if !strings.Contains(m, "X-Spam-Action: no action") {
			t.Errorf("a message stored with fail = tempfail was not scanned:\n%s", header(m))
		}
	}
}

func TestConfigErrors(t *testing.T) {
	base := map[string]string{"plugins": "rspamd\nqueue/discard\n"}
	for _, c := range []struct{ ini, want string }{
		{"url = ftp://x:1\n", `url: "ftp://x:1" is not http://host:port or unix:/path`},
		{"url = unix:relative\n", "absolute path"},
		{"fail = maybe\n", `fail: "maybe" is not one of open, tempfail`},
		{"greylist = x\n", `greylist: "x"`},
		{"headers = x\n", `headers: "x"`},
		{"scan_timeout = 40s\n", "must be less than timeout"},
		{"max_size = -1\n", "max_size"},
		{"colour = red\n", `unknown key "colour"`},
	} {
		files := map[string]string{"rspamd.ini": c.ini}
		for k, v := range base {
			files[k] = v
		}
		servertest.CheckBuild(t, files, "rspamd.ini", c.want)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

// A stand-in for rspamd that keeps connections alive (rspamd 3.4 does
// not): the plugin reuses its connections, at most threadpool_size of
// them, instead of one per message; and rspamd is told the envelope, the
// client and the message as it will be stored.
func TestRequestAndConnectionReuse(t *testing.T) {
	var mu sync.Mutex
	var conns int
	var reqs []*http.Request
	var bodies []string
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			reqs = append(reqs, r)
			bodies = append(bodies, string(b))
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"action":"no action","score":0.5,"required_score":15,"symbols":{"X":{"name":"X","score":0.5}}}`)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				mu.Lock()
				conns++
				mu.Unlock()
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	lmx, spool := start(t, "http://"+ln.Addr().String(), "", "threadpool_size = 2\n")
	const n = 10
	for range n {
		r := servertest.Deliver(t, lmx.Addr, servertest.Plain("alice@example.org", "user@example.com", "bob@example.com"), message("reuse"))
		if r.Code != 250 {
			t.Fatalf("got %s", r)
		}
	}
	if got := len(servertest.Stored(t, spool)); got != n {
		t.Fatalf("%d messages stored, want %d", got, n)
	}
	mu.Lock()
	defer mu.Unlock()
	if conns > 2 {
		t.Errorf("%d connections to rspamd for %d messages, want at most threadpool_size (2)", conns, n)
	}
	r := reqs[0]
	if r.Method != "POST" || r.URL.Path != "/checkv2" {
		t.Errorf("request %s %s", r.Method, r.URL.Path)
	}
	for k, want := range map[string]string{"From": "alice@example.org", "Ip": "127.0.0.1", "Helo": "client.test", "Mta-Name": servertest.Host} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if got := r.Header.Values("Rcpt"); strings.Join(got, ",") != "user@example.com,bob@example.com" {
		t.Errorf("Rcpt headers %q", got)
	}
	if r.Header.Get("Queue-Id") == "" {
		t.Errorf("no Queue-Id")
	}
	if !strings.HasPrefix(bodies[0], "Received: from client.test ([127.0.0.1])") || !strings.HasSuffix(bodies[0], message("reuse")) {
		t.Errorf("rspamd got %q, want loopmx's Received and the message", bodies[0])
	}
	if r.ContentLength != int64(len(bodies[0])) {
		t.Errorf("Content-Length %d for a body of %d octets", r.ContentLength, len(bodies[0]))
	}
}
