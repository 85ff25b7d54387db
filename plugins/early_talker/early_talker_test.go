package earlytalker_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	earlytalker "loopmx/plugins/early_talker"
	_ "loopmx/plugins/results"
)

const (
	banner  = "220 mx.test ESMTP loopmx"
	refusal = "554 5.5.0 mx.test Protocol error: talked before the banner"
)

// dialer makes the test clients; every refusal they read, the banner's
// included, must carry an enhanced status code.
var dialer = servertest.Dialer{Enhanced: servertest.Always}

// watch is a test plugin placed after early_talker: at EHLO it records the
// connection notes early_talker left, and as the queue it keeps every
// message.
type watch struct {
	mu    sync.Mutex
	notes []map[string]any
	msgs  []string
}

func (*watch) Name() string { return "test/watch" }

func (w *watch) Ehlo(c *plugins.Conn, _ string) plugins.Result {
	n := map[string]any{}
	for _, k := range c.NoteKeys() {
		n[k] = c.Note(k)
	}
	w.mu.Lock()
	w.notes = append(w.notes, n)
	w.mu.Unlock()
	return plugins.NoOpinion()
}

func (w *watch) Queue(_ *plugins.Conn, m *plugins.Message) plugins.Result {
	w.mu.Lock()
	w.msgs = append(w.msgs, string(m.Bytes()))
	w.mu.Unlock()
	return plugins.OK()
}

// seen returns the notes recorded at EHLO, one map per connection.
func (w *watch) seen() []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]map[string]any(nil), w.notes...)
}

func (w *watch) queued() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msgs...)
}

// current is the watch instance the next server gets.
var current *watch

func init() {
	plugins.Register("test/watch", func(*config.Config) (plugins.Plugin, error) {
		if current == nil {
			return nil, fmt.Errorf("plugin/test/watch: the test set no instance")
		}
		return current, nil
	})
}

// start serves early_talker with the given early_talker.ini, after
// results and followed by a watch plugin, which it returns.
func start(t *testing.T, ini string) (*servertest.Server, *watch) {
	t.Helper()
	return startWith(t, map[string]string{"early_talker.ini": ini})
}

// startWith is start with more files in the config directory.
func startWith(t *testing.T, files map[string]string) (*servertest.Server, *watch) {
	t.Helper()
	current = &watch{}
	t.Cleanup(func() { current = nil })
	w := current
	files["plugins"] = "results\nearly_talker\ntest/watch\n"
	s := servertest.Start(t, files)
	return s, w
}

func TestPoliteClientIsGreetedAfterThePause(t *testing.T) {
	const pause = 300 * time.Millisecond
	s, w := start(t, "pause = 300ms\n")
	t0 := time.Now()
	c := dialer.Dial(t, s.Addr)
	c.Expect(banner)
	if waited := time.Since(t0); waited < pause {
		t.Errorf("banner after %v, before the pause of %v ended", waited, pause)
	}
	c.Cmd("EHLO client.test", "250")
	c.Cmd("MAIL FROM:<alice@example.org>", "250 2.1.0")
	c.Cmd("RCPT TO:<bob@example.com>", "250 2.1.5")
	c.Cmd("DATA", "354")
	c.Send("Subject: patience\r\n\r\nI waited.\r\n.")
	c.Expect("250 2.0.0")
	c.Cmd("QUIT", "221")

	if msgs := w.queued(); len(msgs) != 1 || !strings.Contains(msgs[0], "I waited.") {
		t.Errorf("queued %q, want the message", msgs)
	}
	notes := w.seen()
	if len(notes) != 1 || notes[0][earlytalker.NotePaused] != pause || notes[0][earlytalker.NoteTalked] != nil {
		t.Errorf("notes at EHLO %v, want only %s = %v", notes, earlytalker.NotePaused, pause)
	}
	resultsShow(t, s, `"conn":{"early_talker":["pass: waited 300ms"]}`)
}

