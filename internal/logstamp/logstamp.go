// Package logstamp gives log lines their "time" field at a fraction of
// zerolog's own cost. zerolog's Timestamp formats the clock anew for each
// line; at one line per connection and one per transaction that was the
// largest part of a line (docs/benchmarks.md). The field is RFC 3339 to
// the second, in local time, exactly as zerolog writes it by default, so
// the text of a second is made once and reused for every line in it.
package logstamp

import (
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Hook adds "time" to every event of a logger: logger.Hook(logstamp.Hook{})
// in place of logger.With().Timestamp().
type Hook struct{}

// stamp is one second's text, quoted for JSON.
type stamp struct {
	sec  int64
	text []byte
}

var last atomic.Pointer[stamp]

// Run implements zerolog.Hook.
func (Hook) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.RawJSON(zerolog.TimestampFieldName, Quoted(zerolog.TimestampFunc()))
}

// Quoted is t to the second in RFC 3339, quoted for JSON. The text of the
// latest second is kept; every logger of the process shares it.
func Quoted(t time.Time) []byte {
	sec := t.Unix()
	if s := last.Load(); s != nil && s.sec == sec {
		return s.text
	}
	b := append(make([]byte, 0, 32), '"')
	b = t.AppendFormat(b, time.RFC3339)
	b = append(b, '"')
	last.Store(&stamp{sec: sec, text: b})
	return b
}
