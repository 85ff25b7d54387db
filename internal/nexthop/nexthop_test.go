package nexthop

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"loopmx/internal/spooltest"
	"loopmx/plugins"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  Reply
		lines []string
	}{
		{"250 2.1.0 Ok\r\n", Reply{250, "2.1.0", "Ok"}, []string{"2.1.0 Ok"}},
		{"550 5.1.1 <a@b>: User unknown\r\n", Reply{550, "5.1.1", "<a@b>: User unknown"}, nil},
		{"451 Local error\r\n", Reply{451, "", "Local error"}, nil},
		{"250\r\n", Reply{250, "", ""}, nil},
		{"354 End data with <CR><LF>.<CR><LF>\r\n", Reply{354, "", "End data with <CR><LF>.<CR><LF>"}, nil},
		// An enhanced code of another class is text, not a code.
		{"550 4.1.1 odd\r\n", Reply{550, "", "4.1.1 odd"}, nil},
		{"250-mx.example.net\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", Reply{250, "", "mx.example.net PIPELINING SIZE 1000"},
			[]string{"mx.example.net", "PIPELINING", "SIZE 1000"}},
		{"550-5.7.1 Refused\r\n550 5.7.1 see policy\r\n", Reply{550, "5.7.1", "Refused see policy"}, nil},
		{"220 bare LF\n", Reply{220, "", "bare LF"}, nil},
	} {
		var lines []string
		got, err := readReply(bufio.NewReader(strings.NewReader(tc.in)), &lines)
		if err != nil || got != tc.want {
			t.Errorf("readReply(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if tc.lines != nil && strings.Join(lines, "|") != strings.Join(tc.lines, "|") {
			t.Errorf("readReply(%q) lines %q, want %q", tc.in, lines, tc.lines)
		}
	}
}

func TestReadReplyErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"250 Ok",             // no line end
		"25\r\n",             // short
		"abc Ok\r\n",         // no code
		"199 Ok\r\n",         // out of range
		"250xOk\r\n",         // bad separator
		"250-a\r\n251 b\r\n", // code changes
		"250-a\r\n",          // ends inside a reply
		"250 " + strings.Repeat("x", maxReplyLine) + "\r\n", // too long
		strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 x\r\n",
	} {
		if got, err := readReply(bufio.NewReaderSize(strings.NewReader(in), maxReplyLine), nil); err == nil {
			t.Errorf("readReply(%q) = %+v, want an error", abbrev(in), got)
		}
	}
	_, err := readReply(bufio.NewReader(strings.NewReader("")), nil)
	if !errors.Is(err, io.EOF) {
		t.Errorf("empty input: %v, want EOF", err)
	}
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func TestValidEnhanced(t *testing.T) {
	for s, want := range map[string]bool{
		"2.0.0": true, "5.1.1": true, "4.7.100": true, "5.123.456": true,
		"3.0.0": false, "6.0.0": false, "5.1": false, "5.1.": false, "5..1": false,
		"5.1.1.1": false, "5.1234.1": false, "5.1.1234": false, "5.a.1": false, "": false, "25.1.1": false,
	} {
		if got := validEnhanced([]byte(s)); got != want {
			t.Errorf("validEnhanced(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestReplyTextIsBounded(t *testing.T) {
	in := strings.Repeat("550-5.7.1 "+strings.Repeat("y", 200)+"\r\n", 10) + "550 5.7.1 end\r\n"
	r, err := readReply(bufio.NewReaderSize(strings.NewReader(in), maxReplyLine), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Text) > maxReplyText {
		t.Errorf("kept %d octets of reply text, want at most %d", len(r.Text), maxReplyText)
	}
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"250 2.0.0 Ok\r\n", "250-a\r\n250 b\r\n", "550 5.1.1 x\r\n", "421\r\n", "250-\r\n250 \n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var lines []string
		r, err := readReply(bufio.NewReaderSize(strings.NewReader(in), maxReplyLine), &lines)
		if err != nil {
			return
		}
		if r.Code < 200 || r.Code > 599 || len(lines) == 0 || len(lines) > maxReplyLines || len(r.Text) > maxReplyText {
			t.Errorf("readReply(%q) = %+v with %d lines", in, r, len(lines))
		}
		if r.Enhanced != "" && (!validEnhanced([]byte(r.Enhanced)) || int(r.Enhanced[0]-'0') != r.Class()) {
			t.Errorf("readReply(%q): enhanced code %q does not fit %d", in, r.Enhanced, r.Code)
		}
	})
}

// TestWriteBodyStuffs checks dot-stuffing of bodies held in memory and
// of spooled ones read in chunks, where a line start may fall on a chunk
// boundary.
func TestWriteBodyStuffs(t *testing.T) {
	edge := strings.Repeat("x", 64<<10-2) + "\r\n.edge\r\n"
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"a\r\n", "a\r\n"},
		{".\r\n", "..\r\n"},
		{".a\r\n..b\r\nc.\r\n.\r\n", "..a\r\n...b\r\nc.\r\n..\r\n"},
		{"x\r\n.", "x\r\n.."},
		{edge, strings.Replace(edge, "\n.", "\n..", 1)},
	} {
		for _, spooled := range []bool{false, true} {
			m := plugins.NewMessage([]byte(tc.in), "ESMTP")
			if spooled {
				m = spooltest.Message(t, tc.in)
			}
			var b bytes.Buffer
			w := bufio.NewWriter(&b)
			if err := writeBody(w, m); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if b.String() != tc.want {
				t.Errorf("writeBody(%.20q, spooled %v) = %.40q, want %.40q", tc.in, spooled, b.String(), tc.want)
			}
		}
	}
}

