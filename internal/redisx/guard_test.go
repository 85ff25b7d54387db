package redisx_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/breaker"
	"loopmx/internal/redisx"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/testlog"
)

// openGuarded opens a client on srv with the extra redis.ini lines, and a
// logger whose lines the test reads.
func openGuarded(t *testing.T, srv *redistest.Server, extra ...string) (*redisx.Client, *zerolog.Logger, *testlog.Buffer) {
	t.Helper()
	dir := t.TempDir()
	srv.WriteINI(dir, extra...)
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, ok, err := redisx.Open(cfg)
	if err != nil || !ok {
		t.Fatalf("Open: %v, %v", ok, err)
	}
	t.Cleanup(func() { redisx.Release(c) })
	buf := &testlog.Buffer{}
	log := zerolog.New(buf)
	return c, &log, buf
}

// incr is a hook's call: INCR of a test key.
func incr(c *redisx.Client, log *zerolog.Logger) error {
	return c.Do(log, func(ctx context.Context) error { return c.Incr(ctx, "redisx:guard").Err() })
}

// count is the number of log lines holding msg.
func count(buf *testlog.Buffer, msg string) int {
	return strings.Count(buf.String(), `"message":"`+msg)
}

// TestBreakerOnAStalledRedis stops redis-server with SIGSTOP under a
// client: the first call is given up after slow_call (ErrSlow) and, once
// it fails with the read timeout on its own, it opens the breaker; the
// calls after that are answered ErrDown without going to Redis; once Redis goes on, a probe closes the breaker and calls work
// again. Each change of state is logged once.
func TestBreakerOnAStalledRedis(t *testing.T) {
	srv := redistest.Start(t)
	// The back-off is long beside the calls made while the breaker is
	// open, so that none of them can fall after it (a loaded machine
	// made a 100 ms back-off too short for 1000 calls).
	c, log, buf := openGuarded(t, srv, "read_timeout = 200ms", "breaker_backoff = 2s", "breaker_backoff_max = 4s")
	if err := incr(c, log); err != nil {
		t.Fatalf("INCR with Redis up: %v", err)
	}
	if err := c.Ready(log); err != nil {
		t.Fatalf("Ready with Redis up: %v", err)
	}

	srv.Pause()
	defer srv.Resume()
	if err := incr(c, log); !errors.Is(err, redisx.ErrSlow) {
		t.Fatalf("the first INCR on a stalled Redis: %v, want ErrSlow", err)
	}
	eventually(t, "the first INCR times out and opens the breaker", func() bool {
		return c.BreakerState() == breaker.Open
	})
	for range 100 {
		if err := incr(c, log); !errors.Is(err, redisx.ErrDown) {
			t.Fatalf("INCR with the breaker open: %v, want ErrDown", err)
		}
	}
	if err := c.Ready(log); !errors.Is(err, redisx.ErrDown) {
		t.Fatalf("Ready with the breaker open: %v, want ErrDown", err)
	}
	// Probes fail while Redis stays stopped; the breaker stays open.
	eventually(t, "a probe fails on the stalled Redis", func() bool {
		incr(c, log)
		return count(buf, "circuit still open") == 1
	})

	srv.Resume()
	eventually(t, "a probe closes the breaker once Redis goes on", func() bool {
		return incr(c, log) == nil
	})
	requireState(t, c, breaker.Closed, "after a good probe")
	if n, err := c.Get(context.Background(), "redis:none").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET of a missing key: %q, %v", n, err)
	}
	if o, cl := count(buf, "circuit open"), count(buf, "circuit closed"); o != 1 || cl != 1 {
		t.Errorf("the outage logged %d open and %d closed lines, want one each:\n%s", o, cl, buf)
	}
}

// requireState fails the test unless c's breaker is in state want.
func requireState(t *testing.T, c *redisx.Client, want breaker.State, when string) {
	t.Helper()
	if got := c.BreakerState(); got != want {
		t.Fatalf("%s the breaker is %v, want %v", when, got, want)
	}
}

// eventually polls cond until it holds, failing the test after 20 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAnswersAreNotFailures: Redis answering "no" (a missing key, an
// error reply of a script) is Redis working; the breaker stays closed
// however often it happens.
func TestAnswersAreNotFailures(t *testing.T) {
	srv := redistest.Start(t)
	c, log, _ := openGuarded(t, srv, "breaker_failures = 1")
	bad := redis.NewScript(`return redis.error_reply('ERR limit says no')`)
	for range 5 {
		err := c.Do(log, func(ctx context.Context) error { return bad.Run(ctx, c, nil).Err() })
		if err == nil || !strings.Contains(err.Error(), "limit says no") {
			t.Fatalf("a script's error reply: %v", err)
		}
		err = c.Do(log, func(ctx context.Context) error { return c.Get(ctx, "redisx:missing").Err() })
		if !errors.Is(err, redis.Nil) {
			t.Fatalf("GET of a missing key: %v", err)
		}
	}
	requireState(t, c, breaker.Closed, "after error replies")
}

