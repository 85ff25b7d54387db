// Package redistest runs a throwaway redis-server for the tests of the
// plugins that use Redis: on a free port of 127.0.0.1, with no
// persistence, killed by its process id when the test ends. A test can
// kill it mid-way and start it again on the same port, to show that
// loopmx survives an outage and reconnects by itself.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long Start and Restart wait for PING to answer.
const startTimeout = 10 * time.Second

// Server is a redis-server process run by a test.
type Server struct {
	// Addr is the server's host:port.
	Addr string

	t   testing.TB
	bin string
	dir string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start runs redis-server on a free port and waits until it answers PING.
// The test is skipped, with a message saying so, when the redis-server
// binary is not installed; any other failure fails it. The server is
// killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (Debian package redis-server); skipping the tests against a real Redis")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))}
	t.Cleanup(s.Kill)
	s.Restart()
	return s
}

// freePort finds a port nobody listens on by letting the kernel pick one.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Restart starts the server again on the same port after Kill (or the
// first time, from Start) and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.Addr)
	cmd := exec.Command(s.bin,
		"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"),
		"--daemonize", "no")
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("redistest: starting %s: %v", s.bin, err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(s.Addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redistest: redis-server on %s does not answer PING: %v\n%s", s.Addr, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends PING on a fresh connection and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Kill kills the server with SIGKILL, by its process id, and waits for
// it to exit and for its port to close. Killing a server that is not
// running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	for range 100 {
		c, err := net.DialTimeout("tcp", s.Addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Pause stops the server with SIGSTOP, by its process id: it keeps its
// port and its connections but answers nothing, as a Redis that stalls
// (swapping, a long fork, a frozen VM). Resume ends the stall; Kill works
// on a paused server too.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume lets a paused server go on with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

// signal sends sig to the running server; the test fails when it is not
// running.
func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatalf("redistest: %v to a server that is not running", sig)
	}
	if err := syscall.Kill(cmd.Process.Pid, sig); err != nil {
		s.t.Fatalf("redistest: %v to redis-server %d: %v", sig, cmd.Process.Pid, err)
	}
}

// Client returns a go-redis client of the test's own, closed when the
// test ends: for subscribing and for looking at keys.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// WriteINI writes a redis.ini pointing at the server into dir, with the
// extra lines appended.
func (s *Server) WriteINI(dir string, extra ...string) {
	s.t.Helper()
	text := "server = " + s.Addr + "\n"
	for _, l := range extra {
		text += l + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "redis.ini"), []byte(text), 0o644); err != nil {
		s.t.Fatal(err)
	}
}
