package redisx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"loopmx/internal/breaker"
	"loopmx/internal/throttle"
)

// ErrDown is what Ready, Do and Background answer, without contacting
// Redis, while the client's circuit breaker is open: Redis timed out, or
// failed breaker_failures times in a row, and the back-off is not over.
var ErrDown = fmt.Errorf("redis: %w", breaker.ErrOpen)

// ErrBusy is what Ready and Do answer, without contacting Redis, when
// max_inflight calls of hooks have waited longer than slow_call and are
// still in flight.
var ErrBusy = errors.New("redis: max_inflight calls already in flight")

// ErrSlow is what Do answers when Redis did not answer within slow_call:
// the hook goes on without the answer, the call finishes on its own
// goroutine. errors.Is(ErrSlow, ErrBusy) holds: for a plugin both mean
// "Redis is slow, answer as fail says".
var ErrSlow = fmt.Errorf("redis: no answer within slow_call (%w)", ErrBusy)

// busyEvery is the least time between two "redis calls at max_inflight"
// lines of one client.
const busyEvery = time.Minute

// Client is the process's Redis client for one config directory. Besides
// the go-redis client it carries the two guards every plugin using it
// shares, so that Redis never holds the server hostage:
//
//   - a circuit breaker (internal/breaker): after a timeout, or
//     breaker_failures errors in a row, calls are answered ErrDown at
//     once for a back-off period, then one probe call goes through;
//   - a bounded wait: a hook waits at most slow_call for Redis (Do
//     answers ErrSlow then, and the call finishes on a goroutine of its
//     own), so a Redis call never holds a workpool worker that the queue
//     plugins need for longer than that;
//   - an in-flight budget: once max_inflight calls made by hooks have
//     each waited longer than slow_call and are still in flight, the
//     next one is answered ErrBusy at once, without even a trip through
//     the workpool. Calls that Redis answers in time never count,
//     however many run at once: a healthy Redis under load is never
//     answered busy.
//
// Hooks call Redis through Do; goroutines of a plugin's own (a keeper
// that refreshes keys) through Background. A plugin's ConnBlocker asks
// Ready, so that a hook that would be refused anyway answers inline on
// the event loop instead of going to the workpool.
type Client struct {
	redis.UniversalClient

	breaker   *breaker.Breaker
	max       int
	slow      time.Duration
	inflight  inflight
	busy      throttle.Throttle
	slowLog   throttle.Throttle
	refused   [2]atomic.Int64 // answers ErrDown, ErrBusy
	calls     [2]atomic.Int64 // calls Redis answered, calls that failed
	slowCalls atomic.Int64    // answers ErrSlow
	log       atomic.Pointer[zerolog.Logger]
}

func newClient(s Settings) *Client {
	return &Client{
		UniversalClient: s.newUniversal(),
		breaker: breaker.New("redis "+s.Where(), breaker.Options{
			Failures:   s.BreakerFailures,
			Backoff:    s.BreakerBackoff,
			MaxBackoff: s.BreakerBackoffMax,
		}),
		max:     s.MaxInflight,
		slow:    s.SlowCall,
		busy:    throttle.Throttle{Every: busyEvery},
		slowLog: throttle.Throttle{Every: busyEvery},
	}
}

// setLogger keeps the first non-nil logger a caller passes: the client
// and its breaker log there, also for calls that pass none.
func (c *Client) setLogger(log *zerolog.Logger) *zerolog.Logger {
	if log == nil {
		return c.log.Load()
	}
	if c.log.Load() == nil {
		c.log.CompareAndSwap(nil, log)
		c.breaker.SetLogger(log)
	}
	return log
}

// Ready reports whether a hook's call would go to Redis now: nil when
// the breaker lets calls through and fewer than max_inflight calls have
// waited longer than slow_call, otherwise ErrDown or ErrBusy. It changes
// nothing and answers in well under a microsecond, for a
// plugins.ConnBlocker: on an error the hook should answer at once, on
// the event loop, as its fail setting says.
func (c *Client) Ready(log *zerolog.Logger) error {
	log = c.setLogger(log)
	if !c.breaker.Ready() {
		c.refused[0].Add(1)
		return ErrDown
	}
	if c.inflight.slowCount(time.Now().Add(-c.slow)) >= c.max {
		c.logBusy(log)
		return ErrBusy
	}
	return nil
}