// TestRefusedOpensAfterARow: with Redis gone (connection refused, no
// timeout) the breaker opens after breaker_failures calls in a row.
func TestRefusedOpensAfterARow(t *testing.T) {
	srv := redistest.Start(t)
	c, log, buf := openGuarded(t, srv, "breaker_failures = 2", "breaker_backoff = 1h")
	srv.Kill()
	if err := incr(c, log); err == nil || c.BreakerState() != breaker.Closed {
		t.Fatalf("first refused call: %v, breaker %v; want an error and closed", err, c.BreakerState())
	}
	if err := incr(c, log); err == nil || errors.Is(err, redisx.ErrDown) || c.BreakerState() != breaker.Open {
		t.Fatalf("second refused call: %v, breaker %v; want the error and open", err, c.BreakerState())
	}
	if err := incr(c, log); !errors.Is(err, redisx.ErrDown) {
		t.Fatalf("third call: %v, want ErrDown", err)
	}
	if !strings.Contains(buf.String(), `"failures":2`) {
		t.Errorf("the open line does not count 2 failures:\n%s", buf)
	}
}

// TestInflightBudget: once max_inflight calls have each waited longer
// than slow_call, the next call of a hook is answered ErrBusy without
// running, Ready says so too, and one line says it however many are
// refused; a keeper's Background call is not counted. When a call ends,
// its place is free again.
func TestInflightBudget(t *testing.T) {
	srv := redistest.Start(t)
	c, log, buf := openGuarded(t, srv, "max_inflight = 2", "slow_call = 1ms")
	release, wg := holdCalls(t, c, log, 2)
	eventually(t, "the two calls count as slow", func() bool {
		return errors.Is(c.Ready(nil), redisx.ErrBusy)
	})
	ran := false
	for range 100 {
		err := c.Do(log, func(context.Context) error { ran = true; return nil })
		if !errors.Is(err, redisx.ErrBusy) {
			t.Fatalf("a third call: %v, want ErrBusy", err)
		}
	}
	if ran {
		t.Fatal("a call over the budget ran")
	}
	if err := c.Ready(log); !errors.Is(err, redisx.ErrBusy) {
		t.Fatalf("Ready at the budget: %v, want ErrBusy", err)
	}
	if n := count(buf, "redis calls at max_inflight"); n != 1 {
		t.Fatalf("101 refusals logged %d lines, want 1:\n%s", n, buf)
	}
	if _, busy, _ := c.Refused(); busy < 101 {
		t.Errorf("Refused counts %d busy answers, want at least 101", busy)
	}
	if err := c.Background(log, func(ctx context.Context) error { return c.Ping(ctx).Err() }); err != nil {
		t.Fatalf("a Background call at the budget: %v", err)
	}
	close(release)
	wg.Wait()
	eventually(t, "the held calls end", func() bool { return c.Inflight() == 0 })
	// The place is free: Ready says so, and a call runs. (A call that asks
	// Redis would have to answer within slow_call, 1 ms here, which a
	// loaded machine or a cluster client's first slot lookup does not
	// promise: that made this test fail once.)
	if err := c.Ready(log); err != nil {
		t.Fatalf("Ready once the budget is free: %v", err)
	}
	ran = false
	if err := c.Do(log, func(context.Context) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("a call once the budget is free: ran %v, %v", ran, err)
	}
	requireState(t, c, breaker.Closed, "after busy answers")
}

// TestCallsInTimeNeverBusy: calls that have not waited slow_call do not
// count, however many run at once: a healthy Redis under load is never
// answered busy.
func TestCallsInTimeNeverBusy(t *testing.T) {
	srv := redistest.Start(t)
	c, log, buf := openGuarded(t, srv, "max_inflight = 1", "slow_call = 1h")
	release, wg := holdCalls(t, c, log, 3)
	defer func() { close(release); wg.Wait() }()
	if err := c.Ready(log); err != nil {
		t.Fatalf("Ready with 3 calls in flight, none slow: %v", err)
	}
	if err := incr(c, log); err != nil {
		t.Fatalf("a fourth call, none slow: %v", err)
	}
	if c.Inflight() != 3 || count(buf, "max_inflight") != 0 {
		t.Fatalf("Inflight = %d, log:\n%s", c.Inflight(), buf)
	}
}

