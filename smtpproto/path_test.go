package smtpproto

import (
	"strings"
	"testing"
)

func TestSMTPUTF8(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "non-ASCII sender needs SMTPUTF8",
			in:   inEHLO + "MAIL FROM:<jörg@b.test>\r\nMAIL FROM:<a@bücher.test>\r\n",
			want: rEHLO + strings.Repeat("553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n", 2),
		},
		{
			name: "non-ASCII recipient needs SMTPUTF8 on MAIL",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<jörg@e.test>\r\n",
			want: rEHLO + rMail + "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n",
		},
		{
			name: "with SMTPUTF8",
			in: inEHLO + "MAIL FROM:<jörg@bücher.test> SMTPUTF8\r\nRCPT TO:<δοκιμή@παράδειγμα.test>\r\n" +
				"DATA\r\nhi\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rGo +
				msgEnv("jörg@bücher.test", "[δοκιμή@παράδειγμα.test]", "hi\r\n") + rQueued,
		},
		{
			name: "invalid UTF-8 is refused even with SMTPUTF8",
			in:   inEHLO + "MAIL FROM:<\xff\xfe@b.test> SMTPUTF8\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<\xc3@e.test>\r\n",
			want: rEHLO + "501 5.1.7 Bad sender address syntax\r\n" + rMail +
				"501 5.1.3 Bad recipient address syntax\r\n",
		},
	})
}

func TestPaths(t *testing.T) {
	badRcpt := "501 5.1.3 Bad recipient address syntax\r\n"
	runDialogs(t, []dialog{
		{
			name: "null sender and postmaster",
			in: inEHLO + "MAIL FROM:<>\r\nRCPT TO:<>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<PostMaster>\r\n" +
				"DATA\r\nbounce\r\n.\r\n",
			want: rEHLO + rMail + "501 5.1.3 Null recipient not allowed\r\n" + rRcpt + rRcpt + rGo +
				msgEnv("", "[postmaster PostMaster]", "bounce\r\n") + rQueued,
		},
		{
			name: "postmaster without a domain is no sender",
			in:   inEHLO + "MAIL FROM:<postmaster>\r\n",
			want: rEHLO + "501 5.1.7 Bad sender address syntax\r\n",
		},
		{
			name: "a source route is accepted and dropped",
			in: inEHLO + "MAIL FROM:<@relay.test:a@b.test>\r\nRCPT TO:<@a.test,@b.test:u@c.test>\r\n" +
				"DATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rGo + msgEnv("a@b.test", "[u@c.test]", "x\r\n") + rQueued,
		},
		{
			name: "a source route without a mailbox",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<@a.test,@b.test>\r\n",
			want: rEHLO + rMail + badRcpt,
		},
		{
			name: "quoted local parts",
			in: inEHLO + "MAIL FROM:<\"a b\"@c.test>\r\nRCPT TO:<\"a@b\"@c.test>\r\nRCPT TO:<\"x>y\"@c.test>\r\n" +
				"RCPT TO:<\"q\\\"t\"@c.test>\r\nDATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rRcpt + rRcpt + rGo +
				msgEnv(`"a b"@c.test`, `["a@b"@c.test "x>y"@c.test "q\"t"@c.test]`, "x\r\n") + rQueued,
		},
		{
			name: "bad quoted local parts",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test>\r\n" +
				"RCPT TO:<\"a\"b\"@c.test>\r\n" +
				"RCPT TO:<\"ab@c.test>\r\n" +
				"RCPT TO:<\"a\"x@c.test>\r\n" +
				"RCPT TO:<\"\"@c.test>\r\n",
			// An unbalanced quote hides the closing '>' (a syntax error);
			// an empty Quoted-string is valid (RFC 5321 4.1.2).
			want: rEHLO + rMail + strings.Repeat("501 5.5.4 Syntax: RCPT TO:<address>\r\n", 2) +
				badRcpt + rRcpt,
		},
		{
			name: "address literals",
			in: inEHLO + "MAIL FROM:<a@[192.0.2.1]>\r\nRCPT TO:<u@[IPv6:2001:db8::1]>\r\n" +
				"RCPT TO:<v@[ipv6:::1]>\r\nDATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rRcpt + rGo +
				msgEnv("a@[192.0.2.1]", "[u@[IPv6:2001:db8::1] v@[ipv6:::1]]", "x\r\n") + rQueued,
		},
		{
			name: "bad address literals",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test>\r\n" +
				"RCPT TO:<u@[192.0.2.256]>\r\n" +
				"RCPT TO:<u@[192.0.2]>\r\n" +
				"RCPT TO:<u@[192.0.2.1.5]>\r\n" +
				"RCPT TO:<u@[2001:db8::1]>\r\n" +
				"RCPT TO:<u@[IPv6:2001:db8::g]>\r\n" +
				"RCPT TO:<u@[IPv6:192.0.2.1]>\r\n" +
				"RCPT TO:<u@[IPv6:1::2::3]>\r\n" +
				"RCPT TO:<u@[]>\r\n" +
				"RCPT TO:<u@[192.0.2.1>\r\n" +
				"RCPT TO:<u@192.0.2.1]>\r\n" +
				"RCPT TO:<u@[x:]>\r\n" +
				"RCPT TO:<u@[:x]>\r\n",
			want: rEHLO + rMail + strings.Repeat(badRcpt, 12),
		},
	})
}

