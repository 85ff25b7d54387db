package logstamp

import (
	"bytes"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A line stamped by the hook reads as one stamped by zerolog's Timestamp,
// in the same second, and a new second gets its own text.
func TestHookWritesZerologsTime(t *testing.T) {
	at := time.Date(2026, 12, 2, 16, 37, 54, 999_000_000, time.Local)
	zerolog.TimestampFunc = func() time.Time { return at }
	defer func() { zerolog.TimestampFunc = time.Now }()
	var ours, theirs bytes.Buffer
	zl := zerolog.New(&theirs).With().Timestamp().Logger()
	zl.Info().Msg("x")
	hl := zerolog.New(&ours).Hook(Hook{})
	hl.Info().Msg("x")
	if ours.String() != theirs.String() {
		t.Fatalf("hook wrote %s, zerolog writes %s", ours.String(), theirs.String())
	}
	if got, want := string(Quoted(at.Add(time.Millisecond))), `"`+at.Add(time.Second).Format(time.RFC3339)+`"`; got != want {
		t.Fatalf("next second: %s, want %s", got, want)
	}
}
