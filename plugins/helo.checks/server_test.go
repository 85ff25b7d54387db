package helochecks_test

// A config directory loaded and built as main.go does, served by a real
// loop.Server on 127.0.0.1:0, and a raw SMTP client that reads replies as
// a sender would.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// ioTimeout bounds every read and write of a test client, so that a hung
// server fails the test instead of the whole run.
const ioTimeout = 20 * time.Second

// buildChain writes files into a fresh config directory (with a smtp.ini
// naming the host mx.test), loads it and builds the plugin chain.
func buildChain(t *testing.T, files map[string]string) (*plugins.Chain, error) {
	t.Helper()
	dir := t.TempDir()
	all := map[string]string{"smtp.ini": "[main]\nme = mx.test\n"}
	for name, content := range files {
		all[name] = content
	}
	for name, content := range all {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := plugins.Build(cfg)
	if err == nil {
		t.Cleanup(func() { ch.Close() })
	}
	return ch, err
}

// testServer is a running server and its log.
type testServer struct {
	addr string
	log  *syncBuffer
}

// startServer builds the chain from files and serves it on 127.0.0.1:0
// with two loops and a pool of four workers.
func startServer(t *testing.T, files map[string]string) *testServer {
	t.Helper()
	ch, err := buildChain(t, files)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	opts := loop.Options{
		Listen:            []string{"127.0.0.1:0"},
		Loops:             2,
		SingleAccept:      true,
		Proto:             &smtpproto.Config{Hostname: "mx.test"},
		InactivityTimeout: 30 * time.Second,
		GracefulTimeout:   time.Second,
		Log:               zerolog.New(logs),
	}
	pool := workpool.New(4, 64)
	srv, err := loop.New(opts, ch, pool)
	if err != nil {
		pool.Close()
		t.Fatalf("loop.New: %v", err)
	}
	if err := srv.Start(); err != nil {
		pool.Close()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		// Let running hooks report back, then stop the loops before the
		// pool, as main.go does.
		deadline := time.Now().Add(ioTimeout)
		for (pool.Busy() > 0 || pool.Queued() > 0) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		pool.Close()
	})
	return &testServer{addr: srv.Addrs()[0].String(), log: logs}
}

// syncBuffer is a log sink safe for the loops and the workpool.
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

// client is a raw SMTP client.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// dialFrom connects to addr from the local address from ("127.0.0.2"
// makes the client another host as far as the server can tell), without
// reading the banner.
func dialFrom(t *testing.T, addr, from string) *client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	return &client{t: t, conn: nc, r: bufio.NewReader(nc)}
}

// reply reads one reply and returns its lines without CRLF.
func (c *client) reply() ([]string, error) {
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return lines, err
		}
		if !strings.HasSuffix(line, "\r\n") || len(line) < 5 {
			return lines, errors.New("malformed reply line " + line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		lines = append(lines, line)
		if line[3] == ' ' {
			return lines, nil
		}
	}
}

// expect reads a one-line reply and requires it to be want.
func (c *client) expect(want string) {
	c.t.Helper()
	lines, err := c.reply()
	if err != nil {
		c.t.Fatalf("reading the reply (want %q): %v (read %q)", want, err, lines)
	}
	if len(lines) != 1 || lines[0] != want {
		c.t.Fatalf("client reads %q, want %q", lines, want)
	}
}

// cmd sends one command line and requires the reply want.
func (c *client) cmd(line, want string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("write %q: %v", line, err)
	}
	c.expect(want)
}

// ehlo sends EHLO and requires the 250 list of extensions.
func (c *client) ehlo(name string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, "EHLO "+name+"\r\n"); err != nil {
		c.t.Fatalf("write EHLO: %v", err)
	}
	lines, err := c.reply()
	if err != nil || len(lines) < 2 || lines[0] != "250-mx.test" {
		c.t.Fatalf("EHLO %s: client reads %q (%v), want the 250 list of extensions", name, lines, err)
	}
}
