package smtpproto

import (
	"strings"
	"testing"
)

const (
	rBareEOL  = "550 5.6.0 Message refused: bare CR or LF in message; lines must end with CRLF\r\n"
	rLongLine = "550 5.5.2 Message refused: a line is longer than 1000 octets including CRLF\r\n"
)

// withData sends body (which must end with the terminator) as the DATA of
// one transaction.
func withData(body string) string { return inEHLO + inEnv + "DATA\r\n" + body }

// rEHLOBig is the EHLO reply of bigConfig.
var rEHLOBig = strings.Replace(rEHLO, "SIZE 1000\r\n", "SIZE 10000\r\n", 1)

// bigConfig is testConfig with room for messages of a few thousand octets.
func bigConfig() *Config { return newConfig(bigMessages) }

// bigMessages allows messages of a few thousand octets.
func bigMessages(c *Config) { c.MaxMessageSize = 10000 }

// keepBare lets messages with a bare CR or LF through.
func keepBare(c *Config) { c.KeepBareLineEndings = true }

func TestDotUnstuffing(t *testing.T) {
	head := rEHLO + rMail + rRcpt + rGo
	runDialogs(t, []dialog{
		{
			name: "empty message",
			in:   withData(".\r\n"),
			want: head + msg("") + rQueued,
		},
		{
			name: "one empty line",
			in:   withData("\r\n.\r\n"),
			want: head + msg("\r\n") + rQueued,
		},
		{
			name: "a stuffed dot is removed",
			in:   withData("..x\r\n..\r\n...\r\n.\r\n"),
			want: head + msg(".x\r\n.\r\n..\r\n") + rQueued,
		},
		{
			// RFC 5321 4.5.2: the first dot of a longer line is deleted
			// even when the client did not double it.
			name: "an unstuffed leading dot is removed",
			in:   withData(".hidden\r\n. x\r\n.\r\n"),
			want: head + msg("hidden\r\n x\r\n") + rQueued,
		},
		{
			name: "dots inside a line are kept",
			in:   withData("a.b\r\nend.\r\n . \r\nx..\r\n.\r\n"),
			want: head + msg("a.b\r\nend.\r\n . \r\nx..\r\n") + rQueued,
		},
		{
			name: "commands in the body are data",
			in:   withData("QUIT\r\nRSET\r\nMAIL FROM:<x@y.test>\r\n.\r\nNOOP\r\n"),
			want: head + msg("QUIT\r\nRSET\r\nMAIL FROM:<x@y.test>\r\n") + rQueued + rOK,
		},
		{
			name: "the terminator ends the data and the next command runs",
			in:   withData("x\r\n.\r\nQUIT\r\nNOOP\r\n"),
			want: head + msg("x\r\n") + rQueued + rBye,
		},
		{
			name: "binary octets pass through",
			in:   withData("\x00\x01\x7f\x80\xff\r\n.\r\n"),
			want: head + msg("\x00\x01\x7f\x80\xff\r\n") + rQueued,
		},
	})
}

// smuggle is the text an attacker hides after a fake end of data: a second
// transaction that must never run (CVE-2023-51764/5/6).
const smuggle = "MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nforged"

func TestSmuggling(t *testing.T) {
	cases := []struct {
		seq  string // the fake end of data
		kept string // what KeepBareLineEndings stores for seq
	}{
		{"\n.\n", "\n.\n"},
		{"\r.\r", "\r.\r"},
		{"\n.\r\n", "\n.\r\n"},
		{"\r.\r\n", "\r.\r\n"},
		{"\n.\r", "\n.\r"},
		{"\r\n.\n", "\r\n\n"},         // the line ".\n..." loses its leading dot
		{"\r\n.\r", "\r\n\r"},         // likewise ".\rMAIL..."
		{"\r\n.\r\r\n", "\r\n\r\r\n"}, // likewise ".\r" CRLF
		{"\n\n.\n\n", "\n\n.\n\n"},
		{"\r\r.\r\r", "\r\r.\r\r"},
		{"\r\n.\n\r\n", "\r\n\n\r\n"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(strings.ReplaceAll(tc.seq, "\r", "CR"), "\n", "LF"), func(t *testing.T) {
			t.Parallel()
			in := withData("Subject: s\r\n\r\nhello" + tc.seq + smuggle + "\r\n.\r\nQUIT\r\n")
			strict := rEHLO + rMail + rRcpt + rGo + rBareEOL + rBye
			checkSplits(t, testConfig(), in, strict)

			keep := newConfig(keepBare)
			kept := rEHLO + rMail + rRcpt + rGo +
				msg("Subject: s\r\n\r\nhello"+tc.kept+smuggle+"\r\n") + rQueued + rBye
			checkSplits(t, keep, in, kept)

			if n := strings.Count(drive(keep, []byte(in)), rMail); n != 1 {
				t.Fatalf("%d MAIL commands answered, want 1", n)
			}
		})
	}
}

