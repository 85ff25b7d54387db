package main

// End-to-end tests of the supervisor (nodes >= 1): worker crashes under
// load, rolling reloads, systemd's notify and socket-activation
// protocols, and the in-place binary upgrade of USR2.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"loopmx/internal/testnotify"
)

// children returns the child processes of pid that are alive (not
// zombies), from the ppid field of /proc/*/stat.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := procStat(child)
		if ok && ppid == pid && state != "Z" {
			kids = append(kids, child)
		}
	}
	slices.Sort(kids)
	return kids
}

// procStat returns the state and parent pid of pid.
func procStat(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err == nil
}

// gone reports whether pid has exited (it may linger as a zombie).
func gone(pid int) bool {
	state, _, ok := procStat(pid)
	return !ok || state == "Z"
}

// waitChildren waits until pid has n live children for which accept is
// true, and returns them.
func waitChildren(t *testing.T, pid, n int, d time.Duration, accept func([]int) bool) []int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		kids := children(pid)
		if len(kids) == n && (accept == nil || accept(kids)) {
			return kids
		}
		if time.Now().After(deadline) {
			t.Fatalf("supervisor %d has children %v after %v, want %d", pid, kids, d, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startSupervised starts the binary with nodes >= 1 in extraINI and waits
// until the supervisor says every worker is ready.
func startSupervised(t *testing.T, confDir, extraINI string, wrap ...string) *server {
	t.Helper()
	srv := startBinary(t, confDir, extraINI, wrap...)
	if !srv.waitLog(`"message":"all workers ready"`, 20*time.Second) {
		t.Fatalf("workers not ready after 20s")
	}
	return srv
}

// countLog counts the log lines that contain every one of parts.
func countLog(s *server, parts ...string) int {
	n := 0
	for _, line := range strings.Split(s.stderr.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// bannerProbe is a client that connects in a loop, reads the banner and
// says QUIT; it records every failure with the time the attempt began.
type bannerProbe struct {
	stop    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	fails   []probeFailure
	banners map[string]int
	n       atomic.Int64
}

type probeFailure struct {
	at  time.Time
	err error
}

// startProbes starts clients that connect in a loop until halt.
func startProbes(addr string, clients int) *bannerProbe {
	p := &bannerProbe{banners: map[string]int{}}
	for i := 0; i < clients; i++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for !p.stop.Load() {
				at := time.Now()
				text, err := bannerText(addr)
				p.n.Add(1)
				p.mu.Lock()
				if err != nil {
					p.fails = append(p.fails, probeFailure{at, err})
				} else {
					p.banners[text]++
				}
				p.mu.Unlock()
			}
		}()
	}
	return p
}

// waitMore waits until the probes have made k more attempts than when it
// was called: a window of traffic measured in connections, not in time.
func (p *bannerProbe) waitMore(t *testing.T, k int64) {
	t.Helper()
	from := p.n.Load()
	deadline := time.Now().Add(20 * time.Second)
	for p.n.Load() < from+k {
		if time.Now().After(deadline) {
			t.Fatalf("the probes made %d attempts in 20s, want %d", p.n.Load()-from, k)
		}
		time.Sleep(5 * time.Millisecond) // a poll interval
	}
}

// bannerText connects, reads the 220 banner, says QUIT and returns the
// banner's text.
func bannerText(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return "", err
	}
	cl := &smtpClient{c: c, r: bufio.NewReader(c)}
	defer cl.Close()
	code, text, err := cl.reply()
	if err != nil {
		return "", fmt.Errorf("banner: %w", err)
	}
	if code != 220 {
		return "", fmt.Errorf("banner: %d %s", code, text)
	}
	cl.cmd("QUIT")
	return text, nil
}

func (p *bannerProbe) halt() {
	p.stop.Store(true)
	p.wg.Wait()
}

// seen reports whether some banner contains s.
func (p *bannerProbe) seen(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for b := range p.banners {
		if strings.Contains(b, s) {
			return true
		}
	}
	return false
}

// failures returns the failed attempts that began at or after since.
func (p *bannerProbe) failures(since time.Time) []probeFailure {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []probeFailure
	for _, f := range p.fails {
		if !f.at.Before(since) {
			out = append(out, f)
		}
	}
	return out
}

// refused returns the attempts refused by the kernel (nobody listening).
func (p *bannerProbe) refused() []probeFailure {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []probeFailure
	for _, f := range p.fails {
		if errors.Is(f.err, syscall.ECONNREFUSED) {
			out = append(out, f)
		}
	}
	return out
}

// reportProbe fails the test for every failure since since (all of them
// when since is zero) and logs the totals.
func reportProbe(t *testing.T, p *bannerProbe, what string, since time.Time) {
	t.Helper()
	if r := p.refused(); len(r) > 0 {
		t.Errorf("%s: %d connections refused, first at %v: %v", what, len(r), r[0].at.Format("15:04:05.000"), r[0].err)
	}
	f := p.failures(since)
	for i, x := range f {
		if i == 5 {
			break
		}
		t.Errorf("%s: connection begun at %v failed: %v", what, x.at.Format("15:04:05.000"), x.err)
	}
	p.mu.Lock()
	total := len(p.fails)
	p.mu.Unlock()
	t.Logf("%s: %d connections, %d failed (%d counted)", what, p.n.Load(), total, len(f))
}

// TestE2ESupervisorKill9Worker: nodes=2 on the maildir spool, clients
// delivering in a loop; one worker is killed with SIGKILL. New
// connections keep getting banners (none fails once the killed worker is
// gone: the other worker and then the replacement take them), the
// supervisor starts a replacement that reports ready, the log names the
// kill, and every message that got a 250 is in new/. How long the
// replacement takes is logged, not asserted: on a loaded machine it is
// whatever the scheduler makes it.
func TestE2ESupervisorKill9Worker(t *testing.T) {
	t.Parallel()
	spool := t.TempDir()
	conf := maildirConfig(t, spool)
	srv := startSupervised(t, conf, "nodes = 2\ngraceful_timeout = 5s\n")
	sup := srv.cmd.Process.Pid
	kids := waitChildren(t, sup, 2, 10*time.Second, nil)

	l := newLedger()
	var acks atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; !stop.Load(); round++ {
				crashSender(t, srv.addr, fmt.Sprintf("s%d-%d", k, round), l, &acks, &stop)
			}
		}()
	}
	probes := startProbes(srv.addr, 2)
	waitAcks := func(n int64) {
		deadline := time.Now().Add(30 * time.Second)
		for acks.Load() < n && time.Now().Before(deadline) && !t.Failed() {
			time.Sleep(2 * time.Millisecond)
		}
		if acks.Load() < n {
			t.Errorf("only %d messages acknowledged, want %d", acks.Load(), n)
		}
	}
	waitAcks(40)

	// Kill the worker that carries the most of the load, from the "pid" of
	// the workers' transaction lines.
	victim, most := kids[0], -1
	for _, k := range kids {
		if n := countLog(srv, `"pid":`+strconv.Itoa(k)+`,`, `"message":"transaction"`); n > most {
			victim, most = k, n
		}
	}
	killed := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for !gone(victim) {
		time.Sleep(time.Millisecond)
	}
	dead := time.Now()
	newKids := waitChildren(t, sup, 2, 30*time.Second, func(k []int) bool { return !slices.Contains(k, victim) })
	back := time.Since(killed)
	var replacement int
	for _, k := range newKids {
		if !slices.Contains(kids, k) {
			replacement = k
		}
	}
	readyLine := `"worker_pid":` + strconv.Itoa(replacement) + `,`
	deadline := time.Now().Add(30 * time.Second)
	for countLog(srv, `"message":"worker ready"`, readyLine) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ready := time.Since(killed)
	if countLog(srv, `"message":"worker ready"`, readyLine) != 1 {
		t.Fatalf("the replacement worker %d did not report ready within 30s", replacement)
	}
	t.Logf("killed worker %d (%d transactions so far); replacement %d started after %v, ready after %v (logged, not asserted)",
		victim, most, replacement, back.Round(time.Millisecond), ready.Round(time.Millisecond))
	if n := countLog(srv, `"message":"worker exited unexpectedly"`, `"worker_pid":`+strconv.Itoa(victim), `"signal":"SIGKILL"`); n != 1 {
		t.Errorf("%d log lines about the kill of %d, want 1 naming SIGKILL", n, victim)
	}

	// The load goes on, now on both workers again.
	waitAcks(acks.Load() + 40)
	stop.Store(true)
	probes.halt()
	wg.Wait()
	reportProbe(t, probes, "banner probes", dead)

	srv.signal(syscall.SIGTERM)
	if !srv.wait(20 * time.Second) {
		t.Fatal("supervisor still running 20s after TERM")
	}
	if c := srv.exitCode(); c != 0 {
		t.Errorf("exit code %d after TERM, want 0", c)
	}
	verifySpool(t, spool, l, "after the worker was killed")
	served := map[string]int{}
	for _, line := range strings.Split(srv.stderr.String(), "\n") {
		if strings.Contains(line, `"message":"transaction"`) {
			if i := strings.Index(line, `"worker":`); i >= 0 {
				served[strings.SplitN(line[i+9:], ",", 2)[0]]++
			}
		}
	}
	t.Logf("transactions per worker id (the log's \"worker\" field): %v", served)
}