func TestEOLMissing(t *testing.T) {
	for in, want := range map[string]int{"": 0, "a\r\n": 0, "a": 2, "a\r": 2, "a\n": 2} {
		if got := eolMissing(plugins.NewMessage([]byte(in), "")); got != want {
			t.Errorf("eolMissing(%q) = %d, want %d", in, got, want)
		}
		if got := eolMissing(spooltest.Message(t, in)); got != want {
			t.Errorf("eolMissing(%q) of a spooled body = %d, want %d", in, got, want)
		}
	}
}

func TestBudgetStaysBelowTheChainTimeout(t *testing.T) {
	for timeout, want := range map[time.Duration]time.Duration{
		30 * time.Second:        28 * time.Second,
		time.Second:             900 * time.Millisecond,
		600 * time.Second:       598 * time.Second,
		100 * time.Millisecond:  90 * time.Millisecond,
		1500 * time.Millisecond: 1350 * time.Millisecond,
	} {
		if got := budget(timeout); got != want {
			t.Errorf("budget(%v) = %v, want %v", timeout, got, want)
		}
	}
}

func TestLongRepliesAreClipped(t *testing.T) {
	long := Reply{550, "5.1.1", strings.Repeat("\u00fc", maxReplyText/2)}
	res := passBack(long, "<"+strings.Repeat("r", 200)+"@example.com>: ", " (delivered to 1 of 2 recipients)")
	line := res.Reply.AppendTo(nil)
	if len(line) > 512 || !bytes.HasSuffix(line, []byte(" (delivered to 1 of 2 recipients)\r\n")) {
		t.Errorf("reply of %d octets: %q", len(line), line)
	}
	if !utf8.Valid(line) {
		t.Errorf("clipping split a character: %q", line)
	}
}

func TestPassBack(t *testing.T) {
	for _, tc := range []struct {
		r    Reply
		want string
	}{
		{Reply{550, "5.1.1", "User unknown"}, "550 5.1.1 backend: x: User unknown\r\n"},
		{Reply{421, "4.3.2", "Closing"}, "451 4.3.2 backend: x: Closing\r\n"},
		{Reply{452, "", "Full"}, "452 4.0.0 backend: x: Full\r\n"},
		{Reply{354, "", "Go on"}, "451 4.4.2 Connection to the next hop lost or timed out, try again later\r\n"},
	} {
		res := passBack(tc.r, "x: ", "")
		if got := string(res.Reply.AppendTo(nil)); got != tc.want {
			t.Errorf("passBack(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
