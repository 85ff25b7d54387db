package headers

import (
	"bytes"
	"testing"
)

// FuzzScan checks the header walker on any input: it stays inside the
// input, ends on a line boundary, counts no more Received fields than
// there are lines, and a limit only ever cuts the walk short.
func FuzzScan(f *testing.F) {
	for _, seed := range []string{
		"",
		"\r\n",
		"Received: a\r\nreceived : b\r\n\tfolded\r\n\r\nbody\r\n",
		" leading fold\r\nReceived: x\r\n",
		"Subject: no empty line\r\nplain text\r\nReceived: y\r\n",
		"Received:\r\nReceived:",
		":no name\r\n",
		"Bad Name: x\r\n",
		"X-\x80: y\r\n",
	} {
		f.Add([]byte(seed), 16)
	}
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		size, n := scan(b, 0)
		if size < 0 || size > len(b) {
			t.Fatalf("size %d outside the input of %d octets", size, len(b))
		}
		if size > 0 && size < len(b) && b[size-1] != '\n' {
			t.Fatalf("the header ends inside a line at %d", size)
		}
		if lines := bytes.Count(b[:size], []byte("\n")) + 1; n > lines {
			t.Fatalf("%d Received fields in %d lines", n, lines)
		}
		if limit <= 0 {
			return
		}
		lsize, ln := scan(b, limit)
		if size <= limit && (lsize != size || ln != n) {
			t.Fatalf("limit %d changed a walk of %d octets: %d, %d Received instead of %d", limit, size, lsize, ln, n)
		}
		if size > limit && (lsize <= limit || lsize > size || ln > n) {
			t.Fatalf("limit %d: walk of %d octets cut to %d", limit, size, lsize)
		}
	})
}
