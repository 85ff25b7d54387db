package main

// End-to-end tests: they build the real loopmx binary once, start it as a
// child process on a config directory of their own, and talk to it over
// TCP the way a mail client would. Helpers live in this file; the tests
// are spread over the other e2e_*_test.go files.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"loopmx/internal/servertest"
	"loopmx/internal/testlog"
)

var (
	e2eBinDir  string // temporary directory holding the built binary
	e2eBinOnce sync.Once
	e2eBinPath string
	e2eBinErr  error
	e2eRace    bool // set by e2e_race_test.go under -race
)

func TestMain(m *testing.M) {
	code := m.Run()
	if e2eBinDir != "" {
		os.RemoveAll(e2eBinDir)
	}
	os.Exit(code)
}

// loopmxBinary builds the binary from the module root the first time an
// end-to-end test asks for it and returns its path.
func loopmxBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	e2eBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "loopmx-e2e-")
		if err != nil {
			e2eBinErr = err
			return
		}
		e2eBinDir = dir
		bin := filepath.Join(dir, "loopmx")
		args := []string{"build", "-o", bin}
		if e2eRace {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, ".")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			e2eBinErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		e2eBinPath = bin
	})
	if e2eBinErr != nil {
		t.Fatal(e2eBinErr)
	}
	return e2eBinPath
}

// writeFiles writes files (name -> content) into dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// maildirConfig returns a config directory that accepts mail for
// example.com and stores it in the maildir spool.
func maildirConfig(t *testing.T, spool string) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"plugins":     "rcpt_to.in_host_list\nqueue/maildir\n",
		"host_list":   "example.com\n",
		"maildir.ini": "path = " + spool + "\n",
	})
	return dir
}

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// server is one running loopmx process.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	state  *os.ProcessState
}

// errAddrInUse means the child could not bind its port.
var errAddrInUse = errors.New("listen address in use")

// dialer connects to addr within timeout: a plain dial to a server on
// this machine (tcpDial), or one made in a network namespace.
type dialer func(addr string, timeout time.Duration) (net.Conn, error)

func tcpDial(addr string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, timeout)
}

// launch starts argv (a wrapper such as prlimit may come first) in workDir
// and waits until it has logged that it is ready and addr accepts. The
// process is stopped in t.Cleanup.
func launch(t *testing.T, argv []string, workDir, addr string) (*server, error) {
	t.Helper()
	return launchVia(t, argv, workDir, addr, tcpDial)
}

