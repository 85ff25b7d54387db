package limit_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"loopmx/internal/redisx"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/results"
)

// stallWindow is how long each phase of TestRedisStall counts sessions.
const stallWindow = 2 * time.Second

// stallClients is the number of clients that send mail at once.
const stallClients = 8

// stallConfig is a server with limit on a real Redis (every hook that can
// talk to Redis does: connect, for the rate and the concurrency, and RCPT,
// for the sender rate), the plugins before queue/maildir, which needs the
// workpool too, and the extra files.
func stallConfig(t *testing.T, rs *redistest.Server, fail, plugins string, extra map[string]string) string {
	t.Helper()
	dir := configDir(t, "fail = "+fail+"\nmax_concurrency = 100000\n[rate]\nconn = 100000000/1h\nrcpt_sender = 100000000/1h\n")
	servertest.Write(t, dir, "plugins", plugins+"queue/maildir\n")
	servertest.Write(t, dir, "maildir.ini", "path = "+filepath.Join(t.TempDir(), "Maildir")+"\n")
	for name, text := range extra {
		servertest.Write(t, dir, name, text)
	}
	rs.WriteINI(dir)
	return dir
}

// session delivers one message over a new connection. It reports how
// long the banner took once the connection was made, and what went wrong, if anything: the banner must
// be 220 and the message must get 250.
func session(addr string, n int) (banner time.Duration, err error) {
	nc, err := net.DialTimeout("tcp", addr, servertest.IOTimeout)
	if err != nil {
		return 0, err
	}
	start := time.Now() // the banner's time is the server's, not TCP's

	defer nc.Close()
	nc.SetDeadline(time.Now().Add(servertest.IOTimeout))
	r := bufio.NewReader(nc)
	reply := func() (string, error) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return line, err
			}
			if len(line) < 4 || line[3] != '-' {
				return strings.TrimRight(line, "\r\n"), nil
			}
		}
	}
	steps := []struct{ send, want string }{
		{"", "220 "},
		{"EHLO client.test", "250 "},
		{"MAIL FROM:<load@example.org>", "250 "},
		{fmt.Sprintf("RCPT TO:<user%d@example.com>", n), "250 "},
		{"DATA", "354 "},
		{"Subject: stall\r\n\r\nmessage " + fmt.Sprint(n) + "\r\n.", "250 "},
		{"QUIT", "221 "},
	}
	for i, s := range steps {
		if s.send != "" {
			if _, err := nc.Write([]byte(s.send + "\r\n")); err != nil {
				return banner, fmt.Errorf("%s: %w", s.send, err)
			}
		}
		got, err := reply()
		if i == 0 {
			banner = time.Since(start)
		}
		if err != nil || !strings.HasPrefix(got, s.want) {
			what := s.send
			if what == "" {
				what = "banner"
			}
			return banner, fmt.Errorf("%s: got %q (%v), want %s", what, got, err, s.want)
		}
	}
	return banner, nil
}

// straddled is the phase of the sessions that began in one phase and
// ended in the next.
const straddled = -1

// load runs sessions from stallClients clients until finish. It counts
// the sessions delivered, keeps the failures, and the banner times of the
// sessions of each phase.
type load struct {
	ok    atomic.Int64
	seq   atomic.Int64
	phase atomic.Int32
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu      sync.Mutex
	errs    []error
	banners map[int32][]time.Duration
}

func startLoad(addr string) *load {
	l := &load{stop: make(chan struct{}), banners: map[int32][]time.Duration{}}
	for range stallClients {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				phase := l.phase.Load()
				banner, err := session(addr, int(l.seq.Add(1)))
				if l.phase.Load() != phase {
					phase = straddled
				}
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, fmt.Errorf("phase %d: %w", phase, err))
				} else {
					l.banners[phase] = append(l.banners[phase], banner)
				}
				l.mu.Unlock()
				if err == nil {
					l.ok.Add(1)
				}
			}
		})
	}
	return l
}