func TestEarlyTalkerIsRefused(t *testing.T) {
	s, w := start(t, "pause = 300ms\n")
	c := dialer.Dial(t, s.Addr)
	c.Send("EHLO x")
	if got := c.Expect("5"); got != refusal {
		t.Fatalf("got %q, want %q", got, refusal)
	}
	c.ExpectEOF()
	if notes := w.seen(); len(notes) != 0 {
		t.Errorf("the refused client's EHLO reached the next plugin: %v", notes)
	}
	if log := s.Log.String(); !strings.Contains(log, `"plugin":"early_talker","code":554`) {
		t.Errorf("the refusal is not in the log:\n%s", log)
	}
	resultsShow(t, s, `"conn":{"early_talker":["fail: talked before the banner"]}`)
}

// resultsShow waits for the results line of the connection (written when
// it has closed) with the connection findings conn.
func resultsShow(t *testing.T, s *servertest.Server, conn string) {
	t.Helper()
	want := `"results":{` + conn + `},"message":"results"`
	servertest.Eventually(t, 20*time.Millisecond, "a connection results line with "+want, func() bool {
		return s.Log.Count(`"plugin":"results"`, want) == 1
	})
}

func TestEarlyTalkerOnlyNoted(t *testing.T) {
	s, w := start(t, "pause = 200ms\nreject = false\n")
	c := dialer.Dial(t, s.Addr)
	c.Send("EHLO early.test")
	c.Expect(banner)
	c.Expect("250") // the pipelined EHLO is answered after the banner
	c.Cmd("QUIT", "221")
	notes := w.seen()
	if len(notes) != 1 || notes[0][earlytalker.NoteTalked] != true {
		t.Errorf("notes at EHLO %v, want %s = true", notes, earlytalker.NoteTalked)
	}
	resultsShow(t, s, `"conn":{"early_talker":["fail: talked before the banner"]}`)
}

func TestNoPauseNoCheck(t *testing.T) {
	s, w := start(t, "")
	c := dialer.Dial(t, s.Addr)
	c.Send("EHLO early.test") // not judged: the plugin is off
	c.Expect(banner)
	c.Expect("250")
	c.Cmd("QUIT", "221")
	notes := w.seen()
	if len(notes) != 1 || len(notes[0]) != 0 {
		t.Errorf("notes at EHLO %v, want none (no pause, no check)", notes)
	}
	resultsShow(t, s, `"conn":{}`)
}

// TestClientLeavingDuringThePauseIsReleased: a client that hangs up while
// its banner is held back must not keep its descriptor and its connection
// slot (max_connections, max_connections_per_ip) until the pause ends, or
// a flood of connect-and-leave clients fills the server for free.
func TestClientLeavingDuringThePauseIsReleased(t *testing.T) {
	const pause = 10 * time.Second
	s, _ := start(t, "pause = 10s\n")
	c := dialer.Dial(t, s.Addr)
	waitConnections(t, s, func(n int64) bool { return n == 1 })
	c.Conn.Close()
	t0 := time.Now()
	waitConnections(t, s, func(n int64) bool { return n == 0 })
	if held := time.Since(t0); held > pause/2 {
		t.Errorf("the connection was held %v after the client left, want well under the pause of %v", held, pause)
	}
}

// waitConnections waits until the server's connection count satisfies ok.
func waitConnections(t *testing.T, s *servertest.Server, ok func(int64) bool) {
	t.Helper()
	deadline := time.Now().Add(servertest.IOTimeout)
	for !ok(s.Loop.Connections()) {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d connections", s.Loop.Connections())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPausedConnectionsCostNoGoroutine holds many connections in the
// pause at once: the number of goroutines must not grow with them.
func TestPausedConnectionsCostNoGoroutine(t *testing.T) {
	const (
		n     = 500
		pause = 3 * time.Second
	)
	s, _ := start(t, "pause = 3s\n")
	before := runtime.NumGoroutine()
	t0 := time.Now()
	clients := make([]*servertest.Client, n)
	for i := range clients {
		clients[i] = dialer.Dial(t, s.Addr)
	}
	waitConnections(t, s, func(c int64) bool { return c == n })
	during := runtime.NumGoroutine()
	if time.Since(t0) >= pause {
		t.Fatalf("opening %d connections took longer than the pause; cannot count while they wait", n)
	}
	t.Logf("goroutines: %d before, %d with %d connections in the pause", before, during, n)
	if during-before > 5 {
		t.Errorf("%d goroutines with %d connections in the pause, %d before", during, n, before)
	}
	for _, c := range clients {
		c.Expect(banner)
		c.Conn.Close()
	}
	if waited := time.Since(t0); waited < pause {
		t.Errorf("all banners within %v, before the pause of %v ended", waited, pause)
	}
}

// TestImplicitTLSClientIsGreeted: on an smtps_listen port (RFC 8314) the
// client speaks first, its TLS ClientHello, and the banner comes after the
// handshake. A TLS client is no early talker.
func TestImplicitTLSClientIsGreeted(t *testing.T) {
	cert, key := selfSigned(t)
	s, _ := startWith(t, map[string]string{
		"smtp.ini":         servertest.SMTPINI + "smtps_listen = 127.0.0.1:0\n",
		"tls.ini":          "cert = cert.pem\nkey = key.pem\n",
		"cert.pem":         cert,
		"key.pem":          key,
		"early_talker.ini": "pause = 200ms\n",
	})
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: servertest.IOTimeout}, "tcp", s.Loop.Addrs()[1].String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS handshake on the smtps port: %v", err)
	}
	c := dialer.Client(t, nc)
	c.Expect(banner)
	c.Cmd("QUIT", "221")
}

