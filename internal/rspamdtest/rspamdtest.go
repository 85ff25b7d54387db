// Package rspamdtest runs a throwaway rspamd for the tests and the
// benchmark of the rspamd plugin: Debian's rspamd with its own stock
// rules, and a config directory of the test's own (LOCAL_CONFDIR) that
// binds the normal worker alone to a free port of 127.0.0.1, keeps its
// database, pid file and log in a temporary directory, and turns off
// what would ask the network (DNS lists, SPF, DKIM signing, fuzzy
// hashes, maps fetched over HTTP) or Redis. The server runs in its own
// process group, stopped by that group's id when the test ends.
//
// It is test support: only _test.go files import it.
package rspamdtest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout bounds how long Start waits for rspamd to answer /ping:
// rspamd compiles its rules at start, which takes seconds on a busy
// machine.
const StartTimeout = 3 * time.Minute

// Server is a running rspamd.
type Server struct {
	// URL is the normal worker's base URL, http://127.0.0.1:port.
	URL string
	// Milter is the address (host:port) of the proxy worker, which
	// speaks the milter protocol and scans with rspamd itself.
	Milter string
	// Dir holds the config, the database and the log (rspamd.log).
	Dir string

	bin        string
	port       int
	milterPort int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan error
}

// Binary is where rspamd is expected, and Config the stock config file
// that the test's LOCAL_CONFDIR amends.
const (
	Binary = "/usr/bin/rspamd"
	Config = "/etc/rspamd/rspamd.conf"
)

// Installed reports whether rspamd and its stock config are there.
func Installed() bool {
	_, err1 := os.Stat(Binary)
	_, err2 := os.Stat(Config)
	return err1 == nil && err2 == nil
}

// modulesOff are rspamd modules that ask DNS, HTTP or Redis; with no
// network they would only make each scan wait for timeouts.
var modulesOff = []string{"rbl", "spf", "asn", "hfilter", "dmarc", "phishing", "fuzzy_check", "emails",
	"url_reputation", "once_received", "dkim_signing", "arc", "mx_check", "greylist", "ratelimit", "neural", "replies"}

// files is the test's LOCAL_CONFDIR; %d is the port.
var files = map[string]string{
	"override.d/worker-normal.inc":     "bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n",
	"override.d/worker-controller.inc": "enabled = false;\n",
	// The proxy worker in milter mode, scanning in place (self_scan).
	"override.d/worker-proxy.inc": "bind_socket = \"127.0.0.1:%d\";\ncount = 1;\nmilter = yes;\ntimeout = 120s;\n" +
		"upstream \"local\" {\n  default = yes;\n  self_scan = yes;\n}\n",
	"override.d/worker-fuzzy.inc": "enabled = false;\ncount = -1;\n",
	"local.d/logging.inc":         "type = \"file\";\nlevel = \"notice\";\n",
	// No resolver: a DNS query fails at once instead of waiting.
	"local.d/options.inc": "dns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.1s; retransmits = 1; }\n" +
		"filters = \"chartable,regexp\";\ndisable_hyperscan = true;\n",
	// rspamd's own headers (X-Spamd-Result, X-Rspamd-Server, ...) in
	// every reply, for the plugin to add, also for local clients.
	"local.d/milter_headers.conf": "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n",
	// Subjects that make rspamd answer each action on demand.
	"local.d/multimap.conf": rule("RSPAMDTEST_ADD_HEADER", SubjectAddHeader, "score = 7.0;") +
		rule("RSPAMDTEST_GREYLIST", SubjectGreylist, "score = 4.5;") +
		rule("RSPAMDTEST_SOFT_REJECT", SubjectSoftReject, "score = 0.1; action = \"soft reject\"; message = \"Come back later\";"),
}

// Subjects (a word anywhere in the Subject field) that give an action.
const (
	// SubjectAddHeader scores 7: rspamd's stock add header threshold is 6.
	SubjectAddHeader = "rspamdtest-add-header"
	// SubjectGreylist scores 4.5: the stock greylist threshold is 4.
	SubjectGreylist = "rspamdtest-greylist"
	// SubjectSoftReject forces soft reject with the message "Come back later".
	SubjectSoftReject = "rspamdtest-soft-reject"
)

