package main

import (
	"fmt"
	"strconv"
	"strings"
)

// script holds every byte the client sends, rendered once before a run so
// that the workers only ever write shared, read-only slices.
type script struct {
	ehlo, mail, data, quit []byte
	starttls               []byte
	rcpts                  [][]byte // the k RCPT commands of a message
	reject                 []byte   // a RCPT that a real MX refuses (mix)
	group                  []byte   // MAIL, RCPTs and DATA as one PIPELINING group
	bodies                 [][]byte // one payload per size class, ending in CRLF.CRLF
	sizes                  weighted // which payload arrival i sends
	kinds                  weighted // mix: which kind of session arrival i is
}

// Session kinds of the mix scenario; the plain scenarios use kindDeliver only.
const (
	kindDeliver = iota // a whole session that delivers one message
	kindReject         // the only recipient is one the server should refuse
	kindHangup         // hangs up after MAIL, without QUIT
	kindEarly          // talks before the greeting (RFC 5321 4.3.1 forbids it)
	numKinds
)

// mixNames are the -mix keys, in kind order (kindDeliver takes the rest).
var mixNames = [numKinds]string{"", "reject", "hangup", "early"}

// scriptOptions are the parts of a run's parameters the script depends on.
type scriptOptions struct {
	helo, from, to, rejectTo string
	rcpts                    int
	size                     string
	mix                      string
}

// newScript renders the commands and message payloads for one scenario.
func newScript(o scriptOptions) (*script, error) {
	if o.rcpts < 1 {
		return nil, fmt.Errorf("-rcpts %d: need at least 1", o.rcpts)
	}
	s := &script{
		ehlo:     []byte("EHLO " + o.helo + "\r\n"),
		mail:     []byte("MAIL FROM:<" + o.from + ">\r\n"),
		data:     []byte("DATA\r\n"),
		quit:     []byte("QUIT\r\n"),
		starttls: []byte("STARTTLS\r\n"),
		reject:   []byte("RCPT TO:<" + o.rejectTo + ">\r\n"),
	}
	local, domain, ok := strings.Cut(o.to, "@")
	if !ok {
		return nil, fmt.Errorf("-to %q: not an address", o.to)
	}
	for i := range o.rcpts {
		addr := o.to
		if o.rcpts > 1 { // distinct recipients, so no server folds duplicates
			addr = local + "+" + strconv.Itoa(i+1) + "@" + domain
		}
		s.rcpts = append(s.rcpts, []byte("RCPT TO:<"+addr+">\r\n"))
	}
	s.group = append(s.group, s.mail...)
	for _, r := range s.rcpts {
		s.group = append(s.group, r...)
	}
	s.group = append(s.group, s.data...)

	sizes, weights, err := parseSizes(o.size)
	if err != nil {
		return nil, err
	}
	header := "From: <" + o.from + ">\r\nTo: <" + o.to + ">\r\nSubject: loopmx-bench\r\n\r\n"
	for _, n := range sizes {
		b := make([]byte, 0, len(header)+n+5)
		b = append(b, header...)
		b = appendPayload(b, n)
		s.bodies = append(s.bodies, append(b, ".\r\n"...))
	}
	s.sizes = newWeighted(weights)

	shares, err := parseMix(o.mix)
	if err != nil {
		return nil, err
	}
	s.kinds = newWeighted(shares[:])
	return s, nil
}

// appendPayload appends n bytes (at least 2) of message text: CRLF-ended
// lines of at most 78 octets (RFC 5322 2.1.1), none starting with a dot.
func appendPayload(b []byte, n int) []byte {
	const line = 78
	const text = "The quick brown fox jumps over the lazy dog; loopmx-bench payload text 0123456789"
	n = max(n, 2)
	for n > 0 {
		l := min(n, line)
		if r := n - l; r == 1 { // never leave a lone byte for the last line
			l--
		}
		b = append(b, text[:l-2]...)
		b = append(b, '\r', '\n')
		n -= l
	}
	return b
}

// parseSize reads a byte count such as 1024, 4k or 1m (k = 1024).
func parseSize(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "m"), strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 64<<20/mult {
		return 0, fmt.Errorf("size %q: want a byte count up to 64m, like 1024, 4k or 1m", s)
	}
	return n * mult, nil
}

// parseSizes reads -size: one size, or a distribution "1k:60,16k:30,256k:10"
// of sizes and integer weights.
func parseSizes(spec string) (sizes, weights []int, err error) {
	for item := range strings.SplitSeq(spec, ",") {
		sz, w, hasWeight := strings.Cut(strings.TrimSpace(item), ":")
		n, err := parseSize(sz)
		if err != nil {
			return nil, nil, fmt.Errorf("-size: %w", err)
		}
		weight := 1
		if hasWeight {
			if weight, err = strconv.Atoi(w); err != nil || weight < 1 || weight > 1000 {
				return nil, nil, fmt.Errorf("-size %q: weight %q: want 1..1000", spec, w)
			}
		}
		sizes = append(sizes, n)
		weights = append(weights, weight)
	}
	return sizes, weights, nil
}

// parseMix reads -mix, percentages of arrivals per session kind, such as
// "reject=10,hangup=10,early=5"; whatever is left delivers a message.
func parseMix(spec string) ([numKinds]int, error) {
	var shares [numKinds]int
	total := 0
	if spec != "" {
		for item := range strings.SplitSeq(spec, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(item), "=")
			pct, err := strconv.Atoi(v)
			if err != nil || pct < 0 {
				return shares, fmt.Errorf("-mix %q: %q: want NAME=PERCENT", spec, item)
			}
			kind := -1
			for i, name := range mixNames {
				if i > 0 && name == k {
					kind = i
				}
			}
			if kind < 0 {
				return shares, fmt.Errorf("-mix %q: unknown kind %q (reject, hangup, early)", spec, k)
			}
			shares[kind] = pct
			total += pct
		}
	}
	if total > 100 {
		return shares, fmt.Errorf("-mix %q: shares add up to %d%%", spec, total)
	}
	shares[kindDeliver] = 100 - total
	return shares, nil
}

// weighted picks one of several choices for arrival i, deterministically, so
// that every len(slots) consecutive arrivals contain each choice exactly as
// often as its weight says, spread out rather than in runs.
type weighted struct {
	slots  []uint16
	stride uint64
}

// newWeighted builds a picker; weights[i] is how many slots choice i gets.
func newWeighted(weights []int) weighted {
	var w weighted
	for i, n := range weights {
		for range n {
			w.slots = append(w.slots, uint16(i))
		}
	}
	if len(w.slots) == 0 {
		w.slots = []uint16{0}
	}
	// A stride coprime with the slot count visits every slot once per round;
	// one near the golden section of it scatters neighbours apart.
	n := uint64(len(w.slots))
	w.stride = max(n*618/1000, 1)
	for gcd(w.stride, n) != 1 {
		w.stride++
	}
	return w
}

// pick returns the choice for arrival i.
func (w weighted) pick(i uint64) int {
	return int(w.slots[i*w.stride%uint64(len(w.slots))])
}

// gcd returns the greatest common divisor of a and b.
func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