// TestSmugglingLookalikes covers fake terminators that contain no bare CR
// or LF: they are ordinary text, so the message is kept as it is.
func TestSmugglingLookalikes(t *testing.T) {
	for _, seq := range []string{"\r\n\x00.\r\n", "\r\n .\r\n", "\r\n.\x00\r\n", "\r\n\t.\r\n"} {
		in := withData("hello" + seq + smuggle + "\r\n.\r\nQUIT\r\n")
		// A line "." followed by more text loses its dot (RFC 5321 4.5.2).
		body := "hello" + strings.Replace(seq, "\r\n.", "\r\n", 1) + smuggle + "\r\n"
		checkSplits(t, testConfig(), in, rEHLO+rMail+rRcpt+rGo+msg(body)+rQueued+rBye)
	}
}

func TestBareLineEndings(t *testing.T) {
	keep := func() *Config { return newConfig(keepBare) }
	head := rEHLO + rMail + rRcpt + rGo
	runDialogs(t, []dialog{
		{
			name: "bare LF refused after the terminator",
			in:   withData("a\nb\r\n.\r\nNOOP\r\n"),
			want: head + rBareEOL + rOK,
		},
		{
			name: "bare CR refused after the terminator",
			in:   withData("a\rb\r\n.\r\nNOOP\r\n"),
			want: head + rBareEOL + rOK,
		},
		{
			name: "CR before CRLF",
			in:   withData("a\r\r\n.\r\n"),
			want: head + rBareEOL,
		},
		{
			name: "a refusal does not count as an error and ends the transaction",
			in:   inEHLO + strings.Repeat(inEnv+"DATA\r\na\nb\r\n.\r\n", 5) + "RCPT TO:<d@e.test>\r\n",
			want: head + rBareEOL + strings.Repeat(rMail+rRcpt+rGo+rBareEOL, 4) +
				"503 5.5.1 Error: need MAIL command\r\n",
		},
		{
			name: "kept",
			cfg:  keep,
			in:   withData("a\nb\rc\r\r\n\n\r\n.\r\n"),
			want: head + msg("a\nb\rc\r\r\n\n\r\n") + rQueued,
		},
		{
			name: "refusing a bare LF comes before refusing a long line",
			cfg:  bigConfig,
			in:   withData(strings.Repeat("x", 1200) + "\r\nshort\nline\r\n.\r\n"),
			want: rEHLOBig + rMail + rRcpt + rGo + rBareEOL,
		},
		{
			name: "refusing the size comes before refusing a bare LF",
			in:   withData(strings.Repeat("x\n", 600) + "\r\n.\r\n"),
			want: head + "552 5.3.4 Message size exceeds fixed limit\r\n",
		},
	})
}

// TestBareLFLineLength checks that with KeepBareLineEndings a bare LF ends
// a line for the line-length check, as it does for the reader of the kept
// message.
func TestBareLFLineLength(t *testing.T) {
	cfg := newConfig(bigMessages, keepBare)
	body := strings.Repeat(strings.Repeat("a", 60)+"\n", 20) + "\r\n"
	checkSplits(t, cfg, withData(body+".\r\n"), rEHLOBig+rMail+rRcpt+rGo+msg(body)+rQueued)
}

func TestLongDataLines(t *testing.T) {
	keep := func() *Config { return newConfig(bigMessages, func(c *Config) { c.KeepLongLines = true }) }
	noCap := func() *Config { return newConfig(bigMessages, func(c *Config) { c.MaxDataLineLength = 0 }) }
	head := rEHLOBig + rMail + rRcpt + rGo
	l998, l999 := strings.Repeat("x", 998), strings.Repeat("x", 999)
	runDialogs(t, []dialog{
		{
			name: "1000 octets with CRLF",
			cfg:  bigConfig,
			in:   withData(l998 + "\r\n.\r\n"),
			want: head + msg(l998+"\r\n") + rQueued,
		},
		{
			name: "1001 octets refused after the terminator",
			cfg:  bigConfig,
			in:   withData("first\r\n" + l999 + "\r\nlast\r\n.\r\nRCPT TO:<d@e.test>\r\n" + inEnv + "DATA\r\nok\r\n.\r\n"),
			want: head + rLongLine + "503 5.5.1 Error: need MAIL command\r\n" +
				rMail + rRcpt + rGo + msg("ok\r\n") + rQueued,
		},
		{
			name: "1001 octets kept with KeepLongLines",
			cfg:  keep,
			in:   withData(l999 + "\r\n.\r\n"),
			want: head + msg(l999+"\r\n") + rQueued,
		},
		{
			// RFC 5321 4.5.3.1.6: the dot doubled for transparency does
			// not count.
			name: "a stuffed dot is not counted",
			cfg:  bigConfig,
			in:   withData("." + "." + l998[1:] + "\r\n.\r\n"),
			want: head + msg("."+l998[1:]+"\r\n") + rQueued,
		},
		{
			name: "a bare CR counts toward the line",
			cfg:  func() *Config { return newConfig(bigMessages, keepBare) },
			in:   withData(l998[:500] + "\r" + l998[500:] + "\r\n.\r\n"),
			want: head + rLongLine,
		},
		{
			name: "no cap when MaxDataLineLength is 0",
			cfg:  noCap,
			in:   withData(strings.Repeat("y", 5000) + "\r\n.\r\n"),
			want: head + msg(strings.Repeat("y", 5000)+"\r\n") + rQueued,
		},
	})
}