// rule is a multimap rule on the Subject matching word; its map file is
// written next to the config by Start.
func rule(symbol, word, extra string) string {
	return symbol + " {\n  type = \"header\";\n  header = \"Subject\";\n  regexp = true;\n" +
		"  map = \"${LOCAL_CONFDIR}/" + word + ".map\";\n  " + extra + "\n}\n"
}

// Start runs rspamd on a free port and waits until it answers /ping; it
// is stopped when the test ends. The test is skipped, with a message
// saying so, when rspamd is not installed; any other failure fails it.
func Start(t testing.TB) *Server {
	t.Helper()
	if !Installed() {
		t.Skip("rspamd is not installed (Debian package rspamd; make deps installs it); skipping the tests against a real rspamd")
	}
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// New runs rspamd with its files in dir (which the caller removes) and
// waits until it answers /ping. The caller stops it with Stop.
func New(dir string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	mport, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: Binary, Dir: dir, port: port, URL: "http://127.0.0.1:" + strconv.Itoa(port),
		milterPort: mport, Milter: "127.0.0.1:" + strconv.Itoa(mport)}
	for name, content := range files {
		switch name {
		case "override.d/worker-normal.inc":
			content = fmt.Sprintf(content, s.port)
		case "override.d/worker-proxy.inc":
			content = fmt.Sprintf(content, s.milterPort)
		}
		if err := write(filepath.Join(s.Dir, name), content); err != nil {
			return nil, err
		}
	}
	for _, w := range []string{SubjectAddHeader, SubjectGreylist, SubjectSoftReject} {
		if err := write(filepath.Join(s.Dir, w+".map"), "/"+w+"/\n"); err != nil {
			return nil, err
		}
	}
	for _, m := range modulesOff {
		if err := write(filepath.Join(s.Dir, "local.d", m+".conf"), "enabled = false;\n"); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"db", "run", "log"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	return s, s.Restart()
}

func write(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}

// freePort finds a port nobody listens on by letting the kernel pick one.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("rspamdtest: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Restart starts rspamd again on the same port after Stop (or the first
// time, from New) and waits until it answers /ping.
func (s *Server) Restart() error {
	if s.Answers() {
		return fmt.Errorf("rspamdtest: something already answers on %s", s.URL)
	}
	args := []string{"-f", "-i", "-c", Config,
		"--var=LOCAL_CONFDIR=" + s.Dir,
		"--var=DBDIR=" + filepath.Join(s.Dir, "db"),
		"--var=RUNDIR=" + filepath.Join(s.Dir, "run"),
		"--var=LOGDIR=" + filepath.Join(s.Dir, "log")}
	if os.Getuid() == 0 {
		// rspamd drops root to the user named here; keep it root, since
		// the test's directory is root's.
		args = append(args, "-u", "root", "-g", "root")
	}
	cmd := exec.Command(s.bin, args...)
	out, err := os.Create(filepath.Join(s.Dir, "log", "stdout.log"))
	if err != nil {
		return err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("rspamdtest: starting %s: %w", s.bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	deadline := time.Now().Add(StartTimeout)
	for !s.Answers() {
		select {
		case err := <-exited:
			s.mu.Lock()
			s.cmd, s.exited = nil, nil
			s.mu.Unlock()
			return fmt.Errorf("rspamdtest: rspamd exited at start: %v\n%s", err, s.Log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("rspamdtest: rspamd on %s does not answer /ping after %s\n%s", s.URL, StartTimeout, s.Log())
		}
	}
	return nil
}

// Answers reports whether the worker answers GET /ping with pong.
func (s *Server) Answers() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(s.URL + "/ping")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b [16]byte
	n, _ := resp.Body.Read(b[:])
	return resp.StatusCode == 200 && string(b[:n]) == "pong\r\n"
}

// Log returns what rspamd logged.
func (s *Server) Log() string {
	a, _ := os.ReadFile(filepath.Join(s.Dir, "log", "rspamd.log"))
	b, _ := os.ReadFile(filepath.Join(s.Dir, "log", "stdout.log"))
	return string(a) + string(b)
}

// Stop ends rspamd: SIGTERM to its process group (the main process and
// its workers), SIGKILL when it has not exited within ten seconds, and
// waits until its port is closed. Stopping a server that is not running
// does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	pgid := cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
	// Workers may outlive the main process by a moment.
	for range 200 {
		if syscall.Kill(-pgid, 0) != nil && !s.Answers() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
}
