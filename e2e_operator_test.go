package main

// End-to-end tests of what an operator meets: stopping with Redis
// configured, a supervisor serving plain, PROXY and implicit-TLS listeners
// at once, a spool the server's user cannot write, and a config check
// that changes nothing.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"loopmx/internal/redisx/redistest"
)

// stopCleanly sends TERM and requires exit code 0 within 20s and an
// output without a panic or a Go stack trace.
func stopCleanly(t *testing.T, srv *server) {
	t.Helper()
	srv.signal(syscall.SIGTERM)
	if !srv.wait(20 * time.Second) {
		t.Fatal("still running 20s after TERM")
	}
	if c := srv.exitCode(); c != 0 {
		t.Errorf("exit code %d after TERM, want 0", c)
	}
	out := srv.stderr.String()
	for _, bad := range []string{"panic:", "goroutine ", "close of closed channel"} {
		if strings.Contains(out, bad) {
			t.Errorf("the output holds %q:\n%s", bad, tail(out, 4000))
			return
		}
	}
}

// waitGenerationGone waits until the n workers of generation gen have
// stopped: a reload is done once the new workers are ready, but the old
// ones accept until their TERM arrives.
func waitGenerationGone(t *testing.T, srv *server, gen, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for countLog(srv, `"generation":`+strconv.Itoa(gen)+`,`, `"message":"worker stopped"`) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the %d workers of generation %d have not stopped 20s after the reload", n, gen)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// redisLimitConfig returns a config directory whose limit plugin keeps its
// counters in the Redis at addr.
func redisLimitConfig(t *testing.T, addr string) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"plugins":   "limit\nrcpt_to.in_host_list\nqueue/discard\n",
		"host_list": "example.com\n",
		"limit.ini": "max_concurrency = 20\n[rate]\nconn = 1000/1m\n",
		"redis.ini": "server = " + addr + "\n",
	})
	return dir
}

// TestE2EStopWithRedis: with redis.ini and the limit plugin, a TERM ends
// the server with exit code 0 and no panic, alone and under a supervisor
// through a reload. (Every stop used to panic: the chain was closed
// twice and the limit plugin's Redis store closed a channel twice.)
func TestE2EStopWithRedis(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	t.Run("nodes=0", func(t *testing.T) {
		conf := redisLimitConfig(t, rs.Addr)
		srv := startBinary(t, conf, "")
		for i := 0; i < 3; i++ {
			deliverOne(t, srv.addr, "redis-"+strconv.Itoa(i))
		}
		stopCleanly(t, srv)
		if countLog(srv, `"message":"stopped"`) != 1 {
			t.Errorf("no 'stopped' line")
		}
	})
	t.Run("nodes=2", func(t *testing.T) {
		conf := redisLimitConfig(t, rs.Addr)
		srv := startSupervised(t, conf, "nodes = 2\n")
		deliverOne(t, srv.addr, "redis-before-hup")
		srv.signal(syscall.SIGHUP)
		if !srv.waitLog(`"message":"reload done"`, 30*time.Second) {
			t.Fatal("no 'reload done' in 30s")
		}
		waitGenerationGone(t, srv, 1, 2)
		deliverOne(t, srv.addr, "redis-after-hup")
		stopCleanly(t, srv)
		if n := countLog(srv, `"message":"worker stopped"`, `"exit_code":0`); n != 4 {
			t.Errorf("%d workers stopped with exit code 0, want 4 (two by the reload, two by TERM)", n)
		}
		if n := countLog(srv, `"worker stopped with an error"`); n != 0 {
			t.Errorf("%d workers stopped with an error", n)
		}
	})
}

// proxyBanner connects to addr, sends a PROXY v1 header naming 192.0.2.7
// as the client, and returns the banner.
func proxyBanner(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte("PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("banner after a PROXY header: %w", err)
	}
	c.Write([]byte("QUIT\r\n"))
	return strings.TrimSpace(line), nil
}

// tlsBanner makes a TLS handshake with addr, checking the certificate
// against the test's CA for name, and returns the banner.
func tlsBanner(addr, name string, ca *e2eCA) (string, error) {
	d := &net.Dialer{Timeout: ioTimeout}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: ca.pool})
	if err != nil {
		return "", fmt.Errorf("TLS handshake: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("banner over TLS: %w", err)
	}
	c.Write([]byte("QUIT\r\n"))
	return strings.TrimSpace(line), nil
}

