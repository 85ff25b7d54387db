package loop

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The fast fields of the connection and transaction lines read exactly as
// zerolog's own Str and Dur would write them, so that no log reader sees
// a difference.
func TestLogFieldsReadAsZerolog(t *testing.T) {
	zerolog.DurationFieldUnit = time.Millisecond // zerolog's default, said here
	line := func(f func(e *zerolog.Event) *zerolog.Event) string {
		var buf bytes.Buffer
		l := zerolog.New(&buf)
		f(l.Info()).Msg("")
		return buf.String()
	}
	durs := []time.Duration{0, 1, 999, time.Microsecond, 3812390, 16777889, time.Millisecond,
		time.Second, 90 * time.Minute, 1234567891234, -2500 * time.Microsecond, 100 * time.Millisecond}
	for _, d := range durs {
		want := line(func(e *zerolog.Event) *zerolog.Event { return e.Dur("duration_ms", d) })
		got := line(func(e *zerolog.Event) *zerolog.Event { return logMillis(e, "duration_ms", d) })
		if got != want {
			t.Errorf("duration %v: got %s, zerolog writes %s", d, got, want)
		}
	}
	for _, s := range []string{"127.0.0.1", "::1", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0"} {
		ip := netip.MustParseAddr(s)
		want := line(func(e *zerolog.Event) *zerolog.Event { return e.Str("ip", ip.String()) })
		got := line(func(e *zerolog.Event) *zerolog.Event { return logIP(e, "ip", ip) })
		if got != want {
			t.Errorf("address %s: got %s, want %s", s, got, want)
		}
	}
	var zero netip.Addr
	if got, want := line(func(e *zerolog.Event) *zerolog.Event { return logIP(e, "ip", zero) }),
		line(func(e *zerolog.Event) *zerolog.Event { return e.Str("ip", zero.String()) }); got != want {
		t.Errorf("no address: got %s, want %s", got, want)
	}
	for _, s := range []string{"1zd1vawupuj.28l", "quit", "", strings.Repeat("longer than the buffer ", 4)} {
		want := line(func(e *zerolog.Event) *zerolog.Event { return e.Str("conn", s) })
		got := line(func(e *zerolog.Event) *zerolog.Event { return logSafe(e, "conn", s) })
		if got != want {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
}