// openData drives cfg's session to the 354 of one transaction, with
// mailParams after MAIL FROM.
func openData(t *testing.T, cfg *Config, mailParams string) *Session {
	t.Helper()
	s := NewSession(cfg)
	for _, w := range []string{"EHLO client.test\r\n", "MAIL FROM:<a@b.example>" + mailParams + "\r\n", "RCPT TO:<c@d.example>\r\n", "DATA\r\n"} {
		in := []byte(w)
		for len(in) > 0 {
			n, ev := s.Next(in)
			in = in[n:]
			if ev.Kind != KindNeedMore && ev.Kind != KindReply {
				s.Resolve(Reply{})
			}
		}
	}
	if !s.InBody() {
		t.Fatal("the session is not reading a message after DATA")
	}
	return s
}

// feed gives the session message octets and returns the event that ends
// them, if any.
func feed(s *Session, in string) Event {
	b := []byte(in)
	for len(b) > 0 {
		n, ev := s.Next(b)
		b = b[n:]
		if ev.Kind != KindNeedMore {
			return ev
		}
	}
	return Event{}
}

// Once a message is certain to be refused, its octets are no longer kept;
// the refusal still comes after the final dot, and size comes first.
func TestDoomedMessageIsNotKept(t *testing.T) {
	cases := []struct {
		name, start, want string
		edit              func(*Config)
	}{
		{"long line, mid-line", "Subject: " + strings.Repeat("h", 5000), rLongLine, nil},
		{"bare LF", "Subject: x\nmore\r\n", rBareEOL, nil},
		{"oversize", strings.Repeat("o", 200) + "\r\n", "552 5.3.4 Message size exceeds fixed limit\r\n", func(c *Config) { c.MaxMessageSize = 100 }},
		{"bare LF, then oversize", "x\n" + strings.Repeat("o", 200) + "\r\n", "552 5.3.4 Message size exceeds fixed limit\r\n", func(c *Config) { c.MaxMessageSize = 100 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := newConfig(func(c *Config) {
				c.MaxMessageSize = 1 << 20
				if tc.edit != nil {
					tc.edit(c)
				}
			})
			s := openData(t, cfg, "")
			feed(s, tc.start)
			for range 100 {
				feed(s, strings.Repeat("z", 98)+"\r\n")
			}
			if cap(s.Body()) != 0 {
				t.Errorf("a message certain to be refused keeps a buffer of %d octets", cap(s.Body()))
			}
			if ev := feed(s, ".\r\n"); string(ev.Reply) != tc.want || !ev.EndTx {
				t.Errorf("end of data: %q, want %q", ev.Reply, tc.want)
			}
		})
	}
	// Kept under long_lines = keep.
	s := openData(t, newConfig(func(c *Config) { c.MaxMessageSize = 1 << 20; c.KeepLongLines = true }), "")
	feed(s, strings.Repeat("h", 5000)+"\r\n")
	if ev := feed(s, ".\r\n"); ev.Kind != KindMessage || len(s.Body()) != 5002 {
		t.Errorf("long_lines = keep: event %v with a body of %d octets, want the message of 5002", ev.Kind, len(s.Body()))
	}
}

// A declared SIZE reserves no more than a first buffer; the buffer grows
// with what arrives.
func TestDeclaredSizeReservesNothing(t *testing.T) {
	cfg := newConfig(func(c *Config) { c.MaxMessageSize = 25 << 20 })
	s := openData(t, cfg, " SIZE=20000000")
	feed(s, "Subject: small\r\n")
	if c := cap(s.Body()); c > 64<<10 {
		t.Fatalf("SIZE=20000000 and 16 octets sent: a buffer of %d octets", c)
	}
	chunk := strings.Repeat("q", 1022) + "\r\n"
	for range 1024 {
		feed(s, chunk)
	}
	if n, c := len(s.Body()), cap(s.Body()); c > 2*n {
		t.Fatalf("a body of %d octets in a buffer of %d", n, c)
	}
}