// TestE2ESupervisorAllListeners: nodes=2 serves a plain, a PROXY and an
// implicit-TLS listener at once: a plain connection, a PROXY v1 header on
// the proxy port and a TLS handshake on the smtps port each get a banner,
// from workers of both ids; after a HUP the new workers serve all three.
func TestE2ESupervisorAllListeners(t *testing.T) {
	t.Parallel()
	setup := newTLSSetup(t, "mx.test")
	proxy := "127.0.0.1:" + strconv.Itoa(freePort(t))
	smtps := "127.0.0.1:" + strconv.Itoa(freePort(t))
	extra := "nodes = 2\nme = mx.test\nproxy_listen = " + proxy + "\nproxy_trusted = 127.0.0.1\nsmtps_listen = " + smtps + "\n"
	srv := startSupervised(t, setup.dir, extra)
	check := func(when, me string) {
		t.Helper()
		for i := 0; i < 5; i++ {
			for _, probe := range []struct {
				what string
				get  func() (string, error)
			}{
				{"plain " + srv.addr, func() (string, error) { return bannerText(srv.addr) }},
				{"PROXY " + proxy, func() (string, error) { return proxyBanner(proxy) }},
				{"TLS " + smtps, func() (string, error) { return tlsBanner(smtps, "mx.test", setup.ca) }},
			} {
				b, err := probe.get()
				if err != nil || !strings.Contains(b, me) {
					t.Fatalf("%s, %s: %q %v, want a banner naming %s", when, probe.what, b, err, me)
				}
			}
		}
	}
	check("at start", "mx.test")
	started := srv.stderr.String()
	for _, l := range []string{"smtp " + srv.addr, "smtps " + smtps, "proxy " + proxy} {
		if !strings.Contains(started, l) {
			t.Errorf("the supervisor's start line does not list %q", l)
		}
	}

	writeFiles(t, setup.dir, map[string]string{"smtp.ini": "listen = " + srv.addr + "\n" + strings.Replace(extra, "me = mx.test", "me = mx2.test", 1)})
	srv.signal(syscall.SIGHUP)
	if !srv.waitLog(`"message":"reload done"`, 30*time.Second) {
		t.Fatal("no 'reload done' in 30s")
	}
	waitGenerationGone(t, srv, 1, 2)
	check("after the reload", "mx2.test")
	if n := countLog(srv, "a reload keeps the sockets bound at start"); n != 0 {
		t.Errorf("the reload warned that the listeners changed, and they did not")
	}
	stopCleanly(t, srv)
}

// needRoot skips a test that makes files owned by another user.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a spool that belongs to root and runs loopmx for user nobody")
	}
}

// nobodyDir returns a directory that nobody can read and search (unlike
// t.TempDir(), whose parent is 0700), removed when the test ends.
func nobodyDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "loopmx-e2e-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestE2ESpoolNotWritableByTheUser: the spool belongs to root (mode 0700)
// and the server runs as nobody. check-config, doctor and the start all
// say so in one line naming maildir.ini, the path, the user and the fix;
// the server never listens (no client gets 451 for every message).
func TestE2ESpoolNotWritableByTheUser(t *testing.T) {
	t.Parallel()
	needRoot(t)
	top := nobodyDir(t)
	spool := filepath.Join(top, "spool")
	if err := os.Mkdir(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(top, "conf")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	writeFiles(t, conf, map[string]string{
		"plugins":     "rcpt_to.in_host_list\nqueue/maildir\n",
		"host_list":   "example.com\n",
		"maildir.ini": "path = " + spool + "\n",
	})
	want := []string{"maildir.ini", "path = " + spool, spool + " is not searchable (x) by nobody (uid 65534)", "fix: chown -R nobody: " + spool}
	hasAll := func(s string) bool {
		for _, w := range want {
			if !strings.Contains(s, w) {
				return false
			}
		}
		return true
	}

	t.Run("supervisor with user = nobody", func(t *testing.T) {
		writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + addr + "\nnodes = 2\nuser = nobody\n"})
		out, errOut, code := runBinary(t, "check-config", "-c", conf)
		if code != 1 || !hasAll(errOut) || strings.Contains(out, "config OK") {
			t.Errorf("check-config: exit %d, stderr %q; want 1 and %q", code, errOut, want)
		}
		out, _, code = runBinary(t, "doctor", "-c", conf)
		if code != 1 || !strings.Contains(out, "CHANGE  config: maildir.ini: path = "+spool) || !hasAll(out) {
			t.Errorf("doctor: exit %d, output:\n%s", code, out)
		}
		_, errOut, code = runBinary(t, "-c", conf)
		if code != 1 || !hasAll(errOut) {
			t.Errorf("start: exit %d, stderr %q; want 1 and %q", code, errOut, want)
		}
		if strings.Contains(errOut, "supervisor started") || strings.Contains(errOut, "worker started") {
			t.Errorf("the supervisor started workers on a spool they cannot write:\n%s", errOut)
		}
	})

	t.Run("one process started as nobody", func(t *testing.T) {
		writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + addr + "\n"})
		exe := filepath.Join(top, "loopmx")
		copyFile(t, loopmxBinary(t), exe)
		cmd := exec.Command(exe, "-c", conf)
		cmd.Dir = top
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatal("loopmx as nobody on a root spool still running after 20s; it should refuse to start")
		}
		if cmd.ProcessState.ExitCode() != 1 || !hasAll(string(out)) {
			t.Errorf("start as nobody: %v, output %q; want exit 1 and %q", err, out, want)
		}
		if strings.Contains(string(out), "loopmx ready") {
			t.Errorf("it served before it refused:\n%s", out)
		}
	})
}

