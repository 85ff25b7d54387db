package lmtp_test

// A real loopmx server for the tests of this package: a config directory
// loaded with config.Load, its chain built with plugins.Build (so the
// plugins file and lmtp.ini are read as in production), served on
// 127.0.0.1:0. Clients are net/smtp; the next hop is a nexthoptest
// backend.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
	_ "loopmx/plugins/queue/lmtp"
)

// ioTimeout bounds every client read and write, so that a hang fails the
// test instead of the run.
const ioTimeout = 20 * time.Second

// smtpINI is the smtp.ini of a test server: one loop, two workers.
const smtpINI = "[main]\nlisten = 127.0.0.1:0\nloops = 1\nthreadpool_size = 2\nme = mx.test\n"

type server struct {
	addr  string
	chain *plugins.Chain
	log   *syncBuffer
}

// startServer writes files into a new config directory (smtp.ini defaults
// to smtpINI), builds the chain and serves it until the test ends.
func startServer(t *testing.T, files map[string]string) *server {
	t.Helper()
	dir := t.TempDir()
	if _, ok := files["smtp.ini"]; !ok {
		files["smtp.ini"] = smtpINI
	}
	if _, ok := files["plugins"]; !ok {
		files["plugins"] = "queue/lmtp\n"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	srv, err := loop.New(loop.OptionsFrom(cfg, zerolog.New(logs)), chain, pool)
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		pool.Close()
		chain.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		pool.Close()
		chain.Close()
	})
	return &server{addr: srv.Addrs()[0].String(), chain: chain, log: logs}
}

// buildOnly loads a config directory holding files and builds its chain,
// returning the error.
func buildOnly(t *testing.T, files map[string]string) error {
	t.Helper()
	dir := t.TempDir()
	files["smtp.ini"] = smtpINI
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		return err
	}
	chain, err := plugins.Build(cfg)
	if err == nil {
		chain.Close()
	}
	return err
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// envelope is what a test client sends before the message.
type envelope struct {
	from  string
	rcpts []string
	// params follow MAIL FROM; net/smtp's Mail would add SMTPUTF8 and
	// BODY=8BITMIME on its own, so MAIL is sent through its Text conn.
	params string
}

// reply is the server's answer to the end of the message: its code and
// its text after the code, as net/textproto gives it ("2.0.0 Ok ...").
type reply struct {
	code int
	msg  string
}

func (r reply) String() string { return strconv.Itoa(r.code) + " " + r.msg }

// deliver sends one message over a new connection with net/smtp and
// returns the reply to its end. MAIL, RCPT and DATA must be accepted.
func deliver(t *testing.T, addr string, env envelope, body string) reply {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(ioTimeout))
	c, err := smtp.NewClient(nc, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	mail := "MAIL FROM:<" + env.from + ">"
	if env.params != "" {
		mail += " " + env.params
	}
	if _, _, err := cmd(c.Text, 250, mail); err != nil {
		t.Fatalf("%s: %v", mail, err)
	}
	for _, r := range env.rcpts {
		if err := c.Rcpt(r); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	if _, _, err := cmd(c.Text, 354, "DATA"); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	w := c.Text.DotWriter()
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	code, msg, err := c.Text.ReadResponse(0)
	var te *textproto.Error
	if err != nil && !errors.As(err, &te) {
		t.Fatalf("reading the reply to the message: %v", err)
	}
	c.Quit()
	return reply{code, msg}
}

// cmd sends one command over tc and reads its reply.
func cmd(tc *textproto.Conn, want int, line string) (int, string, error) {
	id, err := tc.Cmd("%s", line)
	if err != nil {
		return 0, "", err
	}
	tc.StartResponse(id)
	defer tc.EndResponse(id)
	return tc.ReadResponse(want)
}

// waitFor polls cond until it holds, failing the test after ioTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// utf8 is a plain envelope as net/smtp would send it to loopmx, which
// offers SMTPUTF8 and 8BITMIME.
func utf8(from string, rcpts ...string) envelope {
	return envelope{from: from, rcpts: rcpts, params: "BODY=8BITMIME SMTPUTF8"}
}

// plain is an envelope without parameters.
func plain(from string, rcpts ...string) envelope {
	return envelope{from: from, rcpts: rcpts}
}
