package smtpproto

import (
	"fmt"
	"strings"
	"testing"
)

// Pieces of dialog that many golden transcripts share. The server name is
// "mx.test" and the size limit 1000 octets (testConfig).
const (
	inEHLO = "EHLO client.test\r\n"
	inEnv  = "MAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\n"

	rEHLO = "250-mx.test\r\n" +
		"250-PIPELINING\r\n" +
		"250-SIZE 1000\r\n" +
		"250-8BITMIME\r\n" +
		"250-ENHANCEDSTATUSCODES\r\n" +
		"250-SMTPUTF8\r\n" +
		"250 CHUNKING\r\n"
	rOK     = "250 2.0.0 Ok\r\n"
	rMail   = "250 2.1.0 Ok\r\n"
	rRcpt   = "250 2.1.5 Ok\r\n"
	rGo     = "354 End data with <CR><LF>.<CR><LF>\r\n"
	rQueued = "250 2.0.0 Ok: queued as X\r\n"
	rBye    = "221 2.0.0 Bye\r\nCLOSE\n"
	rClosed = "421 4.7.0 Too many errors, closing connection\r\nCLOSE\n"
)

// msg is the transcript line of a message from a@b.test to d@e.test.
func msg(body string) string { return msgEnv("a@b.test", "[d@e.test]", body) }

// msgEnv is the transcript line drive writes for a delivered message.
func msgEnv(from, rcpts, body string) string {
	return fmt.Sprintf("MSG from=%s rcpts=%s body=%q\n", from, rcpts, body)
}

// dialog is one scripted conversation and its exact transcript.
type dialog struct {
	name string
	cfg  func() *Config // nil means testConfig
	in   string
	want string
}

// runDialogs checks every dialog under every split of its input.
func runDialogs(t *testing.T, dialogs []dialog) {
	t.Helper()
	for _, d := range dialogs {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			if d.cfg != nil {
				cfg = d.cfg()
			}
			checkSplits(t, cfg, d.in, d.want)
		})
	}
}

// checkSplits requires the same transcript, want, whatever the input's
// segmentation.
func checkSplits(t *testing.T, cfg *Config, in, want string) {
	t.Helper()
	for i, pieces := range splits([]byte(in)) {
		if got := drive(cfg, pieces...); got != want {
			t.Fatalf("input fed %s:\n%s", splitName(i), diffTranscript(got, want))
		}
	}
}

// splitName describes the i-th segmentation returned by splits.
func splitName(i int) string {
	switch i {
	case 0:
		return "whole"
	case 1:
		return "byte by byte"
	}
	return fmt.Sprintf("split at offset %d", i-1)
}

// diffTranscript shows the first differing line and both transcripts.
func diffTranscript(got, want string) string {
	g, w := strings.SplitAfter(got, "\n"), strings.SplitAfter(want, "\n")
	i := 0
	for i < len(g) && i < len(w) && g[i] == w[i] {
		i++
	}
	line := func(l []string) string {
		if i < len(l) {
			return fmt.Sprintf("%q", l[i])
		}
		return "(end)"
	}
	return fmt.Sprintf("first difference at line %d:\n got %s\nwant %s\nwhole transcript got:\n%s\nwant:\n%s",
		i+1, line(g), line(w), got, want)
}

// lenient is testConfig with room for many protocol errors.
func lenient() *Config { return newConfig(func(c *Config) { c.MaxErrors = 100 }) }

