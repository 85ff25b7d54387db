package main

// End-to-end test of the scale-out shape of docs/scale-out.md: a real
// HAProxy in front of three loopmx hosts, each a process of its own on its
// own 127.0.0.x address with a PROXY v2 listener and its own spool. One
// host is killed with SIGKILL under load.

import (
	"bufio"
	"fmt"
	"net"
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
	host string // from the banner ("mx2.test"), "" when none came
	id   string // the message's id, when it got a 250
	err  error
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
	var backends []string
	for i := 1; i <= 3; i++ {
		spool := t.TempDir()
		dir := maildirConfig(t, spool)
		// A port free on 127.0.0.1 is nearly always free on 127.0.0.x.
		paddr := fmt.Sprintf("127.0.0.%d:%d", i+1, freePort(t))
		name := fmt.Sprintf("mx%d.test", i)
		srv := startBinary(t, dir, "proxy_listen = "+paddr+"\nproxy_trusted = 127.0.0.0/8\nme = "+name+"\n")
		hosts = append(hosts, host{srv: srv, spool: spool, name: name})
		backends = append(backends, fmt.Sprintf("    server mx%d %s send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 2\n", i, paddr))
	}

	front := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	conf := "global\n    maxconn 1000\n" +
		"defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    retries 2\n    option redispatch\n" +
		"frontend mx\n    bind " + front + "\n    default_backend loopmx\n" +
		"backend loopmx\n    balance leastconn\n" + strings.Join(backends, "")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	hp := exec.Command(bin, "-db", "-f", cfg)
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
		if c, err := net.DialTimeout("tcp", front, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy not listening on %s after 10s:\n%s", front, hpOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The load: 6 clients, 300 sessions in all, one message each. Host 2
	// is killed once 60 messages are in.
	const total, clients, killAfter = 300, 6, 60
	var claimed, accepted atomic.Int64
	var mu sync.Mutex
	var sessions []hostSession
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := claimed.Add(1); n <= total; n = claimed.Add(1) {
				s := deliverThrough(front, fmt.Sprintf("ha-%d", n))
				if s.err == nil {
					accepted.Add(1)
				}
				mu.Lock()
				sessions = append(sessions, s)
				mu.Unlock()
			}
		}()
	}
	deadline = time.Now().Add(60 * time.Second)
	for accepted.Load() < killAfter && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	killed := hosts[1]
	killed.srv.kill9()
	wg.Wait()

	// Every 250 is in exactly one spool.
	stored := map[string]int{}
	for _, h := range hosts {
		for _, f := range readMaildir(t, h.spool, "new") {
			stored[f.id]++
		}
	}
	perHost := map[string]int{}
	var failed []hostSession
	for _, s := range sessions {
		if s.err != nil {
			failed = append(failed, s)
			if s.host != "" && s.host != killed.name {
				t.Errorf("a session on %s, which was not killed, failed: %v", s.host, s.err)
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
	if perHost["mx1.test"] == 0 || perHost["mx2.test"] == 0 || perHost["mx3.test"] == 0 {
		t.Errorf("delivered per host %v: the balancer did not use every host", perHost)
	}
	if len(sessions) != total {
		t.Errorf("%d sessions ran, want %d", len(sessions), total)
	}
	t.Logf("%d sessions: delivered per host %v, %d failed (all on %s or before a banner)", len(sessions), perHost, len(failed), killed.name)
}

// deliverThrough runs one session through the balancer at addr: banner,
// EHLO, one message with Message-ID id, QUIT.
func deliverThrough(addr, id string) (s hostSession) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return hostSession{err: err}
	}
	cl := &smtpClient{c: c, r: bufio.NewReader(c)}
	defer cl.Close()
	// The banner names the host: "220 mx2.test ESMTP ...".
	code, text, err := cl.reply()
	if err != nil || code != 220 {
		return hostSession{err: fmt.Errorf("banner: %d %s %v", code, text, err)}
	}
	s.host = strings.Fields(text)[0]
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