// discardConfig returns a config directory that accepts mail for
// example.com and throws it away.
func discardConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"plugins":   "rcpt_to.in_host_list\nqueue/discard\n",
		"host_list": "example.com\n",
	})
	return dir
}

// TestE2ESupervisorReload: HUP with a new banner host name while clients
// connect in a loop: no connection fails or is refused, new connections
// get the new banner. Then HUP with a broken smtp.ini: the error is
// logged and the running workers keep serving the last good config.
func TestE2ESupervisorReload(t *testing.T) {
	t.Parallel()
	conf := discardConfig(t)
	srv := startSupervised(t, conf, "nodes = 2\nme = old.e2e.test\n")
	sup := srv.cmd.Process.Pid
	before := waitChildren(t, sup, 2, 10*time.Second, nil)
	probes := startProbes(srv.addr, 4)
	probes.waitMore(t, 20)

	writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + srv.addr + "\nnodes = 2\nme = new.e2e.test\n"})
	srv.signal(syscall.SIGHUP)
	if !srv.waitLog(`"message":"reload done"`, 30*time.Second) {
		t.Fatal("no 'reload done' in 30s")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !probes.seen("new.e2e.test") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !probes.seen("new.e2e.test") || !probes.seen("old.e2e.test") {
		t.Errorf("banners seen: %v, want old.e2e.test, then new.e2e.test", probes.banners)
	}
	after := waitChildren(t, sup, 2, 20*time.Second, func(k []int) bool {
		return !slices.Contains(k, before[0]) && !slices.Contains(k, before[1])
	})
	probes.waitMore(t, 20)

	writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + srv.addr + "\nnodes = 2\nme = new.e2e.test\nbacklog = lots\n"})
	srv.signal(syscall.SIGHUP)
	if !srv.waitLog(`"message":"reload failed: the config has an error; the workers keep running with the old one"`, 10*time.Second) {
		t.Fatal("no 'reload failed' line for the broken config")
	}
	if n := countLog(srv, `"message":"reload failed`, `smtp.ini`, `backlog`, `lots`); n != 1 {
		t.Errorf("%d 'reload failed' lines naming smtp.ini, backlog and the value, want 1", n)
	}
	probes.waitMore(t, 20)
	probes.halt()
	if got := children(sup); !slices.Equal(got, after) {
		t.Errorf("workers %v after the failed reload, want the same %v", got, after)
	}
	probes.mu.Lock()
	for b := range probes.banners {
		if !strings.Contains(b, "new.e2e.test") && !strings.Contains(b, "old.e2e.test") {
			t.Errorf("unexpected banner %q", b)
		}
	}
	probes.mu.Unlock()
	reportProbe(t, probes, "probes through two reloads", time.Time{})
	if text, err := bannerText(srv.addr); err != nil || !strings.Contains(text, "new.e2e.test") {
		t.Errorf("after the failed reload: %q %v, want the new.e2e.test banner", text, err)
	}
}

