// Package breaker is a circuit breaker for the network dependencies of
// loopmx plugins (Redis, and later DNS): once a dependency times out, or
// fails a number of times in a row, callers get an immediate "down"
// answer for a back-off period instead of each waiting for a timeout of
// their own.
//
// A Breaker has three states. Closed: calls go through; a timeout opens
// it at once, other errors open it after Failures in a row. Open: Begin
// refuses every call with ErrOpen until the back-off has passed. Half
// open: the first Begin after the back-off is let through as the probe,
// every other call is still refused; a probe that succeeds closes the
// breaker, one that fails opens it again for twice the back-off, up to
// MaxBackoff.
//
// Opening and closing are logged once each, at levels error and info; a
// failed probe ("circuit still open") at most once a minute, so a long
// outage writes about one line a minute. Going half open is not logged:
// the probe's outcome is. The package knows nothing of Redis: the
// caller decides which errors are the dependency's fault (a reply that
// says "no" is a success for the breaker) and which are timeouts.
package breaker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/throttle"
)

// These are the defaults of Options.
const (
	DefaultFailures   = 3
	DefaultBackoff    = time.Second
	DefaultMaxBackoff = 30 * time.Second
)

// ErrOpen is what Begin answers while the breaker is open (or half open
// with its probe under way): the dependency is taken to be down.
var ErrOpen = errors.New("circuit open")

// State is where a Breaker stands.
type State int32

// These are the states of a Breaker.
const (
	Closed State = iota
	Open
	HalfOpen
)

// String names the state as the log does.
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Options tune a Breaker; a zero field takes its default.
type Options struct {
	// Failures is the number of failed calls in a row, none of them a
	// timeout, that opens the breaker. A timeout opens it at once.
	Failures int
	// Backoff is how long the breaker stays open the first time;
	// each failed probe doubles it, up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
}

// stillDownEvery is the least time between two "still down" lines.
const stillDownEvery = time.Minute

// Breaker guards calls to one dependency. It is safe for concurrent use;
// Begin costs one atomic load while the breaker is closed.
type Breaker struct {
	name string
	opt  Options
	now  func() time.Time

	state    atomic.Int32
	epoch    atomic.Uint64 // counts the changes between closed and open
	until    atomic.Int64  // open: when a probe may go, Unix ns
	failures atomic.Int32  // failed calls in a row while closed
	log      atomic.Pointer[zerolog.Logger]

	// mu serialises the changes of state.
	mu        sync.Mutex
	backoff   time.Duration // the current open period
	since     time.Time     // when the breaker last opened from closed
	probes    int           // failed probes in this outage
	stillDown throttle.Throttle
}