func TestGreeting(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "HELO gets the plain name",
			in:   "HELO client.test\r\nQUIT\r\n",
			want: "250 mx.test\r\n" + rBye,
		},
		{
			name: "EHLO lists the keywords",
			in:   inEHLO + "QUIT\r\n",
			want: rEHLO + rBye,
		},
		{
			name: "verbs are case-insensitive",
			in:   "ehlo client.test\r\nmail from:<a@b.test>\r\nRcpt To:<d@e.test>\r\nqUiT\r\n",
			want: rEHLO + rMail + rRcpt + rBye,
		},
		{
			name: "extra keywords follow the built-in ones",
			cfg: func() *Config {
				return newConfig(func(c *Config) { c.Extensions = []string{"STARTTLS", "AUTH PLAIN"} })
			},
			in: inEHLO,
			want: "250-mx.test\r\n" +
				"250-PIPELINING\r\n" +
				"250-SIZE 1000\r\n" +
				"250-8BITMIME\r\n" +
				"250-ENHANCEDSTATUSCODES\r\n" +
				"250-SMTPUTF8\r\n" +
				"250-CHUNKING\r\n" +
				"250-STARTTLS\r\n" +
				"250 AUTH PLAIN\r\n",
		},
		{
			name: "HELO and EHLO need exactly one name",
			cfg:  lenient,
			in:   "HELO\r\nHELO \r\nHELO a b\r\nEHLO\r\nEHLO a b\r\n",
			want: "501 5.5.4 Syntax: HELO hostname\r\n" +
				"501 5.5.4 Syntax: HELO hostname\r\n" +
				"501 5.5.4 Syntax: HELO hostname\r\n" +
				"501 5.5.4 Syntax: EHLO hostname\r\n" +
				"501 5.5.4 Syntax: EHLO hostname\r\n",
		},
		{
			name: "a second EHLO ends the transaction",
			in:   inEHLO + inEnv + inEHLO + "RCPT TO:<d@e.test>\r\nDATA\r\n",
			want: rEHLO + rMail + rRcpt + rEHLO +
				"503 5.5.1 Error: need MAIL command\r\n" +
				"503 5.5.1 Error: need MAIL command\r\n",
		},
	})
}

func TestSequence(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "MAIL before HELO",
			in:   "MAIL FROM:<a@b.test>\r\nHELO client.test\r\nMAIL FROM:<a@b.test>\r\n",
			want: "503 5.5.1 Error: send HELO/EHLO first\r\n250 mx.test\r\n" + rMail,
		},
		{
			name: "RCPT before MAIL",
			in:   inEHLO + "RCPT TO:<d@e.test>\r\n",
			want: rEHLO + "503 5.5.1 Error: need MAIL command\r\n",
		},
		{
			name: "DATA before MAIL",
			in:   inEHLO + "DATA\r\n",
			want: rEHLO + "503 5.5.1 Error: need MAIL command\r\n",
		},
		{
			name: "DATA before RCPT",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\nDATA\r\nQUIT\r\n",
			want: rEHLO + rMail + "554 5.5.1 Error: no valid recipients\r\n" + rBye,
		},
		{
			name: "nested MAIL",
			in:   inEHLO + inEnv + "MAIL FROM:<x@y.test>\r\nDATA\r\nhi\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + "503 5.5.1 Error: nested MAIL command\r\n" +
				rGo + msg("hi\r\n") + rQueued,
		},
		{
			name: "RSET ends the transaction",
			in:   inEHLO + inEnv + "RSET\r\nDATA\r\nRCPT TO:<d@e.test>\r\nMAIL FROM:<x@y.test>\r\n",
			want: rEHLO + rMail + rRcpt + rOK +
				"503 5.5.1 Error: need MAIL command\r\n" +
				"503 5.5.1 Error: need MAIL command\r\n" +
				rMail,
		},
		{
			name: "RSET before HELO and RSET with an argument",
			in:   "RSET\r\nRSET now\r\n",
			want: rOK + "501 5.5.4 Syntax error: no arguments allowed\r\n",
		},
		{
			name: "too many recipients is not an error",
			in: inEHLO + "MAIL FROM:<a@b.test>\r\n" +
				"RCPT TO:<r1@e.test>\r\nRCPT TO:<r2@e.test>\r\nRCPT TO:<r3@e.test>\r\n" +
				"RCPT TO:<r4@e.test>\r\nRCPT TO:<r5@e.test>\r\nRCPT TO:<r6@e.test>\r\n" +
				"RCPT TO:<r7@e.test>\r\nRCPT TO:<r8@e.test>\r\nDATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rRcpt + rRcpt +
				strings.Repeat("452 4.5.3 Error: too many recipients\r\n", 5) +
				rGo + msgEnv("a@b.test", "[r1@e.test r2@e.test r3@e.test]", "x\r\n") + rQueued,
		},
	})
}

