package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
)

// replies feeds text to readReply whole, a byte at a time, and split at
// every point, and requires the same result each way.
func replies(t *testing.T, text string, n int) []reply {
	t.Helper()
	read := func(r io.Reader) ([]reply, error) {
		br := bufio.NewReaderSize(r, 64)
		var out []reply
		for range n {
			rp, err := readReply(br)
			if err != nil {
				return out, err
			}
			rp.last = nil
			out = append(out, rp)
		}
		return out, nil
	}
	want, err := read(strings.NewReader(text))
	if err != nil {
		t.Fatalf("whole %q: %v", text, err)
	}
	check := func(how string, r io.Reader) {
		got, err := read(r)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, %v; whole gave %v", how, got, err, want)
		}
	}
	check("byte by byte", iotest.OneByteReader(strings.NewReader(text)))
	for i := 1; i < len(text); i++ {
		check(fmt.Sprintf("split at %d", i), io.MultiReader(iotest.HalfReader(strings.NewReader(text[:i])), strings.NewReader(text[i:])))
	}
	return want
}

func TestReadReply(t *testing.T) {
	got := replies(t, "220 mx ESMTP\r\n250-mx\r\n250-SIZE 100\r\n250-pipelining\r\n250 8BITMIME\r\n250\r\n354 go\r\n", 4)
	want := []reply{{code: 220}, {code: 250, pipelining: true}, {code: 250}, {code: 354}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// A keyword that only starts with PIPELINING is another keyword.
	if rp := replies(t, "250-mx\r\n250 PIPELININGX\r\n", 1); rp[0].pipelining {
		t.Error("PIPELININGX was taken for PIPELINING")
	}
	// Bare LF endings are read too: the client is lenient in what it accepts.
	if rp := replies(t, "250-mx\n250 PIPELINING\n", 1); !rp[0].pipelining {
		t.Error("PIPELINING missed with LF line ends")
	}
}

func TestReadReplyErrors(t *testing.T) {
	for _, c := range []struct {
		in   string
		want error
	}{
		{"hello\r\n", errMalformed},
		{"25\r\n", errMalformed},
		{"220-still going", io.ErrUnexpectedEOF},
		{"", io.EOF},
		{"250 " + strings.Repeat("x", 100) + "\r\n", errLongLine},
	} {
		_, err := readReply(bufio.NewReaderSize(strings.NewReader(c.in), 64))
		if !errors.Is(err, c.want) {
			t.Errorf("readReply(%.20q) error = %v, want %v", c.in, err, c.want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{&replyError{phase: "banner", code: 421}, errReply4},
		{fmt.Errorf("wrapped: %w", &replyError{phase: "rcpt", code: 550}), errReply5},
		{&replyError{phase: "data", code: 250}, errOther},
		{fmt.Errorf("connect: %w", syscall.ECONNREFUSED), errRefused},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), errReset},
		{syscall.EPIPE, errReset},
		{fmt.Errorf("ehlo: %w", os.ErrDeadlineExceeded), errTimeout},
		{fmt.Errorf("quit: %w", io.EOF), errClosed},
		{errMalformed, errOther},
	} {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, errNames[got], errNames[c.want])
		}
	}
}

func TestPayloadIsWellFormed(t *testing.T) {
	for n := range 400 {
		b := appendPayload(nil, n)
		if len(b) != max(n, 2) {
			t.Fatalf("payload of %d: %d bytes", n, len(b))
		}
		if !bytes.HasSuffix(b, []byte("\r\n")) {
			t.Fatalf("payload of %d does not end in CRLF", n)
		}
		for line := range strings.SplitSeq(strings.TrimSuffix(string(b), "\r\n"), "\r\n") {
			if len(line)+2 > 78 || strings.HasPrefix(line, ".") || strings.ContainsAny(line, "\r\n") {
				t.Fatalf("payload of %d has a bad line %q", n, line)
			}
		}
	}
}

func TestWeightedSharesAreExactPerRound(t *testing.T) {
	for _, weights := range [][]int{{75, 10, 10, 5}, {1}, {50, 25, 15, 8, 2}, {3, 7}} {
		w := newWeighted(weights)
		total := 0
		for _, x := range weights {
			total += x
		}
		for round := range 3 {
			got := make([]int, len(weights))
			for i := range total {
				got[w.pick(uint64(round*total+i))]++
			}
			if fmt.Sprint(got) != fmt.Sprint(weights) {
				t.Errorf("weights %v, round %d: picked %v", weights, round, got)
			}
		}
	}
}

func TestParseFlags(t *testing.T) {
	sizes, weights, err := parseSizes("1k:60, 16K:30,1m:10")
	if err != nil || fmt.Sprint(sizes, weights) != "[1024 16384 1048576] [60 30 10]" {
		t.Errorf("parseSizes = %v %v %v", sizes, weights, err)
	}
	for _, bad := range []string{"", "x", "1k:0", "-5", "65m", "1k:y"} {
		if _, _, err := parseSizes(bad); err == nil {
			t.Errorf("parseSizes(%q) gave no error", bad)
		}
	}
	shares, err := parseMix("reject=10,hangup=10,early=5")
	if err != nil || shares != [numKinds]int{75, 10, 10, 5} {
		t.Errorf("parseMix = %v %v", shares, err)
	}
	for _, bad := range []string{"reject=90,early=20", "bounce=5", "reject=x"} {
		if _, err := parseMix(bad); err == nil {
			t.Errorf("parseMix(%q) gave no error", bad)
		}
	}
}