// TestE2ESupervisorNotify: with NOTIFY_SOCKET set, READY=1 arrives once the
// port accepts (a connection made the moment READY=1 arrives gets its
// banner), WATCHDOG=1 comes at half of WATCHDOG_USEC, HUP gives
// RELOADING=1 then READY=1, TERM gives STOPPING=1, and every message comes
// from the supervisor's own pid.
func TestE2ESupervisorNotify(t *testing.T) {
	t.Parallel()
	conf := discardConfig(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	atReady := make(chan error, 1)
	n := testnotify.Listen(t, func() {
		_, err := bannerText(addr)
		atReady <- err
	})
	writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + addr + "\nnodes = 2\n"})
	srv, err := launch(t, []string{"env", "NOTIFY_SOCKET=" + n.Path, "WATCHDOG_USEC=200000", loopmxBinary(t), "-c", conf}, conf, addr)
	if err != nil {
		t.Fatal(err)
	}
	sup := int32(srv.cmd.Process.Pid)
	if n.WaitFor("READY=1", 0, 20*time.Second) < 0 {
		t.Fatalf("no READY=1 in 20s: %v", n.All())
	}
	select {
	case err := <-atReady:
		if err != nil {
			t.Errorf("a connection made when READY=1 arrived failed: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the connection at READY=1 never finished")
	}
	// Watchdog pings may come first; nothing else may.
	for _, m := range n.All() {
		if m.Text != "WATCHDOG=1" {
			if !strings.HasPrefix(m.Text, "READY=1") {
				t.Errorf("first message %q, want READY=1", m.Text)
			}
			break
		}
	}
	if c := countLog(srv, `"message":"worker ready"`); c != 2 {
		t.Errorf("%d workers ready, want 2", c)
	}

	// Pings keep coming (two after READY=1), and none of them is logged.
	first := n.WaitFor("WATCHDOG=1", 0, 10*time.Second)
	if first < 0 || n.WaitFor("WATCHDOG=1", first+1, 10*time.Second) < 0 {
		t.Errorf("fewer than 2 WATCHDOG=1 with WATCHDOG_USEC=200000: %v", n.All())
	}
	if c := countLog(srv, "WATCHDOG"); c != 0 {
		t.Errorf("watchdog pings in the log")
	}

	mark := len(n.All())
	srv.signal(syscall.SIGHUP)
	r := n.WaitFor("RELOADING=1\nMONOTONIC_USEC=", mark, 10*time.Second)
	if r < 0 || n.WaitFor("READY=1", r, 30*time.Second) < 0 {
		t.Errorf("after HUP: %v, want RELOADING=1 with MONOTONIC_USEC, then READY=1", n.All()[mark:])
	}

	mark = len(n.All())
	srv.signal(syscall.SIGTERM)
	if !srv.wait(20 * time.Second) {
		t.Fatal("still running 20s after TERM")
	}
	if srv.exitCode() != 0 {
		t.Errorf("exit code %d, want 0", srv.exitCode())
	}
	if n.WaitFor("STOPPING=1", mark, time.Second) < 0 {
		t.Errorf("no STOPPING=1 after TERM: %v", n.All()[mark:])
	}
	for _, m := range n.All() {
		if m.Pid != sup {
			t.Errorf("%q came from pid %d, not the supervisor %d (NotifyAccess=main would drop it)", m.Text, m.Pid, sup)
		}
	}
}

