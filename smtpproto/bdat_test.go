package smtpproto

import (
	"fmt"
	"strings"
	"testing"
)

const (
	rChunk      = "250 2.0.0 Ok: chunk received\r\n"
	rBdatBroken = "501 5.5.4 Syntax: BDAT count [LAST]; closing connection, framing is lost\r\nCLOSE\n"
	rBdatSyntax = "501 5.5.4 Syntax: BDAT count [LAST]\r\n"
	rNeedMail   = "503 5.5.1 Error: need MAIL command\r\n"
)

// bdat frames chunk as one BDAT command and its octets (RFC 3030 2).
func bdat(chunk string, last bool) string {
	if last {
		return fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk)
	}
	return fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk)
}

func TestBdatFraming(t *testing.T) {
	// Chunks full of things that would be commands or terminators in any
	// other state.
	c1 := "line\r\n.\r\nQUIT\r\nRSET\r\n"
	c2 := "\x00\xff\r\n.\r\n\r\n.\r\nMAIL FROM:<x@y.test>\r\nBDAT 3 LAST\r\n"
	head := rEHLO + rMail + rRcpt
	runDialogs(t, []dialog{
		{
			name: "chunks are data, never commands",
			in:   inEHLO + inEnv + bdat(c1, false) + bdat(c2, true) + "QUIT\r\n",
			want: head + rChunk + msg(c1+c2) + rQueued + rBye,
		},
		{
			name: "one LAST chunk",
			in:   inEHLO + inEnv + "bdat 5 last\r\nhello",
			want: head + msg("hello") + rQueued,
		},
		{
			name: "an empty LAST chunk",
			in:   inEHLO + inEnv + bdat("abc", false) + bdat("", false) + "BDAT 0 LAST\r\nNOOP\r\n",
			want: head + rChunk + rChunk + msg("abc") + rQueued + rOK,
		},
		{
			name: "an empty message",
			in:   inEHLO + inEnv + "BDAT 0 LAST\r\n",
			want: head + msg("") + rQueued,
		},
		{
			name: "the next transaction may use DATA",
			in:   inEHLO + inEnv + bdat("x", true) + inEnv + "DATA\r\ny\r\n.\r\n",
			want: head + msg("x") + rQueued + rMail + rRcpt + rGo + msg("y\r\n") + rQueued,
		},
		{
			name: "a huge count keeps the framing",
			in:   inEHLO + inEnv + "BDAT 99999999999999999999\r\nQUIT\r\nNOOP\r\n",
			want: head,
		},
	})
}

func TestBdatErrors(t *testing.T) {
	head := rEHLO + rMail + rRcpt
	runDialogs(t, []dialog{
		{
			name: "BDAT before MAIL",
			in:   inEHLO + "BDAT 6\r\nQUIT\r\nNOOP\r\n",
			want: rEHLO + rNeedMail + rOK,
		},
		{
			name: "BDAT before HELO",
			in:   "BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
			want: rNeedMail + rOK,
		},
		{
			name: "BDAT before RCPT",
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\nBDAT 6\r\nQUIT\r\nRCPT TO:<d@e.test>\r\n" + bdat("ok", true),
			want: rEHLO + rMail + "554 5.5.1 Error: no valid recipients\r\n" + rRcpt + msg("ok") + rQueued,
		},
		{
			name: "a bad keyword",
			in:   inEHLO + inEnv + "BDAT 5 LATE\r\nQUIT.BDAT 6 LAST more\r\nQUIT\r\n" + bdat("hi", true),
			want: head + rBdatSyntax + rBdatSyntax + msg("hi") + rQueued,
		},
		{
			name: "no count",
			in:   inEHLO + inEnv + "BDAT\r\nNOOP\r\n",
			want: head + rBdatBroken,
		},
		{
			name: "LAST without a count",
			in:   inEHLO + inEnv + "BDAT LAST\r\nNOOP\r\n",
			want: head + rBdatBroken,
		},
		{
			name: "a negative count",
			in:   inEHLO + "BDAT -1\r\nNOOP\r\n",
			want: rEHLO + rBdatBroken,
		},
		{
			name: "a count that is not a number",
			in:   "BDAT 1x\r\nNOOP\r\n",
			want: rBdatBroken,
		},
		{
			name: "a count over 20 digits",
			in:   "BDAT 100000000000000000000\r\nNOOP\r\n",
			want: rBdatBroken,
		},
		{
			name: "refused chunks count toward the error limit",
			in:   inEHLO + strings.Repeat(bdat("x", false), 6),
			want: rEHLO + strings.Repeat(rNeedMail, 5) + rClosed,
		},
		{
			name: "DATA after BDAT",
			in:   inEHLO + inEnv + bdat("abc", false) + "DATA\r\n" + bdat("de", true),
			want: head + rChunk + "503 5.5.1 Error: DATA and BDAT cannot be mixed in one transaction\r\n" +
				msg("abcde") + rQueued,
		},
	})
}

