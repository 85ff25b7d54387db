package loop

import (
	"bytes"
	"net/netip"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/logstamp"
)

// appendMillis appends d in milliseconds as zerolog's Dur writes it with
// its millisecond unit: to the nanosecond, without trailing zeros.
func appendMillis(b []byte, d time.Duration) []byte {
	if d < 0 {
		b = append(b, '-')
		d = -d
	}
	b = strconv.AppendUint(b, uint64(d/time.Millisecond), 10)
	frac := uint64(d % time.Millisecond)
	if frac == 0 {
		return b
	}
	var digits [7]byte // ".dddddd"
	digits[0] = '.'
	for i := 6; i > 0; i-- {
		digits[i] = byte('0' + frac%10)
		frac /= 10
	}
	n := 7
	for digits[n-1] == '0' {
		n--
	}
	return append(b, digits[:n]...)
}

// lineOut writes the connection and transaction lines of an event loop
// straight into its batch (logbatch.go), without a zerolog event: at one
// of each per session, zerolog's escaping of every key and value was most
// of a line's cost. head is what every line of the loop's logger starts
// with (the level and the logger's context fields, each with its comma),
// rendered once by zerolog itself; stamped says the logger adds the time.
// A line whose client-given values (HELO, sender, recipients) would need
// escaping goes through zerolog as before.
type lineOut struct {
	head    []byte
	stamped bool
	batch   *logBatch
}

// newLineOut renders l's start of line; nil when l does not log at info
// level or its lines do not have the expected shape.
func newLineOut(l zerolog.Logger, batch *logBatch) *lineOut {
	var buf bytes.Buffer
	probe := l.Output(&buf)
	probe.Info().Msg("probe")
	line := buf.Bytes()
	if i := bytes.Index(line, []byte(`"time":`)); i > 0 && line[i-1] == ',' {
		return &lineOut{head: bytes.Clone(line[:i]), stamped: true, batch: batch}
	}
	if i := bytes.Index(line, []byte(`"message":"probe"`)); i > 0 && line[i-1] == ',' {
		return &lineOut{head: bytes.Clone(line[:i]), batch: batch}
	}
	return nil
}

// connFields are the values of a connection line.
type connFields struct {
	id, helo, end string
	ip            netip.Addr
	txs, errs     int
	dur           time.Duration
}

// txFields are the values of a transaction line.
type txFields struct {
	id, helo, from, result string
	ip                     netip.Addr
	rcpts, refused         []string
	size                   int64
	code                   int
	dur                    time.Duration
}

// log writes f's line through zerolog: where the loop does not write it
// itself (a TLS session, a value that needs escaping).
func (f *connFields) log(e *zerolog.Event) {
	e.Str("conn", f.id).Str("ip", f.ip.String()).Str("helo", f.helo).Int("transactions", f.txs).
		Int("errors", f.errs).Str("end", f.end).Dur("duration_ms", f.dur).Msg("connection")
}

func (f *txFields) log(e *zerolog.Event) {
	e.Str("tx", f.id).Str("ip", f.ip.String()).Str("helo", f.helo).Str("from", f.from).Strs("rcpts", f.rcpts).
		Int64("size", f.size).Str("result", f.result).Int("code", f.code).Strs("refused", f.refused).
		Dur("duration_ms", f.dur).Msg("transaction")
}

// connection writes f's line and reports whether it could.
func (o *lineOut) connection(f *connFields, now time.Time) bool {
	if !plain(f.helo) || !plainIP(f.ip) {
		return false
	}
	b := append(o.batch.buf, o.head...)
	b = append(b, `"conn":"`...)
	b = append(b, f.id...)
	b = append(b, `","ip":"`...)
	b = f.ip.AppendTo(b)
	b = append(b, `","helo":"`...)
	b = append(b, f.helo...)
	b = append(b, `","transactions":`...)
	b = strconv.AppendInt(b, int64(f.txs), 10)
	b = append(b, `,"errors":`...)
	b = strconv.AppendInt(b, int64(f.errs), 10)
	b = append(b, `,"end":"`...)
	b = append(b, f.end...)
	b = append(b, `","duration_ms":`...)
	b = appendMillis(b, f.dur)
	o.finish(b, now, `,"message":"connection"}`)
	return true
}

// transaction writes f's line and reports whether it could.
func (o *lineOut) transaction(f *txFields, now time.Time) bool {
	if !plain(f.helo) || !plain(f.from) || !allPlain(f.rcpts) || !allPlain(f.refused) || !plainIP(f.ip) {
		return false
	}
	b := append(o.batch.buf, o.head...)
	b = append(b, `"tx":"`...)
	b = append(b, f.id...)
	b = append(b, `","ip":"`...)
	b = f.ip.AppendTo(b)
	b = append(b, `","helo":"`...)
	b = append(b, f.helo...)
	b = append(b, `","from":"`...)
	b = append(b, f.from...)
	b = append(b, `","rcpts":`...)
	b = appendPlainList(b, f.rcpts)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, f.size, 10)
	b = append(b, `,"result":"`...)
	b = append(b, f.result...)
	b = append(b, `","code":`...)
	b = strconv.AppendInt(b, int64(f.code), 10)
	b = append(b, `,"refused":`...)
	b = appendPlainList(b, f.refused)
	b = append(b, `,"duration_ms":`...)
	b = appendMillis(b, f.dur)
	o.finish(b, now, `,"message":"transaction"}`)
	return true
}

// finish ends line b with the time and the message, and keeps it in the
// batch.
func (o *lineOut) finish(b []byte, now time.Time, tail string) {
	if o.stamped {
		b = append(b, `,"time":`...)
		b = append(b, logstamp.Quoted(now)...)
	}
	b = append(b, tail...)
	b = append(b, '\n')
	o.batch.keep(b)
}

// plain reports whether s goes into a JSON string as it is: printable
// ASCII without a quote or a backslash, as zerolog decides.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// plainIP reports whether ip's text is its AppendTo: not for a missing
// address ("invalid IP") or one with a zone (the kernel's name for an
// interface, which could hold anything).
func plainIP(ip netip.Addr) bool { return ip.IsValid() && ip.Zone() == "" }

func allPlain(l []string) bool {
	for _, s := range l {
		if !plain(s) {
			return false
		}
	}
	return true
}

func appendPlainList(b []byte, l []string) []byte {
	b = append(b, '[')
	for i, s := range l {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, s...)
		b = append(b, '"')
	}
	return append(b, ']')
}