// launchVia is launch with the readiness dial made by dial.
func launchVia(t *testing.T, argv []string, workDir, addr string, dial dialer) (*server, error) {
	t.Helper()
	s := &server{t: t, addr: addr, stderr: &syncBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Dir = workDir
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.cmd.Wait()
		s.state = s.cmd.ProcessState
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop()
		if strings.Contains(s.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in loopmx pid %d", s.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("loopmx pid %d output:\n%s", s.cmd.Process.Pid, tail(s.stderr.String(), 4000))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-s.done:
			out := s.stderr.String()
			if strings.Contains(out, "address already in use") {
				return nil, errAddrInUse
			}
			return nil, fmt.Errorf("loopmx exited before it was ready (%v):\n%s", s.state, out)
		default:
		}
		if strings.Contains(s.stderr.String(), "loopmx ready") {
			if c, err := dial(addr, time.Second); err == nil {
				c.Close()
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("loopmx not ready on %s after 20s:\n%s", addr, s.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startBinary writes smtp.ini into confDir (a listen line on a fresh port,
// then extraINI) and starts the binary on it, retrying with another port
// when the chosen one was taken in the meantime. wrap is a command prefix
// such as prlimit.
func startBinary(t *testing.T, confDir, extraINI string, wrap ...string) *server {
	t.Helper()
	bin := loopmxBinary(t)
	for attempt := 0; ; attempt++ {
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		writeFiles(t, confDir, map[string]string{"smtp.ini": "listen = " + addr + "\n" + extraINI})
		argv := append(append([]string{}, wrap...), bin, "-c", confDir)
		s, err := launch(t, argv, confDir, addr)
		if errors.Is(err, errAddrInUse) && attempt < 5 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// alive reports whether the process is still running.
func (s *server) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// signal sends sig to the process (and only to it).
func (s *server) signal(sig syscall.Signal) {
	if s.alive() {
		s.cmd.Process.Signal(sig)
	}
}

// wait waits up to d for the process to exit and reports whether it did.
func (s *server) wait(d time.Duration) bool {
	select {
	case <-s.done:
		return true
	case <-time.After(d):
		return false
	}
}

// exitCode is the exit status, or -1 for a signal or a running process.
func (s *server) exitCode() int {
	if s.alive() {
		return -1
	}
	return s.state.ExitCode()
}

// kill9 kills the process with SIGKILL and waits for it to be gone.
func (s *server) kill9() {
	s.signal(syscall.SIGKILL)
	if !s.wait(10 * time.Second) {
		s.t.Errorf("loopmx pid %d still alive 10s after SIGKILL", s.cmd.Process.Pid)
	}
}

// stop sends SIGTERM, then SIGKILL if the process is still alive 10s on.
func (s *server) stop() {
	if !s.alive() {
		return
	}
	s.signal(syscall.SIGTERM)
	if s.wait(10 * time.Second) {
		return
	}
	s.signal(syscall.SIGKILL)
	s.wait(10 * time.Second)
}

// waitLog waits up to d for the output to contain substr.
func (s *server) waitLog(substr string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !strings.Contains(s.stderr.String(), substr) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// smtpClient speaks SMTP over a raw connection, so a test controls every
// byte and can stop anywhere in the dialog.
type smtpClient struct {
	c net.Conn
	r *bufio.Reader
}

const ioTimeout = 15 * time.Second

// dialSMTP connects and reads the banner, which must be a 220.
func dialSMTP(addr string) (*smtpClient, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	cl := &smtpClient{c: c, r: bufio.NewReader(c)}
	code, text, err := cl.reply()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("banner: %w", err)
	}
	if code != 220 {
		c.Close()
		return nil, fmt.Errorf("banner: %d %s", code, text)
	}
	return cl, nil
}

func (cl *smtpClient) Close() error { return cl.c.Close() }

// reply reads one reply, multi-line or not, and returns its code and the
// text of its last line.
func (cl *smtpClient) reply() (int, string, error) {
	cl.c.SetReadDeadline(time.Now().Add(ioTimeout))
	r, err := servertest.ReadReply(cl.r)
	if err != nil {
		return 0, "", err
	}
	last := r.Last()
	return r.Code, strings.TrimSpace(last[min(3, len(last)):]), nil
}

// send writes raw bytes.
func (cl *smtpClient) send(b []byte) error {
	cl.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	_, err := cl.c.Write(b)
	return err
}

// cmd sends one command line and reads the reply.
func (cl *smtpClient) cmd(line string) (int, string, error) {
	if err := cl.send([]byte(line + "\r\n")); err != nil {
		return 0, "", err
	}
	return cl.reply()
}

// expect sends one command and fails unless the reply has code want.
func (cl *smtpClient) expect(line string, want int) error {
	code, text, err := cl.cmd(line)
	if err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	if code != want {
		return fmt.Errorf("%s: got %d %s, want %d", line, code, text, want)
	}
	return nil
}

// startTx sends EHLO (when helo), MAIL and RCPT, each expecting 250.
func (cl *smtpClient) startTx(helo bool, rcpt string) error {
	if helo {
		if err := cl.expect("EHLO client.e2e.test", 250); err != nil {
			return err
		}
	}
	if err := cl.expect("MAIL FROM:<sender@e2e.test>", 250); err != nil {
		return err
	}
	return cl.expect("RCPT TO:<"+rcpt+">", 250)
}

// sendData sends DATA, the dot-stuffed message and the final dot, and
// returns the reply to the end of data.
func (cl *smtpClient) sendData(msg []byte) (int, string, error) {
	code, text, err := cl.cmd("DATA")
	if err != nil {
		return 0, "", err
	}
	if code != 354 {
		return code, text, fmt.Errorf("DATA: got %d %s", code, text)
	}
	if err := cl.send(append(dotStuff(msg), ".\r\n"...)); err != nil {
		return 0, "", err
	}
	return cl.reply()
}

// testMessage returns a message (CRLF lines, ending in CRLF) that carries
// id in its Message-ID and is padded to about size bytes. One line starts
// with a dot, so dot-stuffing is exercised on the way in.
func testMessage(id string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <sender@e2e.test>\r\nTo: <u@example.com>\r\nSubject: e2e %s\r\nMessage-ID: <%s@e2e.test>\r\n\r\n", id, id)
	fmt.Fprintf(&b, "Body of %s.\r\n.a line that starts with a dot\r\n", id)
	for n := 0; b.Len() < size; n++ {
		fmt.Fprintf(&b, "%s line %05d: the quick brown fox jumps over the lazy dog\r\n", id, n)
	}
	fmt.Fprintf(&b, "End of %s.\r\n", id)
	return b.Bytes()
}

// dotStuff doubles a leading dot on each line (RFC 5321 4.5.2).
func dotStuff(msg []byte) []byte {
	out := make([]byte, 0, len(msg)+16)
	start := true
	for _, c := range msg {
		if start && c == '.' {
			out = append(out, '.')
		}
		out = append(out, c)
		start = c == '\n'
	}
	return out
}

var messageIDRe = regexp.MustCompile(`(?m)^Message-ID: <([^>@]+)@e2e\.test>\r$`)

// spoolFile is one message file in a maildir.
type spoolFile struct {
	name string
	data []byte
	id   string // from its Message-ID, "" if none
}

// readMaildir returns the files in spool/sub ("new" or "tmp").
func readMaildir(t *testing.T, spool, sub string) []spoolFile {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(spool, sub))
	if err != nil {
		t.Fatal(err)
	}
	var files []spoolFile
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(spool, sub, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		f := spoolFile{name: e.Name(), data: data}
		if m := messageIDRe.FindSubmatch(data); m != nil {
			f.id = string(m[1])
		}
		files = append(files, f)
	}
	return files
}

// checkStored fails unless f is msg exactly as sent, after the trace
// headers loopmx puts in front, among them Received.
func checkStored(t *testing.T, f spoolFile, msg []byte) {
	t.Helper()
	if !bytes.HasSuffix(f.data, msg) {
		t.Errorf("new/%s (id %q, %d bytes) does not end with the %d bytes that were sent", f.name, f.id, len(f.data), len(msg))
		return
	}
	head := string(f.data[:len(f.data)-len(msg)])
	if !strings.HasPrefix(head, "Received: ") && !strings.Contains(head, "\r\nReceived: ") {
		t.Errorf("new/%s has no Received header in front of the message; what loopmx added is %q", f.name, head)
	}
}

// syncBuffer is the shared goroutine-safe log sink.
type syncBuffer = testlog.Buffer
