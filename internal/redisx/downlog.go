package redisx

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"loopmx/internal/logstamp"
	"loopmx/internal/throttle"
)

// DownInterval is the least time between two "redis unavailable" lines of
// one DownLogger.
const DownInterval = time.Minute

// DownLogger reports a Redis outage for one plugin without flooding the
// log: the first failed call logs "redis unavailable" with the error,
// later failures log again at most once per DownInterval with the number
// of failures in between, and the first success after an outage logs
// "redis available again" once. A plugin keeps one DownLogger for the
// life of the process, not one per connection or message.
//
// DownLogger is safe for concurrent use. Up costs one atomic load while
// Redis is fine, so a plugin may call it after every command.
type DownLogger struct {
	plugin string
	now    func() time.Time

	down atomic.Bool

	mu       sync.Mutex
	since    time.Time // start of the outage
	last     time.Time // when "redis unavailable" was last logged
	failures int       // failures since that line
	total    int       // failures in this outage
}

// NewDownLogger returns a DownLogger whose lines carry plugin=name.
func NewDownLogger(name string) *DownLogger {
	return &DownLogger{plugin: name, now: time.Now}
}

// Down records a failed Redis call. It logs at level error when this is
// the first failure of an outage or DownInterval has passed since the
// last line. log may be nil (nothing is written, the state still moves).
func (d *DownLogger) Down(log *zerolog.Logger, err error) {
	d.mu.Lock()
	now := d.now()
	first := !d.down.Load()
	if first {
		d.down.Store(true)
		d.since = now
		d.total = 0
	}
	d.failures++
	d.total++
	if !first && now.Sub(d.last) < DownInterval {
		d.mu.Unlock()
		return
	}
	n := d.failures
	d.failures = 0
	d.last = now
	since := d.since
	d.mu.Unlock()
	if log != nil {
		log.Error().Str("plugin", d.plugin).Err(err).Int("failures", n).Time("down_since", since).
			Msg("redis unavailable")
	}
}

// Up records a successful Redis call. After an outage it logs "redis
// available again" once, at level info, with the outage's length and
// number of failed calls.
func (d *DownLogger) Up(log *zerolog.Logger) {
	if !d.down.Load() {
		return
	}
	d.mu.Lock()
	if !d.down.Load() {
		d.mu.Unlock()
		return
	}
	d.down.Store(false)
	downFor := d.now().Sub(d.since)
	total := d.total
	d.failures = 0
	d.mu.Unlock()
	if log != nil {
		log.Info().Str("plugin", d.plugin).Dur("down_for_ms", downFor).Int("failures", total).
			Msg("redis available again")
	}
}

// IsDown reports whether the last call recorded was a failure.
func (d *DownLogger) IsDown() bool { return d.down.Load() }

// libraryLogger receives go-redis' own messages (a failed dial, a
// connection dropped from the pool). They go to standard error as
// zerolog lines at level warn, like the rest of loopmx's log, at most one
// per DownInterval: the plugins' DownLoggers already report an outage.
type libraryLogger struct {
	log      zerolog.Logger
	throttle throttle.Throttle
}

func (l *libraryLogger) Printf(_ context.Context, format string, v ...any) {
	if ok, dropped := l.throttle.Allow(time.Now()); ok {
		l.log.Warn().Str("component", "go-redis").Int64("dropped", dropped).Msg(fmt.Sprintf(format, v...))
	}
}

var quietOnce sync.Once

// quietLibrary routes go-redis' messages through a libraryLogger; it runs
// once per process, when the first client is made.
func quietLibrary() {
	quietOnce.Do(func() {
		redis.SetLogger(&libraryLogger{
			log:      zerolog.New(os.Stderr).With().Int("pid", os.Getpid()).Logger().Hook(logstamp.Hook{}),
			throttle: throttle.Throttle{Every: DownInterval},
		})
	})
}