// launchCmd starts a prepared command like launch does, for what launch
// cannot express (inherited descriptors), and waits for the log line
// ready (a substring such as `"message":"all workers ready"`).
func launchCmd(t *testing.T, cmd *exec.Cmd, addr, ready string) *server {
	t.Helper()
	s := &server{t: t, addr: addr, stderr: &syncBuffer{}, done: make(chan struct{}), cmd: cmd}
	cmd.Stdout, cmd.Stderr = s.stderr, s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		s.state = cmd.ProcessState
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop()
		if strings.Contains(s.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in loopmx pid %d", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("loopmx pid %d output:\n%s", cmd.Process.Pid, tail(s.stderr.String(), 4000))
		}
	})
	if !s.waitLog(ready, 20*time.Second) {
		t.Fatalf("not ready after 20s:\n%s", s.stderr.String())
	}
	return s
}

// TestE2ESupervisorSocketActivation: the test opens the listener, passes it
// as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to the child's pid, and the
// workers accept on it; the listen address of smtp.ini stays closed. With
// sched_policy = reuseport, systemd's socket is shared all the same.
func TestE2ESupervisorSocketActivation(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"shared", "reuseport"} {
		t.Run(policy, func(t *testing.T) {
			conf := discardConfig(t)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			f, err := l.(*net.TCPListener).File()
			l.Close()
			if err != nil {
				t.Fatal(err)
			}
			activated := l.Addr().String()
			closed := "127.0.0.1:" + strconv.Itoa(freePort(t))
			writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + closed + "\nnodes = 2\nsched_policy = " + policy + "\n"})
			// LISTEN_PID must be the pid of loopmx itself: the shell
			// exports its own pid, then becomes loopmx with exec.
			cmd := exec.Command("sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" -c "$1"`, loopmxBinary(t), conf)
			cmd.ExtraFiles = []*os.File{f}
			cmd.Dir = conf
			srv := launchCmd(t, cmd, activated, `"message":"all workers ready"`)
			f.Close()
			for i := 0; i < 20; i++ {
				if _, err := bannerText(activated); err != nil {
					t.Fatalf("connection %d on the activated socket: %v", i, err)
				}
			}
			if c, err := net.DialTimeout("tcp", closed, time.Second); err == nil {
				c.Close()
				t.Errorf("%s (listen in smtp.ini) accepts; with socket activation nothing should bind it", closed)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dial %s: %v, want connection refused", closed, err)
			}
			if countLog(srv, `"sockets":"systemd"`) != 1 {
				t.Errorf("the supervisor does not say it uses systemd's sockets")
			}
			warned := countLog(srv, "sched_policy = reuseport is not possible with systemd's sockets") == 1
			if warned != (policy == "reuseport") {
				t.Errorf("reuseport warning logged: %v, policy %s", warned, policy)
			}
			if len(children(srv.cmd.Process.Pid)) != 2 {
				t.Errorf("want 2 workers")
			}
		})
	}
}

// TestE2ESupervisorUpgrade: USR2 while clients connect in a loop. A binary
// on disk that does not work is refused and nothing changes; then the
// binary on disk is replaced by a build with another version, and USR2
// execs it in place: the supervisor keeps its pid, the new image adopts
// the workers and replaces them with workers of the new binary, and no
// connection fails or is refused.
func TestE2ESupervisorUpgrade(t *testing.T) {
	t.Parallel()
	bin := loopmxBinary(t)
	dir := t.TempDir()
	exe := filepath.Join(dir, "loopmx")
	copyFile(t, bin, exe)
	next := filepath.Join(dir, "loopmx-next")
	args := []string{"build", "-o", next, "-ldflags", "-X main.version=e2e-next"}
	if e2eRace {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	conf := discardConfig(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	writeFiles(t, conf, map[string]string{"smtp.ini": "listen = " + addr + "\nnodes = 2\ngraceful_timeout = 5s\n"})
	srv, err := launch(t, []string{exe, "-c", conf}, conf, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !srv.waitLog(`"message":"all workers ready"`, 20*time.Second) {
		t.Fatal("workers not ready")
	}
	sup := srv.cmd.Process.Pid
	old := waitChildren(t, sup, 2, 10*time.Second, nil)
	probes := startProbes(addr, 4)
	probes.waitMore(t, 20)

	// A broken binary on disk: refused, the workers stay.
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'not loopmx' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(broken, exe); err != nil {
		t.Fatal(err)
	}
	srv.signal(syscall.SIGUSR2)
	if !srv.waitLog(`"message":"upgrade failed; this binary keeps running"`, 20*time.Second) {
		t.Fatal("no 'upgrade failed' line for a broken binary")
	}
	if countLog(srv, `"message":"upgrade failed`, "not loopmx") != 1 {
		t.Errorf("the failure does not quote the broken binary's error")
	}
	if got := children(sup); !slices.Equal(got, old) {
		t.Errorf("workers %v after a refused upgrade, want %v", got, old)
	}

	// The real upgrade.
	if err := os.Rename(next, exe); err != nil {
		t.Fatal(err)
	}
	if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", sup)); !strings.HasSuffix(target, "(deleted)") {
		t.Logf("before USR2 the supervisor runs %q", target)
	}
	srv.signal(syscall.SIGUSR2)
	if !srv.waitLog(`"message":"upgrade done"`, 60*time.Second) {
		t.Fatal("no 'upgrade done' in 60s")
	}
	if !srv.alive() {
		t.Fatal("the supervisor exited")
	}
	if target, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sup)); err != nil || target != exe {
		t.Errorf("after USR2 pid %d runs %q (%v), want %s", sup, target, err, exe)
	}
	if n := countLog(srv, `"message":"worker adopted"`); n != 2 {
		t.Errorf("%d workers adopted, want 2", n)
	}
	now := waitChildren(t, sup, 2, 20*time.Second, func(k []int) bool {
		return !slices.Contains(k, old[0]) && !slices.Contains(k, old[1])
	})
	if n := countLog(srv, `"message":"loopmx ready"`, `"version":"e2e-next"`); n != 2 {
		t.Errorf("%d workers of the new binary ready, want 2", n)
	}
	probes.waitMore(t, 20)
	probes.halt()
	reportProbe(t, probes, "probes through two USR2", time.Time{})
	t.Logf("supervisor pid %d; workers %v before, %v after", sup, old, now)

	// The new image handles TERM like the old one.
	srv.signal(syscall.SIGTERM)
	if !srv.wait(20 * time.Second) {
		t.Fatal("still running 20s after TERM")
	}
	if srv.exitCode() != 0 {
		t.Errorf("exit code %d after TERM, want 0", srv.exitCode())
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestE2ESupervisorOrphanedWorkersExit: when the supervisor is killed with
// SIGKILL, its workers notice and drain instead of holding the port.
func TestE2ESupervisorOrphanedWorkersExit(t *testing.T) {
	t.Parallel()
	conf := discardConfig(t)
	srv := startSupervised(t, conf, "nodes = 2\ngraceful_timeout = 2s\n")
	kids := waitChildren(t, srv.cmd.Process.Pid, 2, 10*time.Second, nil)
	srv.kill9()
	deadline := time.Now().Add(10 * time.Second)
	for _, k := range kids {
		for !gone(k) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !gone(k) {
			t.Errorf("worker %d still running 10s after its supervisor was killed", k)
			syscall.Kill(k, syscall.SIGKILL)
		}
	}
	if c, err := net.DialTimeout("tcp", srv.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts after the supervisor and its workers are gone", srv.addr)
	}
}

// TestE2ESupervisorUserDrop: started as root with user = nobody, the
// supervisor stays root and its workers run as nobody; they write the
// spool, which nobody owns, as the docs say it must be.
func TestE2ESupervisorUserDrop(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nobody := 65534
	// Everything nobody reads must be reachable for it: a world-readable
	// copy of the binary and config, outside the 0700 test directories.
	dir, err := os.MkdirTemp("", "loopmx-userdrop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf, spool := filepath.Join(dir, "conf"), filepath.Join(dir, "spool")
	for _, d := range []string{conf, spool} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(spool, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "loopmx")
	copyFile(t, loopmxBinary(t), exe)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	writeFiles(t, conf, map[string]string{
		"smtp.ini":    "listen = " + addr + "\nnodes = 2\nuser = nobody\n",
		"plugins":     "rcpt_to.in_host_list\nqueue/maildir\n",
		"host_list":   "example.com\n",
		"maildir.ini": "path = " + spool + "\n",
	})
	srv, err := launch(t, []string{exe, "-c", conf}, conf, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !srv.waitLog(`"message":"all workers ready"`, 20*time.Second) {
		t.Fatal("workers not ready")
	}
	uid := func(pid int) string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "Uid:") {
				return strings.Fields(line)[1]
			}
		}
		return "?"
	}
	sup := srv.cmd.Process.Pid
	if u := uid(sup); u != "0" {
		t.Errorf("supervisor runs as uid %s, want 0", u)
	}
	for _, k := range waitChildren(t, sup, 2, 10*time.Second, nil) {
		if u := uid(k); u != strconv.Itoa(nobody) {
			t.Errorf("worker %d runs as uid %s, want %d", k, u, nobody)
		}
	}
	msg := deliverOne(t, addr, "user-drop")
	findStored(t, spool, "user-drop", msg)
	for _, f := range readMaildir(t, spool, "new") {
		fi, err := os.Stat(filepath.Join(spool, "new", f.name))
		if err == nil && fi.Sys().(*syscall.Stat_t).Uid != uint32(nobody) {
			t.Errorf("new/%s is owned by uid %d, want %d", f.name, fi.Sys().(*syscall.Stat_t).Uid, nobody)
		}
	}
}

