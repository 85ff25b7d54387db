package limit_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"loopmx/internal/breaker"
	"loopmx/internal/redisx"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/internal/testlog"
	"loopmx/plugins"
)

// redisChain builds limit alone on the real Redis rs, with the extra
// redis.ini lines, and opens the same shared client for the test to look
// at (released when the test ends).
func redisChain(t *testing.T, rs *redistest.Server, limitINI string, redisINI ...string) (*plugins.Chain, *redisx.Client) {
	t.Helper()
	dir := configDir(t, limitINI)
	servertest.Write(t, dir, "plugins", "limit\n")
	rs.WriteINI(dir, redisINI...)
	ch, err := servertest.BuildDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	client, ok, err := redisx.Open(servertest.LoadDir(t, dir))
	if err != nil || !ok {
		t.Fatalf("redisx.Open: %v, %v", ok, err)
	}
	t.Cleanup(func() { redisx.Release(client) })
	return ch, client
}

// TestCloseTwice: closing limit a second time neither panics nor hands
// the shared Redis client back twice (which would close it under the
// other plugins that use it).
func TestCloseTwice(t *testing.T) {
	rs := redistest.Start(t)
	ch, client := redisChain(t, rs, "max_concurrency = 5\n")
	var logBuf testlog.Buffer
	if got, _ := run(t, ch, newConn("192.0.2.1", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("connect: %q", got)
	}
	for i := range 2 {
		if err := ch.Close(); err != nil {
			t.Fatalf("Close %d: %v", i+1, err)
		}
	}
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("the shared client after limit closed twice: %v", err)
	}
}

// TestAnswersInlineWhenRedisCannotTakeTheCall: with Redis stalled,
// while max_inflight hooks have waited for it longer than slow_call, the
// next connect or RCPT hook does not go
// to the workpool: it answers at once on the event loop as fail says.
// One line says the budget is spent; Redis is not logged as unavailable.
func TestAnswersInlineWhenRedisCannotTakeTheCall(t *testing.T) {
	rs := redistest.Start(t)
	// A long read timeout keeps the first calls waiting for as long as
	// the test needs.
	ch, client := redisChain(t, rs, "fail = closed\nmax_concurrency = 50\n[rate]\nrcpt_sender = 100/1h\n",
		"read_timeout = 30s", "max_inflight = 2", "slow_call = 300ms")
	var logBuf testlog.Buffer
	if got, _ := run(t, ch, newConn("192.0.2.1", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("connect with Redis up: %q", got)
	}

	rs.Pause()
	resumed := false
	defer func() {
		if !resumed {
			rs.Resume()
		}
	}()
	var wg sync.WaitGroup
	for range 2 {
		c := newConn("192.0.2.1", &testlog.Buffer{})
		call := &plugins.Call{Hook: plugins.HookConnect}
		if _, next, done := ch.Step(c, call, 0); done {
			t.Fatal("connect with room in the budget did not go to the workpool")
		} else {
			wg.Go(func() { ch.RunOne(c, call, next) })
		}
	}
	servertest.Eventually(t, 5*time.Millisecond, "two calls wait for the stalled Redis longer than slow_call", func() bool {
		return client.Inflight() == 2 && errors.Is(client.Ready(nil), redisx.ErrBusy)
	})
	for _, h := range []plugins.Hook{plugins.HookConnect, plugins.HookRcpt} {
		c := newConn("192.0.2.1", &logBuf)
		c.BeginTx("s@example.org", time.Now())
		res, _, done := ch.Step(c, &plugins.Call{Hook: h, Arg: "r@example.com"}, 0)
		if !done {
			t.Fatalf("%s with max_inflight calls in flight went to the workpool", h)
		}
		want := 451
		if h == plugins.HookConnect {
			want = 421
		}
		if rep := plugins.ReplyFor(h, res); rep.Code != want || rep.Enhanced != "4.3.0" {
			t.Errorf("%s with max_inflight calls in flight: %d %s, want %d 4.3.0", h, rep.Code, rep.Enhanced, want)
		}
	}
	if n := logBuf.Count("redis calls at max_inflight"); n != 1 {
		t.Errorf("two hooks over the budget logged %d lines, want 1:\n%s", n, logBuf.String())
	}
	if logBuf.Count("redis unavailable") > 0 {
		t.Errorf("a busy Redis was logged as unavailable:\n%s", logBuf.String())
	}

	rs.Resume()
	resumed = true
	wg.Wait()
	servertest.Eventually(t, 5*time.Millisecond, "the calls end", func() bool { return client.Inflight() == 0 })
	if _, _, done := ch.Step(newConn("192.0.2.1", &logBuf), &plugins.Call{Hook: plugins.HookConnect}, 0); done {
		t.Fatal("connect with the budget free again did not go to the workpool")
	}
}

// TestAnswersInlineWhileTheBreakerIsOpen: once a call timed out on a
// stalled Redis, limit's hooks answer inline, fail = open letting the
// connection through, until a probe finds Redis back.
func TestAnswersInlineWhileTheBreakerIsOpen(t *testing.T) {
	rs := redistest.Start(t)
	ch, client := redisChain(t, rs, "fail = open\nmax_concurrency = 50\n", "read_timeout = 100ms", "breaker_backoff = 1h")
	var logBuf testlog.Buffer
	rs.Pause()
	defer rs.Resume()
	first := newConn("192.0.2.1", &logBuf)
	if got, _ := run(t, ch, first, plugins.HookConnect, ""); got != "" {
		t.Fatalf("connect on a stalled Redis with fail = open: %q", got)
	}
	servertest.Eventually(t, 5*time.Millisecond, "the first call times out and opens the breaker", func() bool {
		return client.BreakerState() == breaker.Open
	})
	for range 100 {
		c := newConn("192.0.2.1", &logBuf)
		res, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0)
		if !done || res.Action != plugins.Continue {
			t.Fatalf("connect with the breaker open: done %v, %v; want answered inline, let through", done, res.Action)
		}
	}
	if n := logBuf.Count("circuit open: calls fail at once"); n != 1 {
		t.Errorf("logged %d circuit open lines, want 1:\n%s", n, logBuf.String())
	}
	if n := logBuf.Count("redis unavailable"); n != 1 {
		t.Errorf("logged %d redis unavailable lines for 101 connections, want 1:\n%s", n, logBuf.String())
	}
}
