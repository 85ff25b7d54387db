// Package toobusy is the toobusy plugin: it sheds load at the door. Its
// connect hook reads the server's own load (how late the connection's event
// loop runs, how many jobs wait for the workpool) and, when either is over
// its limit, answers 421 4.7.0 and closes before any other plugin spends
// work on the connection, recording why for the results plugin.
//
// The hook runs inline on the event loop and costs two atomic loads and a
// comparison; it must be the first plugin in the plugins file, so that an
// overloaded server does nothing else for the connections it refuses.
package toobusy

import (
	"fmt"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/throttle"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Name is the plugin's name in the plugins file.
const Name = "toobusy"

// Defaults of toobusy.ini.
const (
	// DefaultMaxLag is Haraka's toobusy default: a loop that keeps a new
	// event waiting longer than this is overloaded.
	DefaultMaxLag = 70 * time.Millisecond
	// DefaultMaxQueue 0 leaves the workpool queue unchecked; the pool
	// refuses work itself (421 4.3.2) when its queue is full.
	DefaultMaxQueue = 0
)

func init() { plugins.Register(Name, setup) }

// TooBusy refuses new connections while the server is overloaded.
type TooBusy struct {
	maxLag   time.Duration
	maxQueue int

	// The log lines are rate limited per process, one a second each.
	readingLog throttle.Throttle
	refusalLog throttle.Throttle
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	maxLag := pc.Duration("", "max_lag", DefaultMaxLag)
	maxQueue := pc.Int("", "max_queue", DefaultMaxQueue)
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if maxLag < 0 {
		return nil, fmt.Errorf("config: %s: [main] max_lag: %q must be 0 (off) or more", pc.File(), pc.String("", "max_lag", ""))
	}
	if maxQueue < 0 {
		return nil, fmt.Errorf("config: %s: [main] max_queue: %q must be 0 (off) or more", pc.File(), pc.String("", "max_queue", ""))
	}
	return New(maxLag, maxQueue), nil
}

// New returns the plugin with its limits: maxLag for the event loop's lag
// and maxQueue for the jobs waiting in the workpool queue. Zero turns a
// check off.
func New(maxLag time.Duration, maxQueue int) *TooBusy {
	return &TooBusy{maxLag: maxLag, maxQueue: maxQueue,
		readingLog: throttle.Throttle{Every: time.Second}, refusalLog: throttle.Throttle{Every: time.Second}}
}

// Name implements plugins.Plugin.
func (*TooBusy) Name() string { return Name }

// Connect implements plugins.ConnectHook. It runs inline: the load figures
// are atomics kept by the host.
func (t *TooBusy) Connect(c *plugins.Conn) plugins.Result {
	ld := c.Load()
	now := time.Now()
	if c.Log != nil && c.Log.GetLevel() <= zerolog.DebugLevel {
		if ok, _ := t.readingLog.Allow(now); ok {
			c.Log.Debug().Str("plugin", Name).Dur("loop_lag_ms", ld.LoopLag).Int("pool_queued", ld.PoolQueued).
				Int("pool_busy", ld.PoolBusy).Int("pool_workers", ld.PoolWorkers).Int64("connections", ld.Connections).
				Msg("load")
		}
	}
	var why, figures string
	switch {
	case t.maxLag > 0 && ld.LoopLag > t.maxLag:
		why = "event loop lag"
		figures = why + " " + ld.LoopLag.String() + " over max_lag " + t.maxLag.String()
	case t.maxQueue > 0 && ld.PoolQueued > t.maxQueue:
		why = "workpool queue"
		figures = why + " " + strconv.Itoa(ld.PoolQueued) + " over max_queue " + strconv.Itoa(t.maxQueue)
	default:
		return plugins.NoOpinion()
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: figures})
	if ok, held := t.refusalLog.Allow(now); ok && c.Log != nil {
		c.Log.Info().Str("plugin", Name).Str("reason", why).Int64("refused", held+1).
			Dur("loop_lag_ms", ld.LoopLag).Dur("max_lag_ms", t.maxLag).
			Int("pool_queued", ld.PoolQueued).Int("max_queue", t.maxQueue).
			Msg("too busy: refusing new connections")
	}
	return tooBusy(c.Hostname)
}

// tooBusy is the refusal: RFC 5321 3.8 lets a server that cannot serve a
// client answer 421 at the greeting and close. 4.7.0 (RFC 3463: other or
// undefined security or policy status) is also what loopmx sends for too
// many connections.
func tooBusy(host string) plugins.Result {
	text := "Too busy, try again later"
	if host != "" {
		text = host + " " + text
	}
	return plugins.Result{
		Action: plugins.TempFailDisconnect,
		Reply:  smtpproto.Reply{Code: 421, Enhanced: "4.7.0", Text: text},
	}
}

var _ plugins.ConnectHook = (*TooBusy)(nil)
