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
			name: "with allow_source_route a source route is accepted and dropped",
			cfg:  allowRoutes,
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
		s := NewSession(allowRoutes())
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

// allowRoutes is testConfig with every routing form of RCPT allowed
// (allow_source_route, allow_percent_hack, allow_bang_path).
func allowRoutes() *Config {
	return newConfig(func(c *Config) {
		c.AllowSourceRoute, c.AllowPercentHack, c.AllowBangPath = true, true, true
	})
}

// TestAddressRouting checks that, by default, RCPT refuses the forms that
// ask a next hop to relay (a source route, a '%' or a '!' in the local
// part, quoted or not) with 550 5.7.1, which is policy and not a protocol
// error; that MAIL FROM is not held to it; and that each option lets its
// form through, a source route stripped.
func TestAddressRouting(t *testing.T) {
	route := "550 5.7.1 Source routes are not accepted; send to the mailbox itself\r\n"
	percent := "550 5.7.1 Addresses with % in the local part (percent hack) are not accepted\r\n"
	bang := "550 5.7.1 Addresses with ! in the local part (bang path) are not accepted\r\n"
	rcpts := "RCPT TO:<@a.test,@b.test:u@c.test>\r\n" +
		"RCPT TO:<user%other.net@example.com>\r\n" +
		"RCPT TO:<\"user%other.net\"@example.com>\r\n" +
		"RCPT TO:<a!b@example.com>\r\n" +
		"RCPT TO:<\"other.net!user\"@example.com>\r\n" +
		"RCPT TO:<@a.test:x!y%z@example.com>\r\n"
	runDialogs(t, []dialog{
		{
			name: "refused by default, more times than max_errors, then a plain recipient",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\n" + rcpts + "RCPT TO:<d@e.test>\r\nDATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + route + percent + percent + bang + bang + route + rRcpt + rGo +
				msgEnv("a@b.test", "[d@e.test]", "x\r\n") + rQueued,
		},
		{
			name: "MAIL FROM keeps its forms and drops a source route",
			in: inEHLO + "MAIL FROM:<a%b@c.test>\r\nRSET\r\nMAIL FROM:<a!b@c.test>\r\nRSET\r\n" +
				"MAIL FROM:<@relay.test:a@b.test>\r\n" + inEnv[len("MAIL FROM:<a@b.test>\r\n"):] + "DATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rOK + rMail + rOK + rMail + rRcpt + rGo + msg("x\r\n") + rQueued,
		},
		{
			name: "allowed by the options",
			cfg:  allowRoutes,
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\n" + rcpts,
			want: rEHLO + rMail + rRcpt + rRcpt + rRcpt + "452 4.5.3 Error: too many recipients\r\n" +
				"452 4.5.3 Error: too many recipients\r\n452 4.5.3 Error: too many recipients\r\n",
		},
		{
			name: "each option allows its own form only",
			cfg: func() *Config {
				return newConfig(func(c *Config) { c.AllowPercentHack = true; c.MaxRecipients = 10 })
			},
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\n" + rcpts,
			want: rEHLO + rMail + route + rRcpt + rRcpt + bang + bang + route,
		},
		{
			name: "a bad route is a syntax error before it is a policy refusal",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<@a b:u@c.d>\r\n",
			want: rEHLO + rMail + "501 5.1.3 Bad recipient address syntax\r\n",
		},
	})
}

// TestRoutedRecipients checks what the host is given for each routing
// form once it is allowed: the mailbox, without its source route, and the
// local part as sent.
func TestRoutedRecipients(t *testing.T) {
	cfg := newConfig(func(c *Config) {
		c.AllowSourceRoute, c.AllowPercentHack, c.AllowBangPath = true, true, true
		c.MaxRecipients = 10
	})
	in := inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<@a.test,@b.test:u@c.test>\r\n" +
		"RCPT TO:<user%other.net@example.com>\r\nRCPT TO:<a!b@example.com>\r\nDATA\r\nx\r\n.\r\n"
	checkSplits(t, cfg, in, rEHLO+rMail+rRcpt+rRcpt+rRcpt+rGo+
		msgEnv("a@b.test", "[u@c.test user%other.net@example.com a!b@example.com]", "x\r\n")+rQueued)
}

