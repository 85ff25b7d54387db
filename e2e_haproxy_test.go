package main

// End-to-end test of the scale-out shape of docs/scale-out.md: a real
// HAProxy in front of three loopmx hosts, each a process of its own on its
// own 127.0.0.x address with a PROXY v2 listener and its own spool. One
// host is killed with SIGKILL under load.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// haproxyBinary finds Debian's haproxy (in /usr/sbin, often not on a
// user's PATH) or skips the test.
func haproxyBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	t.Skip("haproxy is not installed (make deps installs it as root: apt-get install haproxy)")
	return ""
}

// hostSession is one client session through the balancer.
type hostSession struct {
	host     string // from the banner ("mx2.test"), "" when none came
	greeting int    // the code of a first reply that was not a 220 banner
	id       string // the message's id, when it got a 250
	err      error
}

// TestE2EHAProxyKillOneHost: under a bounded load through HAProxy
// (send-proxy-v2, leastconn) to three loopmx hosts, host 2 is killed with
// SIGKILL. Every message that got a 250 is in exactly one host's spool,
// and the only sessions that failed were on the killed host (their banner
// names it) or never got a banner.
func TestE2EHAProxyKillOneHost(t *testing.T) {
	bin := haproxyBinary(t)
	type host struct {
		srv   *server
		spool string
		name  string
	}
	var hosts []host
	var spools []string
	var backends []string
	for i := 1; i <= 3; i++ {
		spool := t.TempDir()
		dir := maildirConfig(t, spool)
		// A port free on 127.0.0.1 is nearly always free on 127.0.0.x.
		paddr := fmt.Sprintf("127.0.0.%d:%d", i+1, freePort(t))
		name := fmt.Sprintf("mx%d.test", i)
		srv := startBinary(t, dir, "proxy_listen = "+paddr+"\nproxy_trusted = 127.0.0.0/8\nme = "+name+"\n")
		hosts = append(hosts, host{srv: srv, spool: spool, name: name})
		spools = append(spools, spool)
		backends = append(backends, fmt.Sprintf("    server mx%d %s send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 2\n", i, paddr))
	}
	front := "127.0.0.1:" + strconv.Itoa(freePort(t))
	startHAProxy(t, bin, nil, front, strings.Join(backends, ""), tcpDial)

	// The load: 6 clients, 300 sessions in all, one message each. Host 2
	// is killed once 60 messages are in.
	const total, clients, killAfter = 300, 6, 60
	load := startLoad(t, clients, total, "ha", front, func(int) dialer { return tcpDial }, nil)
	load.waitAccepted(killAfter, 60*time.Second)
	killed := hosts[1]
	killed.srv.kill9()
	sessions := load.wait()

	perHost, failed := checkSpread(t, sessions, spools, killed.name)
	if perHost["mx1.test"] == 0 || perHost["mx2.test"] == 0 || perHost["mx3.test"] == 0 {
		t.Errorf("delivered per host %v: the balancer did not use every host", perHost)
	}
	if len(sessions) != total {
		t.Errorf("%d sessions ran, want %d", len(sessions), total)
	}
	t.Logf("%d sessions: delivered per host %v, %d failed (all on %s or before a banner)", len(sessions), perHost, failed, killed.name)
}

// startHAProxy runs HAProxy (bin, after the command prefix wrap when it
// runs in a network namespace) listening on front, in TCP mode, leastconn,
// with a connection that a host refuses tried again on another, in front
// of the servers and check settings of backend (lines of the backend
// section). It waits until front accepts a connection made with dial.
// HAProxy is killed by its pid when the test ends.
func startHAProxy(t *testing.T, bin string, wrap []string, front, backend string, dial dialer) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	conf := "global\n    maxconn 1000\n" +
		"defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 2\n    option redispatch\n" +
		"frontend mx\n    bind " + front + "\n    default_backend loopmx\n" +
		"backend loopmx\n    balance leastconn\n" + backend
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string{}, wrap...), bin, "-db", "-f", cfg)
	hp := exec.Command(argv[0], argv[1:]...)
	var hpOut syncBuffer
	hp.Stdout, hp.Stderr = &hpOut, &hpOut
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hp.Process.Kill()
		hp.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", tail(hpOut.String(), 3000))
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := dial(front, time.Second); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy not listening on %s after 10s:\n%s", front, hpOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// balancedLoad is a bounded load through a balancer: a few clients, each
// running one session after another, one message a session, until a
// total is reached or the test stops it.
type balancedLoad struct {
	total             int64
	claimed, accepted atomic.Int64
	stopped           chan struct{} // closed by stop
	stopOnce          sync.Once

	mu       sync.Mutex
	sessions []hostSession
	wg       sync.WaitGroup
}

