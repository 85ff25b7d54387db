package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"loopmx/config"
)

// TestSupervisorStartServeStop: READY=1 once both workers accept, both
// serve the shared socket, STOPPING=1 on TERM, exit 0, no worker left.
func TestSupervisorStartServeStop(t *testing.T) {
	n := listenNotify(t)
	h := newHarness(t, "nodes = 2\n", nil)
	if !waitFor(10*time.Second, func() bool { return n.Index("READY=1", 0) >= 0 }) {
		t.Fatalf("no READY=1; got %q", n.Texts())
	}
	// READY=1 comes after both workers said READY.
	if got := len(h.log.lines("worker ready")); got != 2 {
		t.Errorf("READY=1 sent with %d workers ready, want 2", got)
	}
	seen := map[string]bool{}
	for i := 0; i < 200 && len(seen) < 2; i++ {
		b, err := banner(h.addr)
		if err != nil {
			t.Fatal(err)
		}
		seen[strings.Fields(b)[1]] = true
	}
	if len(seen) != 2 {
		t.Errorf("200 connections were served by %v, want both workers", seen)
	}
	h.sigs <- syscall.SIGTERM
	if !h.wait(10 * time.Second) {
		t.Fatal("supervisor still running 10s after TERM")
	}
	if h.code != 0 {
		t.Errorf("exit code %d, want 0", h.code)
	}
	if n.Index("STOPPING=1", 0) < 0 {
		t.Errorf("no STOPPING=1; got %q", n.Texts())
	}
	if len(h.s.procs) != 0 {
		t.Errorf("%d workers left after the stop", len(h.s.procs))
	}
	if got := len(h.log.lines("worker stopped")); got != 2 {
		t.Errorf("%d 'worker stopped' lines, want 2", got)
	}
	// Nobody holds the socket any more: clients are refused at once.
	if _, err := banner(h.addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after the stop: %v, want connection refused", err)
	}
}

// TestSupervisorReplacesKilledWorker: SIGKILL to a worker is logged with
// the signal, and the worker is back within a second.
func TestSupervisorReplacesKilledWorker(t *testing.T) {
	h := newHarness(t, "nodes = 2\n", nil)
	ready := h.waitLog("worker ready", 2, 10*time.Second)
	victim := num(ready[0], "worker_pid")
	killed := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.waitLog("worker ready", 3, 5*time.Second)
	if d := time.Since(killed); d > time.Second {
		t.Errorf("replacement ready %v after the kill, want within 1s", d)
	}
	exits := h.log.lines("worker exited unexpectedly")
	if len(exits) != 1 || exits[0]["signal"] != "SIGKILL" || num(exits[0], "worker_pid") != victim {
		t.Errorf("exit log = %v, want one line for pid %d with signal SIGKILL", exits, victim)
	}
	for i := 0; i < 20; i++ {
		if _, err := banner(h.addr); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSupervisorBackoff: a worker that keeps dying is restarted later each
// time, while the other keeps serving.
func TestSupervisorBackoff(t *testing.T) {
	t.Setenv("FAKE_CRASH_ID", "2")
	h := newHarness(t, "nodes = 2\n", func(s *sup) { s.cfg.Main.RestartBackoffMax = 400 * time.Millisecond })
	restarts := h.waitLog("restarting worker", 5, 10*time.Second)
	want := []int{100, 200, 400, 400, 400}
	for i, r := range restarts[:5] {
		if num(r, "worker") != 2 || num(r, "delay_ms") != want[i] {
			t.Errorf("restart %d: worker %v delay %vms, want worker 2 delay %dms", i+1, r["worker"], r["delay_ms"], want[i])
		}
	}
	for i := 0; i < 10; i++ {
		b, err := banner(h.addr)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(b, "220 worker=1 ") && !strings.HasPrefix(b, "220 worker=2 ") {
			t.Fatalf("banner %q", b)
		}
	}
}

func TestBackoff(t *testing.T) {
	for _, c := range []struct {
		failures int
		want     time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {9, 30 * time.Second}, {1000, 30 * time.Second}} {
		if got := backoff(c.failures, 100*time.Millisecond, 30*time.Second); got != c.want {
			t.Errorf("backoff(%d) = %v, want %v", c.failures, got, c.want)
		}
	}
}

// prober connects in a loop and records banners and errors until stopped.
type prober struct {
	stop    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	banners map[string]int
	count   atomic.Int64
}

func probe(addr string, clients int) *prober {
	p := &prober{banners: map[string]int{}}
	for i := 0; i < clients; i++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for !p.stop.Load() {
				b, err := banner(addr)
				p.count.Add(1)
				p.mu.Lock()
				if err != nil {
					p.errs = append(p.errs, err)
				} else {
					p.banners[b]++
				}
				p.mu.Unlock()
			}
		}()
	}
	return p
}