// New returns a closed Breaker for the dependency name ("redis
// 10.0.0.5:6379"), which its log lines carry as "dependency".
func New(name string, o Options) *Breaker {
	if o.Failures < 1 {
		o.Failures = DefaultFailures
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.MaxBackoff < o.Backoff {
		o.MaxBackoff = max(o.Backoff, DefaultMaxBackoff)
	}
	return &Breaker{name: name, opt: o, now: time.Now, backoff: o.Backoff,
		stillDown: throttle.Throttle{Every: stillDownEvery}}
}

// SetLogger sets where the breaker logs its changes of state, unless a
// logger was set before; a nil logger is ignored. Until one is set the
// state still moves but nothing is written.
func (b *Breaker) SetLogger(l *zerolog.Logger) {
	if l != nil && b.log.Load() == nil {
		b.log.CompareAndSwap(nil, l)
	}
}

// State reports the breaker's state.
func (b *Breaker) State() State { return State(b.state.Load()) }

// Ready reports, without changing anything, whether Begin would let a
// call through now: the breaker is closed, or open with its back-off
// over (the call would be the probe). A caller uses it to decide where
// to run the call; Begin still decides whether it runs.
func (b *Breaker) Ready() bool {
	switch State(b.state.Load()) {
	case Closed:
		return true
	case Open:
		return b.now().UnixNano() >= b.until.Load()
	}
	return false
}

// Call is one call that Begin let through. Its outcome must be reported
// with Done, exactly once.
type Call struct {
	b     *Breaker
	epoch uint64
	probe bool
}

// Begin asks to make a call. It returns ErrOpen, at once, while the
// dependency is taken to be down; otherwise the caller makes the call and
// reports it with Done.
func (b *Breaker) Begin() (Call, error) {
	epoch := b.epoch.Load()
	switch State(b.state.Load()) {
	case Closed:
		return Call{b: b, epoch: epoch}, nil
	case HalfOpen:
		return Call{}, ErrOpen
	}
	if b.now().UnixNano() < b.until.Load() {
		return Call{}, ErrOpen
	}
	// The back-off is over: the first caller to move the state becomes
	// the probe.
	if b.state.CompareAndSwap(int32(Open), int32(HalfOpen)) {
		return Call{b: b, epoch: epoch, probe: true}, nil
	}
	if State(b.state.Load()) == Closed {
		return Call{b: b, epoch: b.epoch.Load()}, nil
	}
	return Call{}, ErrOpen
}

// Done reports the call's outcome: err is nil when the dependency
// answered (whatever the answer), otherwise the failure, which opens the
// breaker at once when Timeout(err) holds.
func (c Call) Done(err error) {
	b := c.b
	if b == nil {
		return
	}
	if err == nil && !c.probe {
		// The common case, without the lock.
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	log := b.log.Load()
	switch {
	case c.probe && err == nil:
		downFor := now.Sub(b.since)
		probes := b.probes
		b.failures.Store(0)
		b.probes, b.backoff = 0, b.opt.Backoff
		b.epoch.Add(1)
		b.state.Store(int32(Closed))
		if log != nil {
			log.Info().Str("dependency", b.name).Str("breaker", Closed.String()).Dur("down_for_ms", downFor).
				Int("failed_probes", probes).Msg("circuit closed: calls go through again")
		}
	case c.probe:
		b.probes++
		b.backoff = min(2*b.backoff, b.opt.MaxBackoff)
		b.until.Store(now.Add(b.backoff).UnixNano())
		b.state.Store(int32(Open))
		if ok, held := b.stillDown.Allow(now); ok && log != nil {
			log.Warn().Str("dependency", b.name).Str("breaker", Open.String()).Err(err).
				Dur("backoff_ms", b.backoff).Int("failed_probes", b.probes).Int64("held", held).
				Msg("circuit still open: the probe failed")
		}
	case State(b.state.Load()) != Closed || c.epoch != b.epoch.Load():
		// A call begun before the breaker last opened or closed: only the
		// probe decides, and a stall that a probe has seen end since does
		// not open the breaker again.
	default:
		n := b.failures.Add(1)
		timeout := Timeout(err)
		if !timeout && int(n) < b.opt.Failures {
			return
		}
		b.failures.Store(0)
		b.since = now
		b.backoff = b.opt.Backoff
		b.probes = 0
		b.until.Store(now.Add(b.backoff).UnixNano())
		b.epoch.Add(1)
		b.state.Store(int32(Open))
		if log != nil {
			log.Error().Str("dependency", b.name).Str("breaker", Open.String()).Err(err).
				Bool("timeout", timeout).Int32("failures", n).Dur("backoff_ms", b.backoff).
				Msg("circuit open: calls fail at once")
		}
	}
}

// timeoutError marks an error as a timeout for Timeout.
type timeoutError struct{ error }

func (timeoutError) Timeout() bool   { return true }
func (e timeoutError) Unwrap() error { return e.error }

// AsTimeout marks err as a timeout, for a failure that Timeout would not
// recognise (a pool of connections that had none free in time, say).
func AsTimeout(err error) error {
	if err == nil {
		return nil
	}
	return timeoutError{err}
}

// Timeout reports whether err is a timeout: a context deadline, a
// net.Error that says so, or an error marked by AsTimeout.
func Timeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