func TestSourceRouteArg(t *testing.T) {
	for i, pieces := range splits([]byte(inEHLO + "MAIL FROM:<@x.test:a@b.test>\r\nRCPT TO:<@a,@b:u@c.d>\r\n")) {
		s := NewSession(testConfig())
		var args []string
		var buf []byte
		for _, p := range pieces {
			buf = append(buf, p...)
			for {
				n, ev := s.Next(buf)
				buf = buf[n:]
				if ev.Kind == KindMail || ev.Kind == KindRcpt {
					args = append(args, ev.Arg)
				}
				if ev.Kind != KindNeedMore && ev.Kind != KindReply {
					s.Resolve(Reply{})
				}
				if ev.Kind == KindNeedMore {
					break
				}
			}
		}
		if got, want := strings.Join(args, " "), "a@b.test u@c.d"; got != want {
			t.Fatalf("input fed %s: event args %q, want %q", splitName(i), got, want)
		}
	}
}

// TestGeneralAddressLiteral covers RFC 5321 4.1.3 General-address-literal:
// Standardized-tag ":" 1*dcontent, the tag an Ldh-str.
func TestGeneralAddressLiteral(t *testing.T) {
	in := inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<u@[x-tag:any.thing]>\r\nRCPT TO:<u@[X9:v]>\r\n"
	checkSplits(t, testConfig(), in, rEHLO+rMail+rRcpt+rRcpt)
}

// TestGeneralAddressLiteralBadTag checks that a tag outside Ldh-str is
// refused.
func TestGeneralAddressLiteralBadTag(t *testing.T) {
	badRcpt := "501 5.1.3 Bad recipient address syntax\r\n"
	in := inEHLO + "MAIL FROM:<a@b.test>\r\n" +
		"RCPT TO:<u@[!:x]>\r\nRCPT TO:<u@[a-:x]>\r\nRCPT TO:<u@[a.b:x]>\r\nRCPT TO:<u@[_:x]>\r\n"
	checkSplits(t, lenient(), in, rEHLO+rMail+strings.Repeat(badRcpt, 4))
}

// TestSourceRouteSyntax checks that the ignored source route still has the
// A-d-l syntax of RFC 5321 4.1.2: "@" Domain *("," "@" Domain) ":".
func TestSourceRouteSyntax(t *testing.T) {
	badRcpt := "501 5.1.3 Bad recipient address syntax\r\n"
	in := inEHLO + "MAIL FROM:<a@b.test>\r\n" +
		"RCPT TO:<@:u@c.d>\r\nRCPT TO:<@a b:u@c.d>\r\nRCPT TO:<@!,:u@c.d>\r\nRCPT TO:<@a.test,x:u@c.d>\r\n"
	checkSplits(t, lenient(), in, rEHLO+rMail+strings.Repeat(badRcpt, 4))
}