// TestE2ECheckConfigChangesNothing: check-config on contrib/config (with
// its spool and port moved into the test's directories) creates nothing,
// and says who will create the spool at start: root when it runs alone,
// nobody when smtp.ini says user = nobody with workers.
func TestE2ECheckConfigChangesNothing(t *testing.T) {
	t.Parallel()
	top := nobodyDir(t)
	conf := filepath.Join(top, "conf")
	// The spool's parent belongs to nobody when the test runs as root, so
	// that nobody may create the spool in it.
	spool := filepath.Join(top, "var", "spool")
	if err := os.Mkdir(filepath.Dir(spool), 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Dir(spool), 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := os.ReadDir("contrib/config")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("contrib/config", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(b)
	}
	files["maildir.ini"] = strings.Replace(files["maildir.ini"], "path = /var/spool/loopmx", "path = "+spool, 1)
	if !strings.Contains(files["maildir.ini"], spool) {
		t.Fatalf("contrib/config/maildir.ini has no 'path = /var/spool/loopmx' line to move")
	}
	smtp := files["smtp.ini"]
	writeFiles(t, conf, files)
	me := strconv.Itoa(os.Geteuid())
	if os.Geteuid() == 0 {
		me = "root"
	}
	for _, tc := range []struct {
		name string
		edit *strings.Replacer
		who  string
	}{
		{"alone", strings.NewReplacer(), me + " (uid " + strconv.Itoa(os.Geteuid()) + ")"},
		{"user nobody", strings.NewReplacer("\nnodes = 0\n", "\nnodes = 2\n", "\nuser =\n", "\nuser = nobody\n"), "nobody (uid 65534)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.who != me+" (uid "+strconv.Itoa(os.Geteuid())+")" && os.Geteuid() != 0 {
				t.Skip("needs root to give the spool's parent to nobody")
			}
			ini := tc.edit.Replace(smtp)
			writeFiles(t, conf, map[string]string{"smtp.ini": ini})
			before := listTree(t, top)
			out, errOut, code := runBinary(t, "check-config", "-c", conf)
			if code != 0 || !strings.HasSuffix(out, "config OK\n") {
				t.Fatalf("check-config on contrib/config: exit %d, stderr %q", code, errOut)
			}
			if want := "queue/maildir: the spool " + spool + " does not exist; it will be created by " + tc.who + " at start\n"; !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
			if after := listTree(t, top); after != before {
				t.Errorf("check-config changed the disk:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// listTree lists every path below dir with its mode and owner.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %v %d:%d; ", p, fi.Mode(), st.Uid, st.Gid)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// activatedSocket opens a listening socket on a free port of 127.0.0.1 as
// systemd would, and returns it as a file to pass on and its address.
func activatedSocket(t *testing.T) (*os.File, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, l.Addr().String()
}

// TestE2ESocketActivationNames: systemd passes three sockets, as
// contrib/systemd/loopmx.socket does two (0.0.0.0:25 and [::]:25) plus one
// from a socket unit with FileDescriptorName=proxy, while smtp.ini names
// a single listen address. Alone and under a supervisor, loopmx serves all
// three, the named one with a PROXY header first, and binds nothing of
// smtp.ini. (It used to refuse: "3 inherited listeners for 1 configured
// addresses".)
func TestE2ESocketActivationNames(t *testing.T) {
	t.Parallel()
	for _, nodes := range []string{"0", "2"} {
		t.Run("nodes="+nodes, func(t *testing.T) {
			conf := discardConfig(t)
			f1, a1 := activatedSocket(t)
			f2, a2 := activatedSocket(t)
			f3, proxy := activatedSocket(t)
			closed := "127.0.0.1:" + strconv.Itoa(freePort(t))
			writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + closed + "\nnodes = " + nodes + "\nproxy_trusted = 127.0.0.1\n"})
			cmd := exec.Command("sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=3 LISTEN_FDNAMES=loopmx.socket:loopmx.socket:proxy; exec "$0" -c "$1"`, loopmxBinary(t), conf)
			cmd.ExtraFiles = []*os.File{f1, f2, f3}
			cmd.Dir = conf
			ready := `"message":"loopmx ready"`
			if nodes != "0" {
				ready = `"message":"all workers ready"`
			}
			srv := launchCmd(t, cmd, a1, ready)
			for i := 0; i < 10; i++ {
				for _, a := range []string{a1, a2} {
					if _, err := bannerText(a); err != nil {
						t.Fatalf("plain socket %s: %v", a, err)
					}
				}
				if b, err := proxyBanner(proxy); err != nil || !strings.HasPrefix(b, "220 ") {
					t.Fatalf("socket named proxy %s: %q %v, want a banner after the PROXY header", proxy, b, err)
				}
			}
			if c, err := net.DialTimeout("tcp", closed, time.Second); err == nil {
				c.Close()
				t.Errorf("%s (listen in smtp.ini) accepts; with socket activation nothing should bind it", closed)
			}
			stopCleanly(t, srv)
		})
	}
}