func TestSimpleCommands(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "NOOP VRFY HELP before HELO",
			in:   "NOOP\r\nNOOP anything\r\nVRFY postmaster\r\nHELP\r\nHELP MAIL\r\n",
			want: rOK + rOK +
				"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n" +
				"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n" +
				"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n",
		},
		{
			name: "NOOP VRFY HELP keep the transaction",
			in:   inEHLO + inEnv + "NOOP\r\nVRFY d@e.test\r\nHELP\r\nDATA\r\nbody\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rOK +
				"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n" +
				"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n" +
				rGo + msg("body\r\n") + rQueued,
		},
		{
			name: "unknown and unimplemented commands",
			in:   "FOO\r\n\r\nEXPN list\r\nSTARTTLS\r\n",
			want: "500 5.5.1 Error: command not recognized\r\n" +
				"500 5.5.1 Error: command not recognized\r\n" +
				"502 5.5.1 Error: command not implemented\r\n" +
				"502 5.5.1 Error: command not implemented\r\n",
		},
		{
			name: "QUIT ends a pipelined burst",
			in:   inEHLO + "QUIT\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\nHELP\r\n",
			want: rEHLO + rBye,
		},
		{
			name: "QUIT in the middle of a transaction",
			in:   inEHLO + inEnv + "QUIT\r\nDATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rBye,
		},
	})
}

func TestPipelining(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "a whole session in one write",
			in: inEHLO + inEnv + "DATA\r\nSubject: one\r\n\r\nfirst\r\n.\r\n" +
				"MAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\nsecond\r\n.\r\n" +
				"NOOP\r\nQUIT\r\n",
			want: rEHLO + rMail + rRcpt + rGo + msg("Subject: one\r\n\r\nfirst\r\n") + rQueued +
				rMail + rRcpt + rRcpt + rGo + msgEnv("", "[x@y.test z@y.test]", "second\r\n") + rQueued +
				rOK + rBye,
		},
		{
			name: "errors inside a burst are answered in place",
			in: inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<bad>\r\nRCPT TO:<d@e.test>\r\n" +
				"DATA\r\nok\r\n.\r\nQUIT\r\n",
			want: rEHLO + rMail + "501 5.1.3 Bad recipient address syntax\r\n" + rRcpt +
				rGo + msg("ok\r\n") + rQueued + rBye,
		},
	})
}

func TestSyntaxErrors(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "MAIL",
			cfg:  lenient,
			in: inEHLO +
				"MAIL\r\n" +
				"MAIL TO:<a@b.test>\r\n" +
				"MAIL FROM:a@b.test\r\n" +
				"MAIL FROM:<a@b.test\r\n" +
				"MAIL FROM:<a@b.test>SIZE=10\r\n" +
				"MAIL FROM:<a@@b.test>\r\n" +
				"MAIL FROM:<a.@b.test>\r\n" +
				"MAIL FROM:<a@b..test>\r\n" +
				"MAIL FROM:<a@-b.test>\r\n" +
				"MAIL FROM:<@b.test>\r\n" +
				"MAIL FROM: <a@b.test>\r\n",
			want: rEHLO +
				strings.Repeat("501 5.5.4 Syntax: MAIL FROM:<address>\r\n", 5) +
				strings.Repeat("501 5.1.7 Bad sender address syntax\r\n", 5) +
				rMail,
		},
		{
			name: "RCPT",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test>\r\n" +
				"RCPT\r\n" +
				"RCPT FROM:<d@e.test>\r\n" +
				"RCPT TO:d@e.test\r\n" +
				"RCPT TO:<d@e.test\r\n" +
				"RCPT TO:<d..x@e.test>\r\n" +
				"RCPT TO:<d@e.test.>\r\n" +
				"RCPT TO:<d>\r\n" +
				"RCPT TO:<@e.test:>\r\n" +
				"RCPT TO: <d@e.test>\r\n",
			want: rEHLO + rMail +
				strings.Repeat("501 5.5.4 Syntax: RCPT TO:<address>\r\n", 4) +
				strings.Repeat("501 5.1.3 Bad recipient address syntax\r\n", 4) +
				rRcpt,
		},
		{
			name: "DATA takes no argument",
			in:   inEHLO + inEnv + "DATA now\r\nDATA\r\nx\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + "501 5.5.4 Syntax error: no arguments allowed\r\n" +
				rGo + msg("x\r\n") + rQueued,
		},
		{
			name: "a path over 256 octets",
			in: inEHLO + "MAIL FROM:<" + strings.Repeat("a", 64) + "@" + strings.Repeat("b", 63) +
				"." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ">\r\n",
			want: rEHLO + "501 5.1.7 Bad sender address syntax: path longer than 256 octets\r\n",
		},
	})
}