// TestPathLength checks RFC 5321 4.5.3.1.3: a path of 256 octets with its
// brackets is taken, one of 257 is bad address syntax of the sender
// (5.1.7) or the recipient (5.1.3), and a domain over 255 octets
// (4.5.3.1.2) cannot hide in a path that short.
func TestPathLength(t *testing.T) {
	// local@domain of 254 octets: 256 with the brackets.
	domain := strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + "." + strings.Repeat("e", 60)
	at256 := strings.Repeat("a", 254-1-len(domain)) + "@" + domain
	at257 := "a" + at256
	long := "a@" + strings.Repeat("b", 62) + strings.Repeat("."+strings.Repeat("c", 62), 4)
	runDialogs(t, []dialog{
		{
			name: "256 octets",
			in:   inEHLO + "MAIL FROM:<" + at256 + ">\r\nRCPT TO:<" + at256 + ">\r\n",
			want: rEHLO + rMail + rRcpt,
		},
		{
			name: "257 octets",
			in:   inEHLO + "MAIL FROM:<" + at257 + ">\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<" + at257 + ">\r\nRCPT TO:<d@e.test>\r\n",
			want: rEHLO + "501 5.1.7 Bad sender address syntax: path longer than 256 octets\r\n" + rMail +
				"501 5.1.3 Bad recipient address syntax: path longer than 256 octets\r\n" + rRcpt,
		},
		{
			name: "a domain over 255 octets",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<" + long + ">\r\n",
			want: rEHLO + rMail + "501 5.1.3 Bad recipient address syntax: path longer than 256 octets\r\n",
		},
	})
}

// TestControlInAddress checks NUL, a lone CR and a bare LF inside the path
// of MAIL and RCPT: one 501 with the address code for the one command the
// client sent, after which the next command is answered as usual. A bare
// LF elsewhere still ends a line.
func TestControlInAddress(t *testing.T) {
	ctlFrom := "501 5.1.7 Bad sender address syntax: control character\r\n"
	ctlTo := "501 5.1.3 Bad recipient address syntax: control character\r\n"
	bareLF := "500 5.5.2 Error: command lines must end with CRLF\r\n"
	runDialogs(t, []dialog{
		{
			name: "NUL, CR and LF in MAIL FROM",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a\x00b@c.test>\r\n" + "MAIL FROM:<a\rb@c.test>\r\n" +
				"MAIL FROM:<a\nb@c.test>\r\n" + "MAIL FROM:<a@c.test\n>\r\n" +
				"MAIL FROM:<\"a\nb\"@c.test>\r\n" + "MAIL FROM: <\n\n\n>\r\n" + "MAIL FROM:<a@b.test>\r\n",
			want: rEHLO + strings.Repeat(ctlFrom, 6) + rMail,
		},
		{
			name: "NUL, CR and LF in RCPT TO",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test>\r\n" + "RCPT TO:<d\x00@e.test>\r\n" + "RCPT TO:<d@e.test\r>\r\n" +
				"RCPT TO:<d\n@e.test>\r\n" + "rcpt to:<\nd@e.test>\r\n" + "RCPT TO:<d@e.test>\r\n",
			want: rEHLO + rMail + strings.Repeat(ctlTo, 4) + rRcpt,
		},
		{
			// The line is refused before the command's order is looked
			// at, as every bad line is.
			name: "pipelined: one reply per command",
			cfg:  lenient,
			in:   inEHLO + "MAIL FROM:<a\nb@c.test>\r\nRCPT TO:<d\n@e.test>\r\nRCPT TO:<d@e.test>\r\nNOOP\r\n",
			want: rEHLO + ctlFrom + ctlTo + "503 5.5.1 Error: need MAIL command\r\n" + rOK,
		},
		{
			name: "in the parameters: a syntax error",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test> SIZE=1\x00\r\nMAIL FROM:\x00<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n" +
				"RCPT TO:<d@e.test>\x7f\r\n",
			want: rEHLO + strings.Repeat("501 5.5.4 Syntax: MAIL FROM:<address>\r\n", 2) + rMail +
				"501 5.5.4 Syntax: RCPT TO:<address>\r\n",
		},
		{
			name: "a bare LF outside the path ends the line",
			cfg:  lenient,
			in:   inEHLO + "MAIL FROM:<a@b.test>\nMAIL FROM:<a@b.test> SIZE=1\nMAIL\n<x\n" + "NOOP\r\n",
			want: rEHLO + strings.Repeat(bareLF, 4) + rOK,
		},
		{
			name: "the line of a bare LF in a path still ends with a bare LF",
			cfg:  lenient,
			in:   inEHLO + "MAIL FROM:<a\nb@c.test>\nNOOP\r\n",
			want: rEHLO + bareLF + rOK,
		},
		{
			name: "a path that never closes is at most 256 octets",
			cfg:  lenient,
			in:   inEHLO + "MAIL FROM:<a\n" + strings.Repeat("b", 300) + "\nNOOP\r\n",
			want: rEHLO + bareLF + rOK,
		},
		{
			name: "CRLF ends the line even inside a path",
			cfg:  lenient,
			in:   inEHLO + "MAIL FROM:<a\r\nb@c.test>\r\nNOOP\r\n",
			want: rEHLO + "501 5.5.4 Syntax: MAIL FROM:<address>\r\n500 5.5.1 Error: command not recognized\r\n" + rOK,
		},
	})
}
