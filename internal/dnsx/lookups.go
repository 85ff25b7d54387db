package dnsx

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/throttle"
	"loopmx/plugins"
)

// Lookups is a plugin's side of the DNS layer: the process's resolver,
// the budget of one hook's lookups (the plugin's lookup_timeout), and
// the warn line of its failed lookups. A plugin embeds it, and gets
// Close (plugins.Closer) from it.
type Lookups struct {
	// DNS is the shared resolver; DNS.CacheOnly() is for the event loop.
	DNS *Resolver
	// Budget bounds the lookups of one hook.
	Budget time.Duration

	plugin, line string
	failLog      throttle.Throttle
}

// NewLookups gives plugin the resolver r (from Open or Shared) and the
// budget; line is the message of its failure log line ("DNSBL lookup
// failed").
func NewLookups(r *Resolver, budget time.Duration, plugin, line string) *Lookups {
	return &Lookups{DNS: r, Budget: budget, plugin: plugin, line: line, failLog: throttle.Throttle{Every: time.Minute}}
}

// CheckBudget checks a plugin's lookup_timeout, read from pc as budget:
// more than 0, and less than the plugin's timeout, which the chain gives
// the whole hook.
func CheckBudget(pc *config.PluginConfig, budget time.Duration) error {
	if budget > 0 && budget < pc.Timeout() {
		return nil
	}
	return fmt.Errorf("config: %s: [main] lookup_timeout: %q must be more than 0 and less than timeout (%s), the chain's limit for the whole hook",
		pc.File(), pc.String("", "lookup_timeout", budget.String()), pc.Timeout())
}

// Context is the context of one hook's lookups: it ends with the budget.
func (l *Lookups) Context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), l.Budget)
}

// LogFailure logs a failed lookup at level warn, at most one line a
// minute with the count of the ones left out since the last: when the
// resolver is down, every connection fails the same way. key and value
// name what was looked up ("ip", "192.0.2.1").
func (l *Lookups) LogFailure(log *zerolog.Logger, key, value string, err error) {
	if log == nil {
		return
	}
	if ok, held := l.failLog.Allow(time.Now()); ok {
		log.Warn().Str("plugin", l.plugin).Str(key, value).Int64("suppressed", held).Err(err).Msg(l.line)
	}
}

// Close hands the resolver back (Release).
func (l *Lookups) Close() error {
	Release(l.DNS)
	return nil
}

// Inline is a plugin's BlocksConn on the DNS cache: it runs check on the
// cache-only view, on the event loop. When check found every answer it
// needed (it returns ErrNotCached otherwise), Inline hands its outcome
// to the hook in a connection note and reports false: the hook need not
// go to the workpool, and takes the outcome with Handed (an answer might
// expire in between, and the hook must then not ask the network on the
// event loop).
func Inline[T any](l *Lookups, c *plugins.Conn, check func(*Resolver) (T, error)) (blocks bool) {
	l.DNS.SetLogger(c.Log)
	v, err := check(l.DNS.CacheOnly())
	if err == ErrNotCached {
		return true
	}
	c.SetNote(l.plugin+".inline", v)
	return false
}

// Handed returns the outcome Inline found for this call of the hook, and
// forgets it; ok is false when the hook must look it up.
func Handed[T any](l *Lookups, c *plugins.Conn) (v T, ok bool) {
	key := l.plugin + ".inline"
	if v, ok = c.Note(key).(T); ok {
		c.SetNote(key, nil)
	}
	return v, ok
}