func TestParameters(t *testing.T) {
	runDialogs(t, []dialog{
		{
			name: "unknown MAIL and RCPT parameters",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test> FOO=1\r\n" +
				"MAIL FROM:<a@b.test> RET=HDRS\r\n" +
				"MAIL FROM:<a@b.test>\r\n" +
				"RCPT TO:<d@e.test> NOTIFY=NEVER\r\n" +
				"RCPT TO:<d@e.test> ORCPT=rfc822;d@e.test\r\n" +
				"RCPT TO:<d@e.test>\r\n",
			want: rEHLO +
				strings.Repeat("555 5.5.4 Unsupported MAIL/RCPT parameter\r\n", 2) + rMail +
				strings.Repeat("555 5.5.4 Unsupported MAIL/RCPT parameter\r\n", 2) + rRcpt,
		},
		{
			name: "parameters need EHLO",
			in:   "HELO client.test\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\nMAIL FROM:<a@b.test>\r\n",
			want: "250 mx.test\r\n555 5.5.4 Unsupported MAIL/RCPT parameter\r\n" + rMail,
		},
		{
			name: "bad parameter values",
			cfg:  lenient,
			in: inEHLO + "MAIL FROM:<a@b.test> BODY=9BIT\r\n" +
				"MAIL FROM:<a@b.test> BODY\r\n" +
				"MAIL FROM:<a@b.test> SIZE\r\n" +
				"MAIL FROM:<a@b.test> SIZE=\r\n" +
				"MAIL FROM:<a@b.test> SIZE=12k\r\n" +
				"MAIL FROM:<a@b.test> SIZE=-1\r\n" +
				// RFC 6531 3.4: SMTPUTF8 takes no value.
				"MAIL FROM:<a@b.test> SMTPUTF8=YES\r\n" +
				"MAIL FROM:<a@b.test> SMTPUTF8=\r\n",
			want: rEHLO + strings.Repeat("501 5.5.4 Bad MAIL parameter value\r\n", 8),
		},
		{
			name: "known parameters in any case and order",
			in: inEHLO + "MAIL FROM:<a@b.test> smtputf8 Body=8bitmime  SIZE=10\r\nRSET\r\n" +
				"MAIL FROM:<a@b.test> BODY=7BIT\r\n",
			want: rEHLO + rMail + rOK + rMail,
		},
	})
}