// failures returns the failed sessions so far.
func (l *load) failures() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// finish stops the clients once their sessions are over.
func (l *load) finish() {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// measure starts phase and counts the sessions delivered during
// stallWindow, per second.
func (l *load) measure(phase int32) float64 {
	l.phase.Store(phase)
	start, t0 := l.ok.Load(), time.Now()
	time.Sleep(stallWindow) // the measured window, not a wait for a condition
	return float64(l.ok.Load()-start) / time.Since(t0).Seconds()
}

// bannerFigures describes the banner times of the sessions begun in phase:
// median, 99th percentile and longest.
func (l *load) bannerFigures(phase int32) string {
	l.mu.Lock()
	b := slices.Clone(l.banners[phase])
	l.mu.Unlock()
	if len(b) == 0 {
		return "no banner"
	}
	slices.Sort(b)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
	return fmt.Sprintf("banner p50 %s p99 %s max %s", ms(b[len(b)/2]), ms(b[len(b)*99/100]), ms(b[len(b)-1]))
}

// TestRedisStall is the proof that a stalled Redis does not hold the MX
// hostage: under a steady load through a real server, redis-server is
// stopped with SIGSTOP (it keeps its connections and answers nothing).
// With fail = open every session during the stall still gets its banner
// and its 250, and the operator reads one line saying the breaker opened
// and, after SIGCONT, one saying it closed; then the counters in Redis
// move again. The rates before and during the stall, and the banner
// times, are logged as figures.
func TestRedisStall(t *testing.T) {
	for _, tc := range []struct {
		name, plugins string
		extra         map[string]string
	}{
		{"limit", "limit\n", nil},
		{"limit+results", "limit\nresults\n", map[string]string{"results.ini": "redis_publish = true\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := redistest.Start(t)
			dir := stallConfig(t, rs, "open", tc.plugins, tc.extra)
			srv := servertest.StartDir(t, dir)
			client, _, err := redisx.Open(servertest.LoadDir(t, dir)) // the server's own
			if err != nil {
				t.Fatal(err)
			}
			defer redisx.Release(client)
			if _, err := session(srv.Addr, 0); err != nil {
				t.Fatalf("a session before the load: %v", err)
			}
			l := startLoad(srv.Addr)
			defer l.finish()

			before := l.measure(1)
			_, busy, slow := client.Refused()
			rs.Pause()
			stalled := true
			defer func() {
				if stalled {
					rs.Resume()
				}
			}()
			during := l.measure(2)
			rs.Resume()
			stalled = false
			l.phase.Store(3)
			// The hooks answered without Redis before the stall are a figure,
			// not an assertion: whether a call outlasts slow_call depends on
			// the machine's load (TestCallsInTimeNeverBusy in redisx shows
			// the rule itself).
			t.Logf("sessions/s with %d clients: before the stall %.0f (%s), during it %.0f (%s): %.0f%%; "+
				"sessions across a change of phase: %s; hooks answered busy/slow before the stall: %d/%d",
				stallClients, before, l.bannerFigures(1), during, l.bannerFigures(2), 100*during/before,
				l.bannerFigures(straddled), busy, slow)

			servertest.Eventually(t, poll, "the breaker closes after SIGCONT", func() bool {
				return srv.Log.Count("circuit closed") == 1
			})
			rc := rs.Client()
			count := func() int64 { n, _ := rc.Get(context.Background(), "limit:conn:{127.0.0.1}").Int64(); return n }
			seen := count()
			servertest.Eventually(t, poll, "the connection counter in Redis moves after SIGCONT", func() bool {
				return count() > seen+stallClients
			})
			l.finish()
			if errs := l.failures(); len(errs) > 0 {
				t.Fatalf("%d sessions failed, the first: %v", len(errs), errs[0])
			}
			if during == 0 {
				t.Fatal("no session was delivered during the stall")
			}
			if n := srv.Log.Count("circuit open: calls fail at once"); n != 1 {
				t.Errorf("the stall logged %d circuit open lines, want 1:\n%s", n, srv.Log)
			}
		})
	}
}

// TestRedisStallFailClosed: with fail = closed a stalled Redis refuses:
// the RCPT that finds Redis stalled gets 451 4.3.0 once slow_call has
// passed; once that call has timed out the breaker is open, and the next
// RCPT gets 451 and a new connection 421 4.3.0 without anything waiting
// for Redis. After SIGCONT a probe closes the breaker and mail is
// accepted again. How long each refusal took is logged as a figure.
func TestRedisStallFailClosed(t *testing.T) {
	rs := redistest.Start(t)
	srv := servertest.StartDir(t, stallConfig(t, rs, "closed", "limit\n", nil))
	if _, err := session(srv.Addr, 0); err != nil {
		t.Fatalf("a session before the stall: %v", err)
	}
	c := dialer.Hello(t, srv.Addr)
	c.Cmd("MAIL FROM:<s@example.org>", "250")

	rs.Pause()
	defer rs.Resume()
	timed := func(f func()) time.Duration { t0 := time.Now(); f(); return time.Since(t0) }
	first := timed(func() { c.Cmd("RCPT TO:<a@example.com>", "451 4.3.0") })
	servertest.Eventually(t, poll, "the stalled call times out and opens the breaker", func() bool {
		return srv.Log.Count("circuit open: calls fail at once") == 1
	})
	second := timed(func() { c.Cmd("RCPT TO:<b@example.com>", "451 4.3.0") })
	var refusals []time.Duration
	for range 5 {
		refusals = append(refusals, timed(func() {
			nc, banner := dialer.Greet(t, srv.Addr)
			if banner != "421 4.3.0 Service temporarily unavailable, try again later" {
				t.Fatalf("a connection during the stall: %q, want 421 4.3.0", banner)
			}
			nc.ExpectEOF()
		}))
	}
	t.Logf("fail = closed on a stalled Redis: the first RCPT answered in %v (slow_call), "+
		"with the breaker open the next RCPT in %v, new connections refused in %v",
		first.Round(time.Millisecond), second.Round(time.Microsecond), refusals)
	if n := srv.Log.Count("circuit open: calls fail at once"); n != 1 {
		t.Errorf("the stall logged %d circuit open lines, want 1:\n%s", n, srv.Log)
	}

	rs.Resume()
	servertest.Eventually(t, poll, "mail is accepted again after SIGCONT", func() bool {
		_, err := session(srv.Addr, 1)
		return err == nil
	})
	c.Cmd("RCPT TO:<c@example.com>", "250")
	c.Quit()
}
