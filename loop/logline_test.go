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

// TestLinesReadAsZerolog: a connection or transaction line written by the
// loop itself is byte for byte the line zerolog writes for the same
// values (Str, Dur in milliseconds, an address's String), with the
// logger's context and time; a line with a value that needs escaping, or
// an address that is missing or has a zone, is left to zerolog.
func TestLinesReadAsZerolog(t *testing.T) {
	at := time.Date(2026, 12, 2, 16, 37, 54, 0, time.Local)
	zerolog.TimestampFunc = func() time.Time { return at }
	defer func() { zerolog.TimestampFunc = time.Now }()
	zerolog.DurationFieldUnit = time.Millisecond // zerolog's default, said here

	durs := []time.Duration{0, 1, 999, time.Microsecond, 3812390, 16777889, time.Millisecond,
		time.Second, 90 * time.Minute, 1234567891234, -2500 * time.Microsecond, 100 * time.Millisecond}
	ips := []string{"127.0.0.1", "::1", "2001:db8::1", "::ffff:192.0.2.1"}
	ids := []string{"1zd1vawupuj.28l", "x.1", strings.Repeat("longer than the buffer ", 4)}
	var conns []connFields
	var txs []txFields
	for i, d := range durs {
		ip := netip.MustParseAddr(ips[i%len(ips)])
		id := ids[i%len(ids)]
		conns = append(conns, connFields{id: id, ip: ip, helo: "loopmx-bench.test", txs: i, errs: i % 3, end: "too many errors", dur: d})
		txs = append(txs, txFields{id: id + ".1", ip: ip, helo: "client.test", from: "bench@loopmx.test",
			rcpts: []string{"a@example.com", "b@example.com"}[:i%3], size: 1101, result: "queued", code: 250,
			refused: []string{"rcpt 550 rcpt_to.in_host_list"}[:i%2], dur: d})
	}

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
		same := func(what string, zl func(*zerolog.Event), loop func() bool) {
			t.Helper()
			viaZerolog.Reset()
			viaLoop.Reset()
			zl(base.Info())
			if !loop() {
				t.Fatalf("%s refused", what)
			}
			batch.flush()
			if viaLoop.String() != viaZerolog.String() {
				t.Errorf("%s:\n loop    %s zerolog %s", what, viaLoop.String(), viaZerolog.String())
			}
		}
		for _, f := range conns {
			same("connection line", f.log, func() bool { return o.connection(&f, at) })
		}
		for _, f := range txs {
			same("transaction line", f.log, func() bool { return o.transaction(&f, at) })
		}
	}

	o := newLineOut(zerolog.New(&bytes.Buffer{}), &logBatch{})
	for _, helo := range []string{`a"b`, "a\\b", "caf\u00e9", "a\x01"} {
		if o.connection(&connFields{helo: helo, ip: netip.MustParseAddr("127.0.0.1")}, at) {
			t.Errorf("HELO %q written without escaping", helo)
		}
	}
	for _, ip := range []netip.Addr{{}, netip.MustParseAddr("fe80::1%eth0")} {
		if o.connection(&connFields{ip: ip}, at) {
			t.Errorf("address %q written as AppendTo would", ip.String())
		}
	}
	if o.transaction(&txFields{rcpts: []string{"ok@x", "\u00fc@x"}, ip: netip.MustParseAddr("127.0.0.1")}, at) {
		t.Error("a recipient that needs escaping was written as it is")
	}
	if newLineOut(zerolog.New(&bytes.Buffer{}).Level(zerolog.WarnLevel), &logBatch{}) != nil {
		t.Error("a logger above info got a line writer")
	}
}