// startLoad starts clients sessions at a time through front, at most
// total in all. Session n carries the Message-ID prefix-n; client c dials
// with dial(c). When pace is not nil, each session first takes a value
// from it, which bounds the rate. The load is stopped and waited for when
// the test ends, should the test not have done so.
func startLoad(t *testing.T, clients int, total int64, prefix, front string, dial func(client int) dialer, pace <-chan time.Time) *balancedLoad {
	l := &balancedLoad{total: total, stopped: make(chan struct{})}
	for c := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := l.claimed.Add(1); n <= total; n = l.claimed.Add(1) {
				if !l.next(pace) {
					return
				}
				s := deliverThrough(dial(c), front, fmt.Sprintf("%s-%d", prefix, n))
				if s.err == nil {
					l.accepted.Add(1)
				}
				l.mu.Lock()
				l.sessions = append(l.sessions, s)
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { l.stop(); l.wait() })
	return l
}

// next waits for pace, when there is one, and reports whether the load
// goes on: false once it is stopped.
func (l *balancedLoad) next(pace <-chan time.Time) bool {
	select {
	case <-l.stopped:
		return false
	default:
	}
	if pace == nil {
		return true
	}
	select {
	case <-pace:
		return true
	case <-l.stopped:
		return false
	}
}

// waitAccepted waits up to d until n messages got a 250 and reports
// whether they did.
func (l *balancedLoad) waitAccepted(n int64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for l.accepted.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// stop lets the sessions under way finish and starts no more.
func (l *balancedLoad) stop() { l.stopOnce.Do(func() { close(l.stopped) }) }

// wait waits for the clients to end and returns every session they ran.
func (l *balancedLoad) wait() []hostSession {
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]hostSession(nil), l.sessions...)
}

// checkSpread checks the sessions of a load through the balancer during
// which the host named killed was killed: every message that got a 250 is
// in exactly one of the spools, none is stored twice, and the only
// sessions that failed were on the killed host (their banner names it) or
// got no first reply at all (one that refuses, such as limit's 421, is
// not a dead host and fails the test). It returns the messages delivered
// per host and the number of failed sessions.
func checkSpread(t *testing.T, sessions []hostSession, spools []string, killed string) (map[string]int, int) {
	t.Helper()
	stored := map[string]int{}
	for _, spool := range spools {
		for _, f := range readMaildir(t, spool, "new") {
			stored[f.id]++
		}
	}
	perHost := map[string]int{}
	failed := 0
	for _, s := range sessions {
		if s.err != nil {
			failed++
			if s.host != "" && s.host != killed {
				t.Errorf("a session on %s, which was not killed, failed: %v", s.host, s.err)
			}
			if s.greeting != 0 {
				t.Errorf("a session was refused at its greeting: %v", s.err)
			}
			continue
		}
		perHost[s.host]++
		if n := stored[s.id]; n != 1 {
			t.Errorf("message %s got 250 from %s and is in the spools %d times", s.id, s.host, n)
		}
	}
	for id, n := range stored {
		if n > 1 {
			t.Errorf("message %s is stored %d times", id, n)
		}
	}
	return perHost, failed
}

// greet connects with dial to the balancer at addr and reads the first
// reply; host is the first word of a 220 banner ("mx2.test"), which
// names the host the balancer chose. The caller closes cl when err is
// nil.
func greet(dial dialer, addr string) (cl *smtpClient, code int, text, host string, err error) {
	c, err := dial(addr, ioTimeout)
	if err != nil {
		return nil, 0, "", "", err
	}
	cl = &smtpClient{c: c, r: bufio.NewReader(c)}
	code, text, err = cl.reply()
	if err != nil {
		c.Close()
		return nil, code, text, "", err
	}
	if code == 220 {
		host = strings.Fields(text)[0]
	}
	return cl, code, text, host, nil
}

// deliverThrough runs one session through the balancer at addr, dialled
// with dial: banner, EHLO, one message with Message-ID id, QUIT.
func deliverThrough(dial dialer, addr, id string) (s hostSession) {
	cl, code, text, host, err := greet(dial, addr)
	if err != nil || code != 220 {
		if cl != nil {
			cl.Close()
		}
		return hostSession{greeting: code, err: fmt.Errorf("banner: %d %s %v", code, text, err)}
	}
	defer cl.Close()
	s.host = host
	if err := cl.startTx(true, "u@example.com"); err != nil {
		s.err = err
		return s
	}
	code, text, err = cl.sendData(testMessage(id, 1024))
	if err != nil || code != 250 {
		s.err = fmt.Errorf("DATA: %d %s %v", code, text, err)
		return s
	}
	s.id = id
	cl.cmd("QUIT")
	return s
}