func TestSizeLimit(t *testing.T) {
	tooBig := "552 5.3.4 Message size exceeds fixed limit\r\n"
	runDialogs(t, []dialog{
		{
			name: "declared size",
			in: inEHLO +
				"MAIL FROM:<a@b.test> SIZE=1001\r\n" +
				"MAIL FROM:<a@b.test> SIZE=9223372036854775807\r\n" +
				"MAIL FROM:<a@b.test> SIZE=9223372036854775808\r\n" +
				"MAIL FROM:<a@b.test> SIZE=99999999999999999999\r\n" +
				"MAIL FROM:<a@b.test> SIZE=1000\r\n",
			want: rEHLO + tooBig + tooBig + tooBig + tooBig + rMail,
		},
		{
			// RFC 1870 6: size-value is 1*20DIGIT, so 25 digits is a
			// syntax error, not an overflow.
			name: "a 25-digit size is a bad value",
			in:   inEHLO + "MAIL FROM:<a@b.test> SIZE=9999999999999999999999999\r\nMAIL FROM:<a@b.test> SIZE=0000000000000000000000001\r\n",
			want: rEHLO + "501 5.5.4 Bad MAIL parameter value\r\n501 5.5.4 Bad MAIL parameter value\r\n",
		},
		{
			name: "a size refusal does not count as an error",
			in:   inEHLO + strings.Repeat("MAIL FROM:<a@b.test> SIZE=5000\r\n", 6) + "NOOP\r\n",
			want: rEHLO + strings.Repeat(tooBig, 6) + rOK,
		},
		{
			name: "a body at the limit",
			in:   inEHLO + inEnv + "DATA\r\n" + strings.Repeat("x", 998) + "\r\n.\r\n",
			want: rEHLO + rMail + rRcpt + rGo + msg(strings.Repeat("x", 998)+"\r\n") + rQueued,
		},
		{
			name: "a body over the limit is drained and the connection stays usable",
			in: inEHLO + inEnv + "DATA\r\n" + strings.Repeat("0123456789abcdef\r\n", 60) +
				"QUIT\r\n.\r\n" +
				"RCPT TO:<d@e.test>\r\n" + inEnv + "DATA\r\nsmall\r\n.\r\nQUIT\r\n",
			want: rEHLO + rMail + rRcpt + rGo + tooBig +
				"503 5.5.1 Error: need MAIL command\r\n" +
				rMail + rRcpt + rGo + msg("small\r\n") + rQueued + rBye,
		},
	})
}

// TestControlBytes checks every control byte but LF: in the path of MAIL
// or RCPT it is bad address syntax (501 5.1.7, 501 5.1.3), elsewhere a bad
// command line (500 5.5.2); one reply each, and the next command is
// answered as usual.
func TestControlBytes(t *testing.T) {
	ctl := "500 5.5.2 Error: control characters in command\r\n"
	ctlFrom := "501 5.1.7 Bad sender address syntax: control character\r\n"
	ctlTo := "501 5.1.3 Bad recipient address syntax: control character\r\n"
	var ctlBytes []byte
	for c := byte(0); c < 0x20; c++ {
		if c != '\n' {
			ctlBytes = append(ctlBytes, c)
		}
	}
	ctlBytes = append(ctlBytes, 0x7f)
	for _, c := range ctlBytes {
		t.Run(fmt.Sprintf("%#02x", c), func(t *testing.T) {
			t.Parallel()
			b := string([]byte{c})
			in := "HELO a" + b + "b\r\n" + inEHLO +
				"MAIL FROM:<a" + b + "@b.test>\r\n" +
				"MAIL FROM:<\"a" + b + "\"@b.test>\r\n" +
				"MAIL FROM:<a@b.test>\r\nRCPT TO:<d@e" + b + ".test>\r\nQUIT\r\n"
			want := ctl + rEHLO + ctlFrom + ctlFrom + rMail + ctlTo + rBye
			checkSplits(t, testConfig(), in, want)
		})
	}
}

