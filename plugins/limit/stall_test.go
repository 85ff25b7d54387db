package limit_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/queue/maildir"
)

// stallWindow is how long each phase of TestRedisStall counts sessions.
const stallWindow = 2 * time.Second

// stallClients is the number of clients that send mail at once.
const stallClients = 8

// stallConfig is a server with limit on a real Redis (every hook that can
// talk to Redis does: connect, for the rate and the concurrency, and RCPT,
// for the sender rate) and queue/maildir, which needs the workpool too.
func stallConfig(t *testing.T, rs *redistest.Server, fail string) string {
	t.Helper()
	dir := configDir(t, "fail = "+fail+"\nmax_concurrency = 100000\n[rate]\nconn = 100000000/1h\nrcpt_sender = 100000000/1h\n")
	servertest.Write(t, dir, "plugins", "limit\nqueue/maildir\n")
	servertest.Write(t, dir, "maildir.ini", "path = "+filepath.Join(t.TempDir(), "Maildir")+"\n")
	rs.WriteINI(dir)
	return dir
}

// session delivers one message over a new connection and reports what
// went wrong, if anything: the banner must be 220 and the message must
// get 250.
func session(addr string, n int) error {
	nc, err := net.DialTimeout("tcp", addr, servertest.IOTimeout)
	if err != nil {
		return err
	}
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
	for _, s := range steps {
		if s.send != "" {
			if _, err := nc.Write([]byte(s.send + "\r\n")); err != nil {
				return fmt.Errorf("%s: %w", s.send, err)
			}
		}
		got, err := reply()
		if err != nil || !strings.HasPrefix(got, s.want) {
			what := s.send
			if what == "" {
				what = "banner"
			}
			return fmt.Errorf("%s: got %q (%v), want %s", what, got, err, s.want)
		}
	}
	return nil
}

// load runs sessions from stallClients clients until stop is closed. ok
// counts the sessions that delivered; the first failure is kept.
type load struct {
	ok   atomic.Int64
	seq  atomic.Int64
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu   sync.Mutex
	errs []error
}

func startLoad(addr string) *load {
	l := &load{stop: make(chan struct{})}
	for range stallClients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := session(addr, int(l.seq.Add(1))); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
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

// rate counts the sessions delivered during stallWindow, per second.
func (l *load) rate() float64 {
	start, t0 := l.ok.Load(), time.Now()
	time.Sleep(stallWindow) // the measured window, not a wait for a condition
	return float64(l.ok.Load()-start) / time.Since(t0).Seconds()
}

// TestRedisStall is the proof that a stalled Redis does not hold the MX
// hostage: under a steady load through a real server, redis-server is
// stopped with SIGSTOP (it keeps its connections and answers nothing).
// With fail = open every session during the stall still gets its banner
// and its 250; the rates before and during the stall are logged as
// figures. After SIGCONT the counters in Redis move again.
func TestRedisStall(t *testing.T) {
	rs := redistest.Start(t)
	srv := servertest.StartDir(t, stallConfig(t, rs, "open"))
	if err := session(srv.Addr, 0); err != nil {
		t.Fatalf("a session before the load: %v", err)
	}
	l := startLoad(srv.Addr)
	defer l.finish()

	before := l.rate()
	rs.Pause()
	stalled := true
	defer func() {
		if stalled {
			rs.Resume()
		}
	}()
	during := l.rate()
	rs.Resume()
	stalled = false
	t.Logf("sessions/s with %d clients: before the stall %.0f, during it %.0f (%.0f%%)",
		stallClients, before, during, 100*during/before)

	// Redis counts again: the connections per IP move on.
	rc := rs.Client()
	count := func() int64 { n, _ := rc.Get(context.Background(), "limit:conn:127.0.0.1").Int64(); return n }
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
}
