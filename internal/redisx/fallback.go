package redisx

import (
	"errors"

	"loopmx/plugins"
)

// Fallback is how the hook of a plugin answers when Redis could not be
// asked: the plugin's fail setting (open lets the command through,
// closed answers 451 4.3.0) and its DownLogger. It also carries the
// verdict of the plugin's CallBlocker to the hook, which must then answer
// without Redis: the budget may have room a microsecond later, and a hook
// on the event loop must never call Redis.
type Fallback struct {
	Plugin string
	Closed bool
	Down   *DownLogger
}

// note is the connection note that carries a Defer to the hook.
func (f *Fallback) note() string { return f.Plugin + ".redis_down" }

// Defer leaves err (ErrDown or ErrBusy from Client.Ready) for the hook
// that runs next, inline, on c.
func (f *Fallback) Defer(c *plugins.Conn, err error) { c.SetNote(f.note(), err) }

// Deferred returns, and clears, what Defer left for this call; nil when
// the hook may call Redis.
func (f *Fallback) Deferred(c *plugins.Conn) error {
	err, _ := c.Note(f.note()).(error)
	if err != nil {
		c.SetNote(f.note(), nil)
	}
	return err
}

// Answer answers a call that failed, or was not made, with err: it
// records an err finding "<subject>: redis unavailable" ("redis busy"
// for ErrBusy and ErrSlow, which redisx logs itself; any other error goes
// to the DownLogger) and returns Result.
func (f *Fallback) Answer(c *plugins.Conn, subject string, err error) plugins.Result {
	msg := "redis unavailable"
	if errors.Is(err, ErrBusy) {
		msg = "redis busy"
	} else {
		f.Down.Down(c.Log, err)
	}
	c.Record(plugins.Finding{Plugin: f.Plugin, Outcome: plugins.Err, Message: subject + ": " + msg})
	return f.Result()
}

// Result is what fail says: no opinion when open, 451 4.3.0 when closed.
func (f *Fallback) Result() plugins.Result {
	if f.Closed {
		return plugins.InternalError()
	}
	return plugins.NoOpinion()
}