// Do runs fn, which talks to Redis, as a hook's call: it is counted in
// flight and reports to the breaker. When the breaker is open, or
// max_inflight calls have waited longer than slow_call, it returns
// ErrDown or ErrBusy at once without running fn. Otherwise fn runs on a
// goroutine of its own and Do returns its error, or ErrSlow once
// slow_call has passed without it: the hook then goes on, and fn
// finishes (or times out) by itself, still counted in flight until then.
// fn must therefore hand its results over only through what it returns
// before slow_call, or through state of its own that it locks; after
// ErrSlow the caller must not read what fn writes.
func (c *Client) Do(log *zerolog.Logger, fn func(ctx context.Context) error) error {
	log = c.setLogger(log)
	now := time.Now()
	slot, ok := c.inflight.enter(now, now.Add(-c.slow), c.max)
	if !ok {
		c.logBusy(log)
		return ErrBusy
	}
	done := make(chan error, 1)
	go func() {
		err := c.call(fn)
		c.inflight.leave(slot) // before Do returns with err
		done <- err
	}()
	wait := time.NewTimer(c.slow)
	defer wait.Stop()
	select {
	case err := <-done:
		return err
	case <-wait.C:
		c.slowCalls.Add(1)
		if log != nil {
			if ok, held := c.slowLog.Allow(time.Now()); ok {
				log.Warn().Str("component", "redis").Dur("slow_call_ms", c.slow).Int64("held", held).
					Msg("redis did not answer within slow_call: the hook answers without redis, as its fail setting says")
			}
		}
		return ErrSlow
	}
}

// Background runs fn like Do, for a goroutine of the plugin's own rather
// than a hook: it reports to the breaker (and is refused ErrDown while it
// is open) but does not count toward max_inflight.
func (c *Client) Background(log *zerolog.Logger, fn func(ctx context.Context) error) error {
	c.setLogger(log)
	return c.call(fn)
}

// call runs fn under the breaker. A panic in fn (a plugin's bug, not
// Redis' fault) becomes an error, so that it neither kills the process
// from Do's goroutine nor leaves the breaker waiting for its probe.
func (c *Client) call(fn func(ctx context.Context) error) (err error) {
	bc, err := c.breaker.Begin()
	if err != nil {
		c.refused[0].Add(1)
		return ErrDown
	}
	panicked := true
	defer func() {
		if panicked {
			err = fmt.Errorf("redis: the call panicked: %v", recover())
			bc.Done(nil)
		}
	}()
	err = fn(context.Background())
	panicked = false
	f := failure(err)
	bc.Done(f)
	if f == nil {
		c.calls[0].Add(1)
	} else {
		c.calls[1].Add(1)
	}
	return err
}

// failure is what err tells the breaker about Redis: nil when Redis
// answered, whatever it answered (redis.Nil, an error reply of a script)
// or when the client was closed by this process; the error, marked as a
// timeout when no pooled connection came free in time, otherwise.
func failure(err error) error {
	var reply redis.Error
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, redis.ErrClosed):
		return nil
	case errors.Is(err, redis.ErrPoolTimeout):
		return breaker.AsTimeout(err)
	case errors.As(err, &reply) && !breaker.Timeout(err):
		return nil
	}
	return err
}

// logBusy says, at most once a minute per client, that hooks answer
// without Redis because max_inflight calls are in flight.
func (c *Client) logBusy(log *zerolog.Logger) {
	c.refused[1].Add(1)
	if log == nil {
		return
	}
	if ok, held := c.busy.Allow(time.Now()); ok {
		log.Warn().Str("component", "redis").Int("max_inflight", c.max).Int64("held", held).
			Dur("slow_call_ms", c.slow).
			Msg("redis calls at max_inflight: hooks answer without redis, as their fail setting says")
	}
}

// BreakerState reports the state of the client's circuit breaker.
func (c *Client) BreakerState() breaker.State { return c.breaker.State() }

// Inflight reports how many calls of hooks are waiting for Redis now.
func (c *Client) Inflight() int { return c.inflight.slowCount(time.Now().Add(time.Hour)) }

// inflight keeps the start times of the hooks' calls in flight. They are
// few (at most one per workpool worker), so a locked scan of a short
// slice is cheaper than anything cleverer.
type inflight struct {
	mu     sync.Mutex
	starts []int64 // Unix ns; 0 is a free slot
}

// enter takes a slot for a call starting at now, unless max calls began
// before slowBefore; it returns the slot to leave.
func (f *inflight) enter(now, slowBefore time.Time, max int) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	free := -1
	if f.slowLocked(slowBefore.UnixNano(), &free) >= max {
		return 0, false
	}
	if free < 0 {
		free = len(f.starts)
		f.starts = append(f.starts, 0)
	}
	f.starts[free] = now.UnixNano()
	return free, true
}

// leave frees the slot of a call that ended.
func (f *inflight) leave(slot int) {
	f.mu.Lock()
	f.starts[slot] = 0
	f.mu.Unlock()
}

// slowCount counts the calls in flight that began before before.
func (f *inflight) slowCount(before time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slowLocked(before.UnixNano(), nil)
}

// slowLocked counts the calls that began before before and, when free
// is not nil, finds a free slot; f.mu is held.
func (f *inflight) slowLocked(before int64, free *int) int {
	n := 0
	for i, s := range f.starts {
		switch {
		case s == 0:
			if free != nil && *free < 0 {
				*free = i
			}
		case s < before:
			n++
		}
	}
	return n
}

// Refused reports how many times, since the client was made, Ready, Do
// or Background answered ErrDown (down) and ErrBusy (busy) instead of
// letting a call go to Redis, and how many times Do stopped waiting for
// a call with ErrSlow (slow).
func (c *Client) Refused() (down, busy, slow int64) {
	return c.refused[0].Load(), c.refused[1].Load(), c.slowCalls.Load()
}