// selfSigned returns a PEM certificate for mx.test and its key.
func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.test"},
		DNSNames:     []string{"mx.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

// step runs the connect hooks once, as the loop does, and returns the
// result.
func step(t *testing.T, ch *plugins.Chain, c *plugins.Conn) plugins.Result {
	t.Helper()
	res, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0)
	if !done {
		t.Fatal("early_talker went to the workpool; it must run inline")
	}
	return res
}

func TestHookProtocol(t *testing.T) {
	for _, tc := range []struct {
		name   string
		p      *earlytalker.EarlyTalker
		talked bool
		want   string // the reply after the pause; "" for the banner
	}{
		{"polite", earlytalker.New(time.Second, true), false, ""},
		{"early", earlytalker.New(time.Second, true), true, refusal + "\r\n"},
		{"early, reject off", earlytalker.New(time.Second, false), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := plugins.NewChain(tc.p)
			c := &plugins.Conn{ID: "t.1", Hostname: "mx.test"}
			res := step(t, ch, c)
			if res.Action != plugins.Continue || res.Delay != time.Second {
				t.Fatalf("first call: %s with delay %v, want continue with a delay of 1s", res.Action, res.Delay)
			}
			c.EarlyTalker = tc.talked // the loop sets it during the pause
			res = step(t, ch, c)
			if res.Delay != 0 {
				t.Fatalf("second call asked for another delay of %v", res.Delay)
			}
			got := ""
			if res.Action != plugins.Continue {
				got = string(plugins.ReplyFor(plugins.HookConnect, res).AppendTo(nil))
			}
			if got != tc.want {
				t.Errorf("client reads %q, want %q", got, tc.want)
			}
			if (c.Note(earlytalker.NoteTalked) == true) != tc.talked {
				t.Errorf("note %s = %v", earlytalker.NoteTalked, c.Note(earlytalker.NoteTalked))
			}
		})
	}
	c := &plugins.Conn{EarlyTalker: true}
	if res := step(t, plugins.NewChain(earlytalker.New(0, true)), c); res.Action != plugins.Continue || res.Delay != 0 {
		t.Errorf("pause = 0: %s with delay %v, want continue at once", res.Action, res.Delay)
	}
}

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		name, ini string
		err       []string // empty: must load
	}{
		{"no file", "", nil},
		{"pause and reject", "pause = 5s\nreject = no\n", nil},
		{"seconds", "pause = 2\n", nil},
		{"unknown key", "delay = 5s\n", []string{"config: early_talker.ini:", `"delay"`}},
		{"bad pause", "pause = soon\n", []string{"config: early_talker.ini:", "pause", `"soon"`}},
		{"negative pause", "pause = -1s\n", []string{"config: early_talker.ini:", "pause", `"-1s"`}},
		{"pause too long", "pause = 5m\n", []string{"config: early_talker.ini:", "pause", `"5m"`}},
		{"bad reject", "reject = maybe\n", []string{"config: early_talker.ini:", "reject", `"maybe"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"plugins": "early_talker\n"}
			if tc.ini != "" {
				files["early_talker.ini"] = tc.ini
			}
			servertest.CheckBuild(t, files, tc.err...)
		})
	}
}
