package earlytalker_test

// A real loopmx server for the tests of this package: a config directory
// loaded with config.Load, its chain built with plugins.Build (so the
// plugins file and the ini files are read as in production), served on
// 127.0.0.1:0; and a raw SMTP client that checks every reply it reads.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
)

// ioTimeout bounds every read and write of a test client, so that a hung
// server fails a test instead of the whole run.
const ioTimeout = 20 * time.Second

// smtpINI is the smtp.ini of a test server: one event loop, an ephemeral
// port, and the name the replies carry.
const smtpINI = "[main]\nlisten = 127.0.0.1:0\nloops = 1\nme = mx.test\n"

// server is a running server and what the tests look at.
type server struct {
	addr string // the first listener (listen in smtp.ini)
	srv  *loop.Server
	pool *workpool.Pool
	log  *syncBuffer
}

// startServer writes files into a new config directory (smtp.ini defaults
// to smtpINI), builds the chain the plugins file names and serves it until
// the test ends.
func startServer(t *testing.T, files map[string]string) *server {
	t.Helper()
	dir := t.TempDir()
	if _, ok := files["smtp.ini"]; !ok {
		files["smtp.ini"] = smtpINI
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
	opts := loop.OptionsFrom(cfg, zerolog.New(logs))
	if opts.TLS, err = loop.LoadTLS(cfg); err != nil {
		chain.Close()
		t.Fatal(err)
	}
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	srv, err := loop.New(opts, chain, pool)
	if err != nil {
		pool.Close()
		chain.Close()
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		pool.Close()
		chain.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Stop the loops before the pool, as main.go does.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		pool.Close()
		chain.Close()
	})
	return &server{addr: srv.Addrs()[0].String(), srv: srv, pool: pool, log: logs}
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
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

// dial connects without reading the banner.
func dial(t *testing.T, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	return &client{t: t, nc: nc, r: bufio.NewReader(nc)}
}

// send writes one command line.
func (c *client) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, line+"\r\n"); err != nil {
		c.t.Fatalf("write %q: %v", line, err)
	}
}

var enhancedRe = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3} `)

// read reads one reply (all its lines) and returns its last line. A
// refusal (4xx, 5xx) must carry an enhanced status code of its own class
// on every line (RFC 2034, RFC 3463).
func (c *client) read() (string, error) {
	code := ""
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			if line != "" {
				return "", fmt.Errorf("partial line %q: %w", line, err)
			}
			return "", err
		}
		if !strings.HasSuffix(line, "\r\n") || len(line) < 6 {
			return "", fmt.Errorf("malformed reply line %q", line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		if _, err := strconv.Atoi(line[:3]); err != nil || (code != "" && line[:3] != code) {
			return "", fmt.Errorf("bad reply code in %q", line)
		}
		code = line[:3]
		if code[0] == '4' || code[0] == '5' {
			if !enhancedRe.MatchString(line[4:]) || line[4] != code[0] {
				c.t.Errorf("refusal %q lacks an enhanced status code of class %c", line, code[0])
			}
		}
		if line[3] == ' ' {
			return line, nil
		}
		if line[3] != '-' {
			return "", fmt.Errorf("bad separator in %q", line)
		}
	}
}

// expect reads one reply whose last line starts with prefix, and returns
// that line.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	line, err := c.read()
	if err != nil {
		c.t.Fatalf("reading a reply (want %q): %v", prefix, err)
	}
	if !strings.HasPrefix(line, prefix) {
		c.t.Fatalf("got %q, want %q...", line, prefix)
	}
	return line
}

// cmd sends a command and expects a reply starting with prefix.
func (c *client) cmd(line, prefix string) string {
	c.t.Helper()
	c.send(line)
	return c.expect(prefix)
}

// expectEOF requires the server to close the connection with nothing more
// to say.
func (c *client) expectEOF() {
	c.t.Helper()
	line, err := c.read()
	if err == nil {
		c.t.Fatalf("got %q, want the connection closed", line)
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "connection reset") {
		c.t.Fatalf("want EOF, got %v", err)
	}
	c.nc.Close()
}