func TestLineLimits(t *testing.T) {
	tooLong := "500 5.5.2 Error: line too long\r\n"
	runDialogs(t, []dialog{
		{
			name: "a 512-octet command is run",
			in:   "NOOP " + strings.Repeat("x", 505) + "\r\n",
			want: rOK,
		},
		{
			name: "a 513-octet command gets one reply",
			in:   "NOOP " + strings.Repeat("x", 506) + "\r\nNOOP\r\n",
			want: tooLong + rOK,
		},
		{
			name: "the tail of a long line is never run",
			in:   "NOOP " + strings.Repeat("x", 507) + "QUIT\r\nNOOP\r\n",
			want: tooLong + rOK,
		},
		{
			name: "a very long line counts once",
			in: inEHLO + "MAIL FROM:<" + strings.Repeat("a", 600) + "QUIT" + strings.Repeat("b", 1400) + ">\r\n" +
				"HELP\r\n",
			want: rEHLO + tooLong +
				"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n",
		},
		{
			name: "the limit can be raised",
			cfg:  func() *Config { return newConfig(func(c *Config) { c.MaxLineLength = 1024 }) },
			in:   "NOOP " + strings.Repeat("x", 1017) + "\r\nNOOP " + strings.Repeat("x", 1018) + "\r\n",
			want: rOK + tooLong,
		},
		{
			name: "bare LF ends a command line and is refused",
			in:   "NOOP\nHELO x\nQUIT\n\nNOOP\r\n",
			want: strings.Repeat("500 5.5.2 Error: command lines must end with CRLF\r\n", 4) + rOK,
		},
		{
			name: "long lines count toward the error limit",
			in:   strings.Repeat(strings.Repeat("y", 600)+"\r\n", 6),
			want: strings.Repeat(tooLong, 5) + rClosed,
		},
	})
}

func TestErrorLimit(t *testing.T) {
	unknown := "500 5.5.1 Error: command not recognized\r\n"
	runDialogs(t, []dialog{
		{
			name: "the fifth error closes",
			in:   "A\r\nB\r\nC\r\nD\r\nE\r\nNOOP\r\n",
			want: strings.Repeat(unknown, 5) + rClosed,
		},
		{
			name: "every kind of protocol error counts",
			in: "MAIL FROM:<a@b.test>\r\n" + inEHLO + "RCPT TO:<d@e.test>\r\n" +
				"NOOP\n" + "MAIL FROM:<a@b.test> X=1\r\n" + "VRFY\x01\r\nNOOP\r\n",
			want: "503 5.5.1 Error: send HELO/EHLO first\r\n" + rEHLO +
				"503 5.5.1 Error: need MAIL command\r\n" +
				"500 5.5.2 Error: command lines must end with CRLF\r\n" +
				"555 5.5.4 Unsupported MAIL/RCPT parameter\r\n" +
				"500 5.5.2 Error: control characters in command\r\n" + rClosed,
		},
		{
			name: "successful commands do not reset the count",
			in:   "A\r\nNOOP\r\nB\r\nNOOP\r\nC\r\nNOOP\r\nD\r\nNOOP\r\nE\r\nNOOP\r\n",
			want: strings.Repeat(unknown+rOK, 4) + unknown + rClosed,
		},
	})
}

func TestCrossProtocol(t *testing.T) {
	http := "500 5.5.1 Error: this is an SMTP server, not HTTP\r\n"
	header := "500 5.5.1 Error: a mail header is not a command\r\n"
	unknown := "500 5.5.1 Error: command not recognized\r\n"
	runDialogs(t, []dialog{
		{
			name: "GET",
			in:   "GET / HTTP/1.1\r\nHost: mx.test\r\n\r\nQUIT\r\n",
			want: http + header + unknown + rBye,
		},
		{
			name: "every HTTP method",
			cfg:  lenient,
			in: "GET /\r\nPOST /\r\nHEAD /\r\nPUT /\r\nDELETE /\r\nOPTIONS *\r\nCONNECT mx.test:25\r\n" +
				"TRACE /\r\nPATCH /\r\nget /\r\n",
			want: strings.Repeat(http, 10),
		},
		{
			name: "a POST request uses up the error limit",
			in: "POST /submit HTTP/1.1\r\nHost: mx.test\r\nContent-Type: text/plain\r\n" +
				"Content-Length: 22\r\n\r\nMAIL FROM:<a@b.test>\r\n",
			want: http + header + header + header + unknown + rClosed,
		},
		{
			name: "header lines",
			cfg:  lenient,
			in:   "Host: x\r\nFrom: a@b.test\r\nSubject:\r\nX-Y: z\r\n",
			want: strings.Repeat(header, 4),
		},
	})
}
