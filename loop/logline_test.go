package loop

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/logstamp"
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

// TestLinesReadAsZerolog: a connection or transaction line written by the
// loop itself is byte for byte the line zerolog writes for the same
// values, with the logger's context and time; a line with a value that
// needs escaping is left to zerolog.
func TestLinesReadAsZerolog(t *testing.T) {
	at := time.Date(2026, 12, 2, 16, 37, 54, 0, time.Local)
	zerolog.TimestampFunc = func() time.Time { return at }
	defer func() { zerolog.TimestampFunc = time.Now }()
	for _, stamped := range []bool{true, false} {
		var viaZerolog, viaLoop bytes.Buffer
		base := zerolog.New(&viaZerolog).With().Int("pid", 7129).Int("worker", 2).Logger()
		if stamped {
			base = base.Hook(logstamp.Hook{})
		}
		batch := &logBatch{out: &viaLoop, whole: true}
		o := newLineOut(base, batch)
		if o == nil || o.stamped != stamped {
			t.Fatalf("stamped %v: no line writer (%+v)", stamped, o)
		}
		conns := []connFields{
			{id: "1zd1vawupuj.28l", ip: netip.MustParseAddr("127.0.0.9"), helo: "loopmx-bench.test", txs: 1, end: "quit", dur: 3812390},
			{id: "x.1", ip: netip.MustParseAddr("2001:db8::5"), errs: 3, end: "too many errors", dur: 0},
		}
		for _, f := range conns {
			viaZerolog.Reset()
			viaLoop.Reset()
			f.log(base.Info())
			if !o.connection(&f, at) {
				t.Fatalf("connection %+v refused", f)
			}
			batch.flush()
			if viaLoop.String() != viaZerolog.String() {
				t.Errorf("connection line:\n loop    %s zerolog %s", viaLoop.String(), viaZerolog.String())
			}
		}
		txs := []txFields{
			{id: "1zd1vawupuj.28l.1", ip: netip.MustParseAddr("127.0.0.9"), helo: "loopmx-bench.test", from: "bench@loopmx.test",
				rcpts: []string{"a@example.com", "b@example.com"}, size: 1101, result: "queued", code: 250, refused: []string{}, dur: 16777889},
			{id: "x.1.2", ip: netip.MustParseAddr("192.0.2.1"), result: "reset", refused: []string{"rcpt 550 rcpt_to.in_host_list"}},
		}
		for _, f := range txs {
			viaZerolog.Reset()
			viaLoop.Reset()
			f.log(base.Info())
			if !o.transaction(&f, at) {
				t.Fatalf("transaction %+v refused", f)
			}
			batch.flush()
			if viaLoop.String() != viaZerolog.String() {
				t.Errorf("transaction line:\n loop    %s zerolog %s", viaLoop.String(), viaZerolog.String())
			}
		}
	}
	o := newLineOut(zerolog.New(&bytes.Buffer{}), &logBatch{})
	for _, helo := range []string{`a"b`, "a\\b", "caf\u00e9", "a\x01"} {
		if o.connection(&connFields{helo: helo, ip: netip.MustParseAddr("127.0.0.1")}, at) {
			t.Errorf("HELO %q written without escaping", helo)
		}
	}
	if o.transaction(&txFields{rcpts: []string{"ok@x", "\u00fc@x"}, ip: netip.MustParseAddr("127.0.0.1")}, at) {
		t.Error("a recipient that needs escaping was written as it is")
	}
	if newLineOut(zerolog.New(&bytes.Buffer{}).Level(zerolog.WarnLevel), &logBatch{}) != nil {
		t.Error("a logger above info got a line writer")
	}
}