// TestE2ESupervisorDoctor: doctor names a kernel setting below what the
// config needs and exits 1.
func TestE2ESupervisorDoctor(t *testing.T) {
	t.Parallel()
	conf := t.TempDir()
	writeFiles(t, conf, map[string]string{"smtp.ini": "nodes = 2\nbacklog = 1048576\n"})
	out, errOut, code := runBinary(t, "doctor", "-c", conf)
	if code != 1 || !strings.Contains(out, "CHANGE  net.core.somaxconn") || !strings.Contains(out, "need >= 1048576 (smtp.ini backlog)") {
		t.Errorf("doctor: exit %d\n%s%s", code, out, errOut)
	}
}

// TestE2ESupervisorFigures measures what the closing note of the
// supervisor reports. It runs only with LOOPMX_FIGURES=1, and is meant to
// run without -race:
//
//	LOOPMX_FIGURES=1 go test -count=1 -run TestE2ESupervisorFigures -v .
func TestE2ESupervisorFigures(t *testing.T) {
	if os.Getenv("LOOPMX_FIGURES") != "1" {
		t.Skip("set LOOPMX_FIGURES=1 to measure")
	}
	if e2eRace {
		t.Log("note: built with -race; the figures are not representative")
	}
	t.Run("spread", func(t *testing.T) {
		for _, c := range []struct {
			single bool
			policy string
		}{{true, "shared"}, {false, "shared"}, {true, "reuseport"}} {
			single := c.single
			conf := discardConfig(t)
			srv := startSupervised(t, conf, fmt.Sprintf("nodes = 4\nsingle_accept = %v\nsched_policy = %s\n", single, c.policy))
			time.Sleep(time.Second)
			if single && c.policy == "shared" {
				rss := func(pid int) string {
					b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
					for _, line := range strings.Split(string(b), "\n") {
						if strings.HasPrefix(line, "VmRSS:") {
							return strings.Join(strings.Fields(line)[1:], " ")
						}
					}
					return "?"
				}
				sup := srv.cmd.Process.Pid
				var ws []string
				for _, k := range children(sup) {
					ws = append(ws, rss(k))
				}
				t.Logf("idle RSS: supervisor %s; workers %v", rss(sup), ws)
			}
			done := 0
			for _, conc := range []int{3000, 500} {
				before := connectionsPerWorker(srv)
				lat := burst(t, srv.addr, 3000, conc)
				done += 3000
				deadline := time.Now().Add(30 * time.Second)
				for countLog(srv, `"message":"connection"`) < done && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				per := connectionsPerWorker(srv)
				lo, hi := 1<<30, 0
				for w := range per {
					per[w] -= before[w]
					lo, hi = min(lo, per[w]), max(hi, per[w])
				}
				ratio := float64(hi) / float64(max(lo, 1))
				t.Logf("single_accept=%v sched_policy=%s: 3000 connects, %d in flight: per worker %v, max/min %.2f; banner p50 %v p99 %v",
					single, c.policy, conc, per, ratio, lat.pct(50), lat.pct(99))
			}
			srv.stop()
		}
	})
	t.Run("banner-p99", func(t *testing.T) {
		for _, ini := range []string{"nodes = 0\n", "nodes = 2\n", "nodes = 2\nloops = 1\n"} {
			for round := 1; round <= 3; round++ {
				conf := discardConfig(t)
				var srv *server
				if strings.HasPrefix(ini, "nodes = 0") {
					srv = startBinary(t, conf, ini)
				} else {
					srv = startSupervised(t, conf, ini)
				}
				time.Sleep(500 * time.Millisecond)
				lat := burst(t, srv.addr, 2000, 2000)
				t.Logf("%s round %d: 2000 connects at once: banner p50 %v p99 %v max %v, failed %d",
					strings.ReplaceAll(strings.TrimSpace(ini), "\n", ", "), round, lat.pct(50), lat.pct(99), lat.pct(100), lat.failed)
				srv.stop()
			}
		}
	})
}

