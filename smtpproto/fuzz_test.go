package smtpproto

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// fuzzSeeds are representative dialogs; testdata/fuzz/FuzzSession holds
// more.
var fuzzSeeds = []string{
	inEHLO + inEnv + "DATA\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
	"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n.\r\nQUIT\r\n",
	inEHLO + inEnv + bdat("a\r\n.\r\nQUIT\r\n", false) + bdat("end", true) + "DATA\r\n",
	inEHLO + "BDAT 5 LATE\r\nQUIT.BDAT\r\n",
	withData("hello\n.\nMAIL FROM:<e@x.test>\r\n\r\n.\r\n"),
	withData("hello\r\n.\r\r\n" + strings.Repeat("x", 1001) + "\r\n.\r\n"),
	inEHLO + "MAIL FROM:<jörg@b.test> SMTPUTF8 SIZE=99999999999999999999\r\nRCPT TO:<@a,@b:\"q b\"@[IPv6:2001:db8::1]>\r\n",
	"GET / HTTP/1.1\r\nHost: mx.test\r\n\r\nNOOP\nHELO a\x01\r\n",
	strings.Repeat("z", 600) + "QUIT\r\nRSET x\r\nVRFY\r\nHELP\r\nEXPN\r\n",
	inEHLO + "MAIL FROM:<a@b.test> BODY=8BITMIME\r\nRCPT TO:<d@[192.0.2.1]>\r\nHELO again\r\nRCPT TO:<d@e.test>\r\n",
	inEHLO + "MAIL FROM:<\"a\n\\\"\x00b\"@c.test> SMTPUTF8=YES\r\nMAIL FROM:<a\nb>\nRCPT TO:<u%v!w@x.test>\r\n",
}

// replyLine is the shape of every reply line (RFC 5321 4.2).
var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)

// enhanced matches the enhanced status code after "NNN" and the separator
// (RFC 3463 2).
var enhanced = regexp.MustCompile(`^[0-9]{3}[ -]([245])\.[0-9]{1,3}\.[0-9]{1,3} `)

func FuzzSession(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), uint(len(s)/2))
	}
	cfg := testConfig()
	f.Fuzz(func(t *testing.T, in []byte, at uint) {
		cut := int(at % uint(len(in)+1))
		whole := drive(cfg, in)
		if two := drive(cfg, in[:cut], in[cut:]); two != whole {
			t.Fatalf("input split at %d:\n%s", cut, diffTranscript(two, whole))
		}
		checkReplies(t, cfg, in)

		// A host that refuses every third decision reaches the refusal
		// paths (a refused first BDAT, a refused message) under the same
		// requirement.
		wholeR := converse(cfg, everyThird(), in)
		if two := converse(cfg, everyThird(), in[:cut], in[cut:]); two != wholeR {
			t.Fatalf("refusing host, input split at %d:\n%s", cut, diffTranscript(two, wholeR))
		}
	})
}

// everyThird returns a host that refuses every third decision it is asked.
func everyThird() func(Event) Reply {
	n := 0
	return func(Event) Reply {
		if n++; n%3 == 0 {
			return Reply{Code: 550, Enhanced: "5.7.1", Text: "Refused by policy"}
		}
		return Reply{}
	}
}

// checkReplies runs in through a session that accepts everything and checks
// the form of every reply it writes.
func checkReplies(t *testing.T, cfg *Config, in []byte) {
	t.Helper()
	s := NewSession(cfg)
	stuck := 0
	for {
		n, ev := s.Next(in)
		if n < 0 || n > len(in) {
			t.Fatalf("Next used %d of %d octets", n, len(in))
		}
		in = in[n:]
		checkReply(t, ev.Reply, s.Extended())
		switch ev.Kind {
		case KindHelo:
			checkReply(t, s.Resolve(Reply{}), false)
		case KindMail, KindRcpt, KindData, KindMessage:
			if !s.Pending() {
				t.Fatalf("event %d but nothing pending", ev.Kind)
			}
			checkReply(t, s.Resolve(Reply{}), s.Extended())
		}
		if ev.Close {
			if !s.Closed() {
				t.Fatal("Close asked but the session is not closed")
			}
			return
		}
		if ev.Kind == KindNeedMore {
			return
		}
		if n == 0 {
			if stuck++; stuck > 2 {
				t.Fatalf("no progress: event %d with %d octets left", ev.Kind, len(in))
			}
		} else {
			stuck = 0
		}
	}
}

// checkReply checks the lines of r: each "NNN-" or "NNN " with one code per
// reply, no control bytes, CRLF at the end; in an EHLO session each carries
// an enhanced code of the reply's class (3xx replies have none, RFC 3463).
func checkReply(t *testing.T, r []byte, extended bool) {
	t.Helper()
	if len(r) == 0 {
		return
	}
	if !bytes.HasSuffix(r, []byte("\r\n")) {
		t.Fatalf("reply %q does not end with CRLF", r)
	}
	code := ""
	for _, line := range strings.SplitAfter(string(r[:len(r)-2]), "\r\n") {
		line = strings.TrimSuffix(line, "\r\n")
		if !replyLine.MatchString(line) {
			t.Fatalf("reply line %q is malformed (reply %q)", line, r)
		}
		if strings.IndexFunc(line, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
			t.Fatalf("reply line %q holds a control byte", line)
		}
		if code != "" && line[:3] != code {
			t.Fatalf("reply %q mixes codes %s and %s", r, code, line[:3])
		}
		code = line[:3]
		if line[3] == ' ' {
			code = "" // the next line starts a new reply
		}
		if extended && line[0] != '3' {
			m := enhanced.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("reply line %q has no enhanced status code", line)
			}
			if m[1][0] != line[0] {
				t.Fatalf("reply line %q: enhanced class %s differs from the code's", line, m[1])
			}
		}
	}
	if code != "" {
		t.Fatalf("reply %q ends on a continuation line", r)
	}
}
