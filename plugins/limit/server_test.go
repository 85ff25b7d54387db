package limit_test

// Pieces shared by the tests that run a real loopmx server: a config
// directory on disk, a server built from it the way main.go builds one
// (in this process or in a child process), and a small SMTP client.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
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
	_ "loopmx/plugins/queue/discard"
)

// ioTimeout bounds every exchange of the test client.
const ioTimeout = 20 * time.Second

// childEnv names the config directory a child test process serves.
const childEnv = "LOOPMX_LIMIT_TEST_SERVE"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(serveChild(dir))
	}
	os.Exit(m.Run())
}

// serveChild is a loopmx worker in a child process: it serves dir on the
// address it prints to stdout and stops when stdin closes.
func serveChild(dir string) int {
	cfg, err := config.Load(dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv, stop, err := build(cfg, zerolog.New(os.Stderr))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(srv.Addrs()[0].String())
	io.Copy(io.Discard, os.Stdin)
	stop()
	return 0
}

// build starts a server for cfg as main.go does; stop shuts it down and
// closes the plugins.
func build(cfg *config.Config, log zerolog.Logger) (*loop.Server, func(), error) {
	chain, err := plugins.Build(cfg)
	if err != nil {
		return nil, nil, err
	}
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	srv, err := loop.New(loop.OptionsFrom(cfg, log), chain, pool)
	if err != nil {
		pool.Close()
		chain.Close()
		return nil, nil, err
	}
	if err := srv.Start(); err != nil {
		pool.Close()
		chain.Close()
		return nil, nil, err
	}
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		pool.Close()
		chain.Close()
	}
	return srv, stop, nil
}

// configDir writes a config directory: smtp.ini listening on
// 127.0.0.1:0, a plugins file with limit and queue/discard, and the
// given limit.ini.
func configDir(t *testing.T, limitINI string) string {
	t.Helper()
	dir := t.TempDir()
	write(t, dir, "smtp.ini", "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 4\n")
	write(t, dir, "plugins", "limit\nqueue/discard\n")
	write(t, dir, "limit.ini", limitINI)
	return dir
}

func write(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
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

// count is the number of log lines holding every one of subs.
func (s *syncBuffer) count(subs ...string) int {
	n := 0
	for line := range strings.SplitSeq(s.String(), "\n") {
		all := true
		for _, sub := range subs {
			all = all && strings.Contains(line, sub)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}

// server is a loopmx server under test.
type server struct {
	addr string
	log  *syncBuffer
}

// startServer runs a server for dir in this process.
func startServer(t *testing.T, dir string) *server {
	t.Helper()
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv, stop, err := build(cfg, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return &server{addr: srv.Addrs()[0].String(), log: logs}
}

// child is a loopmx server in a child process.
type child struct {
	addr  string
	log   *syncBuffer
	cmd   *exec.Cmd
	stdin io.Closer
}

// startChild runs a server for dir in a child process: the test binary
// itself, started again with childEnv set.
func startChild(t *testing.T, dir string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{log: logs, cmd: cmd, stdin: stdin}
	t.Cleanup(ch.stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child server did not start: %v\n%s", err, logs)
	}
	ch.addr = strings.TrimSpace(line)
	return ch
}

// stop ends the child gently: stdin closes, the server drains.
func (c *child) stop() {
	if c.cmd.ProcessState != nil {
		return
	}
	c.stdin.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// kill ends the child with SIGKILL, as a crash would.
func (c *child) kill() {
	c.cmd.Process.Kill()
	c.cmd.Wait()
}

// client is a small SMTP client that reads whole replies.
type client struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Conn
}

// dial connects and returns the client with its first reply (the banner,
// or a refusal) as "code text".
func dial(t *testing.T, addr string) (*client, string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	c := &client{t: t, conn: nc, tp: textproto.NewConn(nc)}
	return c, c.reply()
}

// reply reads one reply as "code text" (the last line's text).
func (c *client) reply() string {
	c.t.Helper()
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil {
		c.t.Fatalf("reading a reply: %v", err)
	}
	lines := strings.Split(msg, "\n")
	return fmt.Sprintf("%d %s", code, lines[len(lines)-1])
}

// cmd sends a command and requires a reply starting with want.
func (c *client) cmd(line, want string) string {
	c.t.Helper()
	if err := c.tp.PrintfLine("%s", line); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
	got := c.reply()
	if !strings.HasPrefix(got, want) {
		c.t.Fatalf("%s: got %q, want %q...", line, got, want)
	}
	return got
}

// closed requires the server to have closed the connection, then closes
// the client's side too, so the server need not linger.
func (c *client) closed() {
	c.t.Helper()
	if line, err := c.tp.ReadLine(); err == nil {
		c.t.Fatalf("got %q, want the connection closed", line)
	}
	c.conn.Close()
}

// quit ends the session politely.
func (c *client) quit() {
	c.t.Helper()
	c.cmd("QUIT", "221")
	c.conn.Close()
}

// mail sends one message through an open session.
func (c *client) mail(from string, rcpts ...string) {
	c.t.Helper()
	c.cmd("MAIL FROM:<"+from+">", "250")
	for _, r := range rcpts {
		c.cmd("RCPT TO:<"+r+">", "250")
	}
	c.cmd("DATA", "354")
	c.cmd("Subject: limit test\r\n\r\nhello\r\n.", "250")
}

// eventually retries f until it returns true or the time is up.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tryConnect dials and reports whether the banner (220) came.
func tryConnect(t *testing.T, addr string) (*client, bool) {
	t.Helper()
	c, first := dial(t, addr)
	if strings.HasPrefix(first, "220 ") {
		return c, true
	}
	c.conn.Close()
	return nil, false
}