func TestBdatSize(t *testing.T) {
	tooBig := "552 5.3.4 Message size exceeds fixed limit\r\n"
	head := rEHLO + rMail + rRcpt
	a, b := strings.Repeat("a", 600), strings.Repeat("b\r\n.\r\n", 100)
	runDialogs(t, []dialog{
		{
			name: "the chunk that crosses the limit is refused at its end",
			in:   inEHLO + inEnv + bdat(a, false) + bdat(b, false) + bdat("hello", true) + "NOOP\r\n",
			want: head + rChunk + tooBig + rNeedMail + rOK,
		},
		{
			name: "one LAST chunk over the limit",
			in:   inEHLO + inEnv + bdat(a+b, true) + inEnv + bdat("ok", true),
			want: head + tooBig + rMail + rRcpt + msg("ok") + rQueued,
		},
		{
			name: "a chunk at the limit",
			in:   inEHLO + inEnv + bdat(a+"\r\n", false) + bdat(strings.Repeat("c", 398), true),
			want: head + rChunk + msg(a+"\r\n"+strings.Repeat("c", 398)) + rQueued,
		},
	})
}

// TestBdatHostRefusal drives a host that refuses the transaction at the
// first BDAT: the refusal comes after the chunk, whose octets are dropped.
func TestBdatHostRefusal(t *testing.T) {
	host := func(ev Event) Reply {
		if ev.Kind == KindData {
			return Reply{Code: 554, Enhanced: "5.7.1", Text: "Transaction refused"}
		}
		return Reply{}
	}
	in := inEHLO + inEnv + "BDAT 12\r\nQUIT\r\nRSET\r\nNOOP\r\n" + bdat("x", true) + "QUIT\r\n"
	want := rEHLO + rMail + rRcpt + "554 5.7.1 Transaction refused\r\n" + rOK + rNeedMail + rBye
	for i, pieces := range splits([]byte(in)) {
		if got := converse(testConfig(), host, pieces...); got != want {
			t.Fatalf("input fed %s:\n%s", splitName(i), diffTranscript(got, want))
		}
	}
}

// TestBdatMessageRefusal drives a host that refuses the finished message.
func TestBdatMessageRefusal(t *testing.T) {
	host := func(ev Event) Reply {
		if ev.Kind == KindMessage {
			return Reply{Code: 451, Text: "Try later"}
		}
		return Reply{}
	}
	in := inEHLO + inEnv + bdat("a", false) + bdat("b", true) + bdat("c", true)
	want := rEHLO + rMail + rRcpt + rChunk + "451 4.0.0 Try later\r\n" + rNeedMail
	for i, pieces := range splits([]byte(in)) {
		if got := converse(testConfig(), host, pieces...); got != want {
			t.Fatalf("input fed %s:\n%s", splitName(i), diffTranscript(got, want))
		}
	}
}

// TestBdatBodyPolicies checks that the bare CR/LF and line-length policies
// of DATA also hold for a message sent with BDAT.
func TestBdatBodyPolicies(t *testing.T) {
	head := rEHLOBig + rMail + rRcpt
	checkSplits(t, bigConfig(), inEHLO+inEnv+bdat("a\n.\n"+smuggle+"\r\n", true), head+rBareEOL)
	checkSplits(t, bigConfig(), inEHLO+inEnv+bdat(strings.Repeat("x", 999)+"\r\n", true), head+rLongLine)
}

// TestBdatLoneCR: a BDAT message that ends in a lone CR has a bare line
// ending, and that finding does not leak into the next BDAT message.
func TestBdatLoneCR(t *testing.T) {
	head := rEHLO + rMail + rRcpt
	bare := "550 5.6.0 Message refused: bare CR or LF in message; lines must end with CRLF\r\n"
	runDialogs(t, []dialog{
		{
			name: "lone CR at the end",
			in:   inEHLO + inEnv + bdat("abc\r", true),
			want: head + bare,
		},
		{
			name: "the next message starts clean",
			in:   inEHLO + inEnv + bdat("abc\r", true) + inEnv + bdat("x\r\n", true),
			want: head + bare + rMail + rRcpt + msg("x\r\n") + rQueued,
		},
	})
}
