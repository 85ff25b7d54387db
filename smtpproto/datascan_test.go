package smtpproto

import (
	"bytes"
	"testing"
)

// scanState is everything the DATA scanner decides: what it kept, what
// it counted, what it noticed and where it stopped.
type scanState struct {
	used                        []int
	done                        bool
	body                        string
	size                        int64
	bare, long, tooBig, dropped bool
	state                       uint8
	lineLen                     int
}

// scanWith feeds in to a fresh session in DATA in the pieces cuts gives,
// through scan (data or dataRef).
func scanWith(cfg *Config, in []byte, cuts []byte, scan func(*Session, []byte) (int, bool)) scanState {
	s := NewSession(cfg)
	s.startBody()
	var st scanState
	for len(in) > 0 && !st.done {
		n := len(in)
		if len(cuts) > 0 {
			n = min(n, 1+int(cuts[0]))
			cuts = cuts[1:]
		}
		used, done := scan(s, in[:n])
		st.used = append(st.used, used)
		st.done = done
		in = in[used:]
		if used < n && !done {
			break // the scanner left input it should have taken
		}
	}
	st.body = string(s.body)
	st.size, st.bare, st.long, st.tooBig, st.dropped = s.bodySize, s.bareEOL, s.longLine, s.tooBig, s.dropping
	st.state, st.lineLen = s.dotState, s.lineLen
	return st
}

// FuzzDataScanner holds the DATA scanner (with its fast path over whole
// lines) to the byte-at-a-time scanner it replaced: for any input, cut
// into any pieces, under every line-ending and long-line policy, both keep
// the same octets, count the same size, notice the same faults and stop
// at the same terminator.
func FuzzDataScanner(f *testing.F) {
	for _, seed := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		"..dot\r\n.x\r\n\r\n.\r\n",
		"a\rb\r\nc\nd\r\n.\r\n",
		"x\r\n.\r\r\n.\n.\r\n",
		string(bytes.Repeat([]byte("y"), 1200)) + "\r\nshort\r\n.\r\n",
		"no end yet\r\nstill\r",
		"\r\n\r\n\r\n.\r\nQUIT\r\n",
	} {
		f.Add([]byte(seed), []byte{3, 200, 1, 0, 7}, uint8(0))
		f.Add([]byte(seed), []byte{}, uint8(3))
	}
	f.Fuzz(func(t *testing.T, in, cuts []byte, flags uint8) {
		cfg := newConfig(func(c *Config) {
			c.MaxMessageSize = 2000
			c.MaxDataLineLength = []int{1000, 0, 20, 3}[flags&3]
			c.KeepBareLineEndings = flags&4 != 0
			c.KeepLongLines = flags&8 != 0
		})
		got := scanWith(cfg, in, cuts, (*Session).data)
		want := scanWith(cfg, in, cuts, (*Session).dataRef)
		if !equalScan(got, want) {
			t.Fatalf("flags %d cuts %v input %q:\n got %+v\nwant %+v", flags, cuts, in, got, want)
		}
	})
}

func equalScan(a, b scanState) bool {
	if len(a.used) != len(b.used) {
		return false
	}
	for i := range a.used {
		if a.used[i] != b.used[i] {
			return false
		}
	}
	a.used, b.used = nil, nil
	return a.done == b.done && a.body == b.body && a.size == b.size && a.bare == b.bare && a.long == b.long &&
		a.tooBig == b.tooBig && a.dropped == b.dropped && a.state == b.state && a.lineLen == b.lineLen
}