// connectionsPerWorker counts the workers' "connection" log lines (one per
// closed connection) by worker id.
func connectionsPerWorker(srv *server) map[string]int {
	per := map[string]int{"1": 0, "2": 0, "3": 0, "4": 0}
	for _, line := range strings.Split(srv.stderr.String(), "\n") {
		if strings.Contains(line, `"message":"connection"`) {
			if i := strings.Index(line, `"worker":`); i >= 0 {
				per[strings.SplitN(line[i+9:], ",", 2)[0]]++
			}
		}
	}
	return per
}

// latencies are connect-to-banner times of a burst.
type latencies struct {
	d      []time.Duration
	failed int
}

func (l *latencies) pct(p int) time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	i := (len(l.d)*p + 99) / 100
	return l.d[min(max(i-1, 0), len(l.d)-1)].Round(10 * time.Microsecond)
}

// burst opens n connections to addr with at most conc in flight, each
// reading the banner and saying QUIT, and returns the times from the
// start of the dial to the banner.
func burst(t *testing.T, addr string, n, conc int) *latencies {
	t.Helper()
	var mu sync.Mutex
	l := &latencies{}
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			sem <- struct{}{}
			defer func() { <-sem }()
			t0 := time.Now()
			c, err := net.DialTimeout("tcp", addr, 30*time.Second)
			var d time.Duration
			if err == nil {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(c)
				var line string
				line, err = r.ReadString('\n')
				d = time.Since(t0)
				if err == nil && !strings.HasPrefix(line, "220") {
					err = fmt.Errorf("banner %q", line)
				}
				c.Write([]byte("QUIT\r\n"))
				r.ReadString('\n')
				c.Close()
			}
			mu.Lock()
			if err != nil {
				l.failed++
			} else {
				l.d = append(l.d, d)
			}
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	slices.Sort(l.d)
	return l
}
