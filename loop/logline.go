package loop

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/rs/zerolog"
)

// The connection and transaction lines are written once per connection
// and per message, so their fields skip what zerolog does for any value:
// the per-byte escaping of strings the loop made itself (identifiers,
// addresses, its own words), the String of an address, and the shortest
// float formatting of a duration. The text is the same as zerolog's.

// logSafe adds a string field whose value needs no JSON escaping: the
// loop's own identifiers and words, never a client's text.
func logSafe(e *zerolog.Event, key, s string) *zerolog.Event {
	var b [64]byte
	if len(s)+2 > len(b) {
		return e.Str(key, s)
	}
	q := append(append(append(b[:0], '"'), s...), '"')
	return e.RawJSON(key, q)
}

// logIP adds an address field, as its String would read.
func logIP(e *zerolog.Event, key string, ip netip.Addr) *zerolog.Event {
	if !ip.IsValid() || ip.Zone() != "" {
		return e.Str(key, ip.String()) // the zone is the kernel's name for an interface
	}
	var b [48]byte
	q := append(ip.AppendTo(append(b[:0], '"')), '"')
	return e.RawJSON(key, q)
}

// logMillis adds a duration in milliseconds, as Dur writes it with
// zerolog's millisecond unit: to the nanosecond, without trailing zeros.
func logMillis(e *zerolog.Event, key string, d time.Duration) *zerolog.Event {
	var b [32]byte
	return e.RawJSON(key, appendMillis(b[:0], d))
}

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
