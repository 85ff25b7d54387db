package limit_test

// The config directory of the tests that run a real loopmx server, and a
// server in a child process (the test binary started again), so that two
// processes can share one Redis.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/queue/discard"
)

// dialer makes the test clients.
var dialer = servertest.Dialer{Enhanced: servertest.Never}

// poll is how often a test retries while it waits; a retry may open a
// connection, which the limits count.
const poll = 50 * time.Millisecond

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
	srv, err := servertest.Serve(cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(srv.Addr)
	io.Copy(io.Discard, os.Stdin)
	srv.Stop()
	return 0
}

// configDir writes a config directory: smtp.ini listening on
// 127.0.0.1:0, a plugins file with limit and queue/discard, and the
// given limit.ini.
func configDir(t *testing.T, limitINI string) string {
	t.Helper()
	return servertest.WriteDir(t, map[string]string{
		"smtp.ini":  "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 4\n",
		"plugins":   "limit\nqueue/discard\n",
		"limit.ini": limitINI,
	})
}

// child is a loopmx server in a child process.
type child struct {
	addr  string
	log   *servertest.Buffer
	cmd   *exec.Cmd
	stdin io.Closer
}

// startChild runs a server for dir in a child process: the test binary
// itself, started again with childEnv set.
func startChild(t *testing.T, dir string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	logs := &servertest.Buffer{}
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