func (p *prober) halt() {
	p.stop.Store(true)
	p.wg.Wait()
}

// generations returns how many banners each generation gave.
func (p *prober) generations() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for b, n := range p.banners {
		for _, f := range strings.Fields(b) {
			if strings.HasPrefix(f, "gen=") {
				out[f] += n
			}
		}
	}
	return out
}

// TestSupervisorReloadRolling: HUP replaces both workers one at a time
// while clients connect without a single failure; systemd hears
// RELOADING=1 then READY=1.
func TestSupervisorReloadRolling(t *testing.T) {
	n := listenNotify(t)
	h := newHarness(t, "nodes = 2\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	p := probe(h.addr, 4)
	// The probes are under way before the reload, and go on after it.
	if !waitFor(10*time.Second, func() bool { return p.count.Load() >= 20 }) {
		t.Fatal("the probes made no connections")
	}
	mark := len(n.Texts())
	h.sigs <- syscall.SIGHUP
	h.waitLog("reload done", 1, 20*time.Second)
	h.waitLog("worker stopped", 2, 10*time.Second)
	after := p.count.Load()
	if !waitFor(10*time.Second, func() bool { return p.count.Load() >= after+20 }) {
		t.Error("no connections after the reload")
	}
	p.halt()
	if len(p.errs) > 0 {
		t.Errorf("%d of %d connections failed during the reload, first: %v", len(p.errs), p.count.Load(), p.errs[0])
	}
	gens := p.generations()
	if gens["gen=1"] == 0 || gens["gen=2"] == 0 {
		t.Errorf("banners by generation %v, want both generations", gens)
	}
	r := n.Index("RELOADING=1\nMONOTONIC_USEC=", mark)
	if r < 0 || n.Index("READY=1", r) < 0 {
		t.Errorf("notify messages %q: want RELOADING=1 with MONOTONIC_USEC, then READY=1", n.Texts())
	}
	got, err := banner(h.addr)
	if err != nil || !strings.Contains(got, "gen=2") {
		t.Errorf("after the reload: %q %v, want generation 2", got, err)
	}
}

// TestSupervisorReloadBadConfig: a config error is logged in one line and
// the workers keep running.
func TestSupervisorReloadBadConfig(t *testing.T) {
	h := newHarness(t, "nodes = 2\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	h.writeINI("nodes = 2\nbacklog = lots\n")
	h.sigs <- syscall.SIGHUP
	failed := h.waitLog("reload failed: the config has an error; the workers keep running with the old one", 1, 10*time.Second)
	if e, _ := failed[0]["error"].(string); !strings.Contains(e, "smtp.ini") || !strings.Contains(e, "backlog") {
		t.Errorf("error field %q should name smtp.ini and backlog", e)
	}
	if len(h.log.lines("worker started")) != 2 {
		t.Errorf("workers were started after a failed reload")
	}
	if b, err := banner(h.addr); err != nil || !strings.Contains(b, "gen=1") {
		t.Errorf("after the failed reload: %q %v", b, err)
	}
}

// TestSupervisorReloadAbortsOnFailedWorker: a new worker that dies before
// it is ready stops the rollout; the old workers keep serving.
func TestSupervisorReloadAbortsOnFailedWorker(t *testing.T) {
	t.Setenv("FAKE_FAIL_GEN", "2")
	h := newHarness(t, "nodes = 2\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	h.sigs <- syscall.SIGHUP
	h.waitLog("reload aborted; the workers not yet replaced keep running", 1, 10*time.Second)
	if n := len(h.log.lines("worker stopped")); n != 0 {
		t.Errorf("%d old workers were stopped by an aborted reload", n)
	}
	for i := 0; i < 20; i++ {
		if b, err := banner(h.addr); err != nil || !strings.Contains(b, "gen=1") {
			t.Fatalf("after the aborted reload: %q %v", b, err)
		}
	}
}

// TestSupervisorReloadTimeout: a new worker that never says READY is
// killed after readyTimeout and the reload is aborted.
func TestSupervisorReloadTimeout(t *testing.T) {
	t.Setenv("FAKE_HANG_GEN", "2")
	h := newHarness(t, "nodes = 1\n", func(s *sup) { s.readyTimeout = 300 * time.Millisecond })
	h.waitLog("all workers ready", 1, 10*time.Second)
	h.sigs <- syscall.SIGHUP
	ab := h.waitLog("reload aborted; the workers not yet replaced keep running", 1, 10*time.Second)
	if e, _ := ab[0]["error"].(string); !strings.Contains(e, "not ready in time") {
		t.Errorf("abort error %q", e)
	}
	ex := h.waitLog("worker exited", 1, 5*time.Second)
	if ex[0]["signal"] != "SIGKILL" || num(ex[0], "generation") != 2 {
		t.Errorf("the hung worker's exit: %v", ex[0])
	}
}

// TestSupervisorReloadResizes: nodes changed from 1 to 3 and back to 2.
func TestSupervisorReloadResizes(t *testing.T) {
	h := newHarness(t, "nodes = 1\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	h.writeINI("nodes = 3\n")
	h.sigs <- syscall.SIGHUP
	h.waitLog("reload done", 1, 20*time.Second)
	h.writeINI("nodes = 2\n")
	h.sigs <- syscall.SIGHUP
	h.waitLog("reload done", 2, 20*time.Second)
	// 1 + 3 + 2 started; 1 + 3 stopped.
	h.waitLog("worker stopped", 4, 10*time.Second)
	h.sigs <- syscall.SIGTERM
	h.wait(10 * time.Second)
	if len(h.s.slots) != 2 || h.s.gen != 3 {
		t.Errorf("slots %d generation %d, want 2 and 3", len(h.s.slots), h.s.gen)
	}
}

// TestSupervisorFirstWorkerFails: a worker that cannot start stops the
// supervisor with exit code 1 instead of restarting forever.
func TestSupervisorFirstWorkerFails(t *testing.T) {
	t.Setenv("FAKE_FAIL_GEN", "1")
	h := newHarness(t, "nodes = 2\n", nil)
	if !h.wait(10 * time.Second) {
		t.Fatal("supervisor still running")
	}
	if h.code != 1 {
		t.Errorf("exit code %d, want 1", h.code)
	}
	if len(h.log.lines("workers cannot start; stopping")) != 1 {
		t.Error("no 'workers cannot start' line")
	}
}

// TestSupervisorSecondSignal: workers that ignore TERM are killed at the
// second TERM and the supervisor exits 1 at once.
func TestSupervisorSecondSignal(t *testing.T) {
	t.Setenv("FAKE_IGNORE_TERM", "1")
	h := newHarness(t, "nodes = 2\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	h.sigs <- syscall.SIGTERM
	if h.wait(300 * time.Millisecond) {
		t.Fatal("supervisor exited although its workers ignore TERM")
	}
	h.sigs <- syscall.SIGINT
	if !h.wait(2 * time.Second) {
		t.Fatal("supervisor still running after the second signal")
	}
	if h.code != 1 {
		t.Errorf("exit code %d, want 1", h.code)
	}
	for pid := range h.s.procs {
		if !waitFor(2*time.Second, func() bool { return syscall.Kill(pid, 0) != nil }) {
			t.Errorf("worker %d still alive", pid)
		}
	}
}

// TestSupervisorStopKillsAfterGrace: workers still running after
// graceful_timeout plus the margin are killed, and the exit code is 0.
func TestSupervisorStopKillsAfterGrace(t *testing.T) {
	t.Setenv("FAKE_IGNORE_TERM", "1")
	h := newHarness(t, "nodes = 1\ngraceful_timeout = 200ms\n", func(s *sup) { s.stopMargin = 100 * time.Millisecond })
	h.waitLog("all workers ready", 1, 10*time.Second)
	start := time.Now()
	h.sigs <- syscall.SIGTERM
	if !h.wait(5 * time.Second) {
		t.Fatal("supervisor still running")
	}
	if h.code != 0 {
		t.Errorf("exit code %d, want 0", h.code)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("stopped after %v, before graceful_timeout + margin", d)
	}
	ex := h.log.lines("worker stopped with an error")
	if len(ex) != 1 || ex[0]["signal"] != "SIGKILL" || ex[0]["level"] != "warn" {
		t.Errorf("exit lines %v, want one warning, killed by SIGKILL", ex)
	}
}

// TestSupervisorReuseport: one SO_REUSEPORT socket per worker on the same
// port; both workers serve.
func TestSupervisorReuseport(t *testing.T) {
	h := newHarness(t, "nodes = 2\nsched_policy = reuseport\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	seen := map[string]bool{}
	for i := 0; i < 200 && len(seen) < 2; i++ {
		b, err := banner(h.addr)
		if err != nil {
			t.Fatal(err)
		}
		seen[strings.Fields(b)[1]] = true
	}
	if len(seen) != 2 {
		t.Errorf("connections served by %v, want both workers", seen)
	}
	h.sigs <- syscall.SIGTERM
	h.wait(10 * time.Second)
	if len(h.s.socks.shared) != 0 {
		t.Errorf("shared sockets in reuseport mode")
	}
}

// TestSupervisorWatchdog: WATCHDOG=1 at half of WATCHDOG_USEC.
func TestSupervisorWatchdog(t *testing.T) {
	n := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	h := newHarness(t, "nodes = 1\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	if !waitFor(5*time.Second, func() bool {
		c := 0
		for _, m := range n.Texts() {
			if m == "WATCHDOG=1" {
				c++
			}
		}
		return c >= 3
	}) {
		t.Errorf("fewer than 3 WATCHDOG=1 in 5s: %q", n.Texts())
	}
}

// TestSupervisorNeedsNodes: nodes = 0 is not a supervisor's config.
func TestSupervisorNeedsNodes(t *testing.T) {
	cfg, err := config.Load(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newSup(cfg, Options{}, nil); err == nil || !strings.Contains(err.Error(), "nodes") {
		t.Errorf("newSup with nodes = 0: %v", err)
	}
}

func TestExitFields(t *testing.T) {
	for _, c := range []struct {
		ws     syscall.WaitStatus
		err    error
		status string
	}{
		{syscall.WaitStatus(3 << 8), nil, "exit status 3"},
		{syscall.WaitStatus(syscall.SIGKILL), nil, "killed by SIGKILL"},
		{syscall.WaitStatus(syscall.SIGSEGV | 0x80), nil, "killed by SIGSEGV (core dumped)"},
		{0, errors.New("boom"), "unknown: boom"},
	} {
		if got, _, _ := exitFields(c.ws, c.err); got != c.status {
			t.Errorf("exitFields(%#x, %v) = %q, want %q", uint32(c.ws), c.err, got, c.status)
		}
	}
}

func TestWorkerEnviron(t *testing.T) {
	base := []string{"PATH=/bin", "NOTIFY_SOCKET=/run/x", "WATCHDOG_USEC=1", "LISTEN_FDS=2", "LISTEN_PID=1",
		EnvRole + "=old", envHandoff + "={}", "HOME=/root"}
	got := strings.Join(workerEnviron(base, 3, 7, 2, nil, false, false), " ")
	want := "PATH=/bin HOME=/root " + fmt.Sprintf("%s=worker %s=3 %s=7 %s=2 %s=5", EnvRole, EnvWorkerID, EnvGeneration, EnvListenFDs, EnvReadyFD)
	if got != want {
		t.Errorf("workerEnviron:\n got %s\nwant %s", got, want)
	}
	specs := []config.Listener{{Addr: "127.0.0.1:25"}, {Addr: "[::1]:465", TLS: true}}
	got = strings.Join(workerEnviron(base, 3, 7, 2, specs, true, true), " ")
	if !strings.Contains(got, " "+EnvListenSpec+"=smtp 127.0.0.1:25,smtps [::1]:465 ") || !strings.Contains(got, " "+EnvTicketKeysFD+"=6 ") ||
		!strings.HasSuffix(got, " "+EnvMetricsFD+"=7") {
		t.Errorf("workerEnviron with listeners: %s", got)
	}
}

// TestSupervisorPlannedStopWithError: a worker that exits non-zero when
// it is asked to stop (a reload replacing it, then TERM) is a warning,
// not an info line; one that exits 0 is info.
func TestSupervisorPlannedStopWithError(t *testing.T) {
	t.Setenv("FAKE_TERM_EXIT", "2")
	h := newHarness(t, "nodes = 2\n", nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	h.sigs <- syscall.SIGHUP
	h.waitLog("reload done", 1, 20*time.Second)
	h.waitLog("worker stopped with an error", 2, 10*time.Second)
	h.sigs <- syscall.SIGTERM
	if !h.wait(10 * time.Second) {
		t.Fatal("supervisor still running 10s after TERM")
	}
	ex := h.log.lines("worker stopped with an error")
	if len(ex) != 4 {
		t.Errorf("%d 'worker stopped with an error' lines, want 4 (two replaced by the reload, two stopped by TERM)", len(ex))
	}
	for _, e := range ex {
		if e["level"] != "warn" || num(e, "exit_code") != 2 {
			t.Errorf("line %v, want level warn and exit_code 2", e)
		}
	}
	if n := len(h.log.lines("worker stopped")); n != 0 {
		t.Errorf("%d info lines 'worker stopped' for workers that exited 2", n)
	}
}

// TestSupervisorAllListeners: listen, smtps_listen and proxy_listen are
// all bound by the supervisor and handed to every worker with what each
// socket is. A HUP that changes the addresses keeps the sockets bound at
// start (a warning names what is not bound and what stays open); the new
// workers serve them as before.
func TestSupervisorAllListeners(t *testing.T) {
	smtps, proxy, other := freeAddr(t), freeAddr(t), freeAddr(t)
	ini := "nodes = 2\nsmtps_listen = " + smtps + "\nproxy_listen = " + proxy + "\n"
	h := newHarness(t, ini, nil)
	h.waitLog("all workers ready", 1, 10*time.Second)
	check := func(gen string) {
		t.Helper()
		for addr, kind := range map[string]string{h.addr: "smtp@" + h.addr, smtps: "smtps@" + smtps, proxy: "proxy@" + proxy} {
			for i := 0; i < 10; i++ {
				b, err := banner(addr)
				if err != nil || !strings.HasSuffix(b, " listener="+kind) || !strings.Contains(b, " gen="+gen+" ") {
					t.Fatalf("%s: %q %v, want generation %s serving it as %s", addr, b, err, gen, kind)
				}
			}
		}
	}
	check("1")
	started := h.log.lines("supervisor started")
	if l, _ := started[0]["listen"].([]any); len(l) != 3 {
		t.Errorf("'supervisor started' lists %v, want the three listeners", started[0]["listen"])
	}

	h.writeINI("nodes = 2\nsmtps_listen = " + smtps + "\nproxy_listen = " + other + "\n")
	h.sigs <- syscall.SIGHUP
	h.waitLog("reload done", 1, 20*time.Second)
	w := h.waitLog("listen, smtps_listen or proxy_listen changed: a reload keeps the sockets bound at start (the new workers serve them as before); restart loopmx to bind the new set", 1, time.Second)
	if nb, _ := w[0]["not_bound"].([]any); len(nb) != 1 || nb[0] != "proxy "+other {
		t.Errorf("not_bound %v, want [proxy %s]", w[0]["not_bound"], other)
	}
	if so, _ := w[0]["still_open"].([]any); len(so) != 1 || so[0] != "proxy "+proxy {
		t.Errorf("still_open %v, want [proxy %s]", w[0]["still_open"], proxy)
	}
	if w[0]["level"] != "warn" {
		t.Errorf("the change is logged at %v, want warn", w[0]["level"])
	}
	h.waitLog("worker stopped", 2, 10*time.Second)
	check("2")
	if _, err := banner(other); err == nil {
		t.Errorf("%s (new in the config) accepts after a reload; only a restart binds it", other)
	}
}