// TestSlowCallLetsTheHookGo: a hook waits at most slow_call for Redis;
// the call it gave up goes on, counted in flight, and its outcome still
// reaches the breaker and Redis.
func TestSlowCallLetsTheHookGo(t *testing.T) {
	srv := redistest.Start(t)
	c, log, buf := openGuarded(t, srv, "slow_call = 10ms")
	release := make(chan struct{})
	finished := make(chan struct{})
	err := c.Do(log, func(ctx context.Context) error {
		defer close(finished)
		<-release
		return c.Set(ctx, "redisx:late", "1", time.Minute).Err()
	})
	if !errors.Is(err, redisx.ErrSlow) || !errors.Is(err, redisx.ErrBusy) {
		t.Fatalf("a call that outlasts slow_call: %v, want ErrSlow (an ErrBusy)", err)
	}
	if c.Inflight() != 1 {
		t.Fatalf("Inflight = %d while the given-up call runs", c.Inflight())
	}
	close(release)
	<-finished
	eventually(t, "the late call ends", func() bool { return c.Inflight() == 0 })
	if v, err := c.Get(context.Background(), "redisx:late").Result(); err != nil || v != "1" {
		t.Fatalf("the late SET: %q, %v", v, err)
	}
	if _, _, slow := c.Refused(); slow != 1 || count(buf, "redis did not answer within slow_call") != 1 {
		t.Fatalf("Refused counts %d slow answers, log:\n%s", slow, buf)
	}
}

// TestPanicInACall: a call that panics is an error for its hook, not a
// crash of the process nor a Redis failure.
func TestPanicInACall(t *testing.T) {
	srv := redistest.Start(t)
	c, log, _ := openGuarded(t, srv, "breaker_failures = 1")
	err := c.Do(log, func(context.Context) error { panic("plugin bug") })
	if err == nil || !strings.Contains(err.Error(), "plugin bug") {
		t.Fatalf("a panicking call: %v", err)
	}
	if c.BreakerState() != breaker.Closed || c.Inflight() != 0 {
		t.Fatalf("after a panic: breaker %v, %d in flight", c.BreakerState(), c.Inflight())
	}
}

// holdCalls starts n hooks' calls that wait, in flight, until release is
// closed; it returns when all have begun.
func holdCalls(t *testing.T, c *redisx.Client, log *zerolog.Logger, n int) (chan struct{}, *sync.WaitGroup) {
	t.Helper()
	release := make(chan struct{})
	started := make(chan struct{}, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			err := c.Do(log, func(ctx context.Context) error {
				started <- struct{}{}
				<-release
				return c.Ping(ctx).Err()
			})
			if err != nil && !errors.Is(err, redisx.ErrSlow) {
				t.Errorf("a held call: %v", err)
			}
		})
	}
	for range n {
		<-started
	}
	if c.Inflight() != n {
		t.Fatalf("Inflight = %d with %d calls waiting", c.Inflight(), n)
	}
	return release, &wg
}

// TestProcessTotals: the metrics endpoint's counts of Redis calls follow
// what hooks got (answered, failed, refused while the breaker is open,
// given up after slow_call), show the breaker's state, and do not go
// down when the client is released.
func TestProcessTotals(t *testing.T) {
	srv := redistest.Start(t)
	c, log, _ := openGuarded(t, srv, "read_timeout = 200ms", "breaker_backoff = 5s")
	before := redisx.ProcessTotals()
	for range 3 {
		if err := incr(c, log); err != nil {
			t.Fatal(err)
		}
	}
	srv.Pause()
	defer srv.Resume()
	if err := incr(c, log); !errors.Is(err, redisx.ErrSlow) {
		t.Fatalf("INCR on a stalled Redis: %v, want ErrSlow", err)
	}
	eventually(t, "the stalled call times out and opens the breaker", func() bool {
		return c.BreakerState() == breaker.Open
	})
	if err := incr(c, log); !errors.Is(err, redisx.ErrDown) {
		t.Fatalf("INCR with the breaker open: %v, want ErrDown", err)
	}
	during := redisx.ProcessTotals()
	if d := (redisx.Totals{OK: during.OK - before.OK, Failed: during.Failed - before.Failed, Down: during.Down - before.Down, Slow: during.Slow - before.Slow}); d.OK != 3 || d.Failed != 1 || d.Down != 1 || d.Slow != 1 {
		t.Errorf("the calls counted %+v, want 3 ok, 1 error, 1 down, 1 slow", d)
	}
	if during.Breakers[breaker.Open] < 1 {
		t.Errorf("breakers by state %v, want one open", during.Breakers)
	}
	redisx.Release(c)
	if after := redisx.ProcessTotals(); after.OK < during.OK || after.Down < during.Down {
		t.Errorf("the totals went down when the client was released: %+v, then %+v", during, after)
	}
}
