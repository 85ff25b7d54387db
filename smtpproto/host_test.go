package smtpproto

import (
	"strings"
	"testing"
)

// TestTxParameters checks what the host sees in Tx and Protocol when a
// message is complete.
func TestTxParameters(t *testing.T) {
	cases := []struct {
		name, in string
		want     Tx
		proto    string
	}{
		{
			name:  "HELO",
			in:    "HELO c.test\r\nMAIL FROM:<a@b.test>\r\n",
			want:  Tx{Active: true},
			proto: "SMTP",
		},
		{
			name:  "EHLO",
			in:    inEHLO + "MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=120\r\n",
			want:  Tx{Active: true, Body8Bit: true, DeclaredSize: 120},
			proto: "ESMTP",
		},
		{
			name:  "SMTPUTF8",
			in:    inEHLO + "MAIL FROM:<a@b.test> SMTPUTF8\r\n",
			want:  Tx{Active: true, SMTPUTF8: true},
			proto: "UTF8SMTP",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSession(testConfig())
			in := []byte(tc.in + "RCPT TO:<d@e.test>\r\nDATA\r\nx\r\n.\r\n")
			for {
				n, ev := s.Next(in)
				in = in[n:]
				if ev.Kind == KindNeedMore {
					t.Fatal("no message")
				}
				if ev.Kind == KindMessage {
					break
				}
				if ev.Kind != KindReply {
					s.Resolve(Reply{})
				}
			}
			got := *s.Tx()
			if got.Active != tc.want.Active || got.Body8Bit != tc.want.Body8Bit ||
				got.SMTPUTF8 != tc.want.SMTPUTF8 || got.DeclaredSize != tc.want.DeclaredSize {
				t.Errorf("Tx = %+v, want %+v", got, tc.want)
			}
			if p := s.Protocol(); p != tc.proto {
				t.Errorf("Protocol() = %q, want %q", p, tc.proto)
			}
			s.Resolve(Reply{})
			if s.Tx().Active {
				t.Error("transaction still active after the message")
			}
		})
	}
}

// TestTxEnvelope checks that the session hands each path to the host in
// its event (the host owns the envelope) and counts accepted recipients.
func TestTxEnvelope(t *testing.T) {
	s := NewSession(testConfig())
	in := []byte(inEHLO + "MAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nRCPT TO:<f@g.test>\r\nDATA\r\nx\r\n.\r\n")
	var paths []string
	for {
		n, ev := s.Next(in)
		in = in[n:]
		switch ev.Kind {
		case KindNeedMore:
			t.Fatal("no message")
		case KindMessage:
			if got := strings.Join(paths, ","); got != "a@b.test,d@e.test,f@g.test" || s.Tx().Recipients != 2 {
				t.Fatalf("paths %q, %d recipients; want a@b.test,d@e.test,f@g.test and 2", got, s.Tx().Recipients)
			}
			return
		case KindReply:
		case KindMail, KindRcpt:
			paths = append(paths, ev.Arg)
			s.Resolve(Reply{})
		default:
			s.Resolve(Reply{})
		}
	}
}

// TestHostDecisions checks that refusals chosen by the host reach the wire
// and leave the session state as RFC 5321 expects.
func TestHostDecisions(t *testing.T) {
	refuse := func(k Kind) func(Event) Reply {
		return func(ev Event) Reply {
			if ev.Kind == k {
				return Reply{Code: 550, Enhanced: "5.7.1", Text: "No\nreally not"}
			}
			return Reply{}
		}
	}
	cases := []struct {
		name string
		k    Kind
		in   string
		want string
	}{
		{
			name: "refused HELO keeps the session without a name",
			k:    KindHelo,
			in:   inEHLO + "MAIL FROM:<a@b.test>\r\n",
			want: "550-5.7.1 No\r\n550 5.7.1 really not\r\n503 5.5.1 Error: send HELO/EHLO first\r\n",
		},
		{
			name: "refused MAIL leaves no transaction",
			k:    KindMail,
			in:   inEHLO + inEnv,
			want: rEHLO + "550-5.7.1 No\r\n550 5.7.1 really not\r\n503 5.5.1 Error: need MAIL command\r\n",
		},
		{
			name: "refused RCPT is not a recipient",
			k:    KindRcpt,
			in:   inEHLO + inEnv + "DATA\r\n",
			want: rEHLO + rMail + "550-5.7.1 No\r\n550 5.7.1 really not\r\n554 5.5.1 Error: no valid recipients\r\n",
		},
		{
			name: "refused DATA keeps the transaction",
			k:    KindData,
			in:   inEHLO + inEnv + "DATA\r\nRCPT TO:<x@y.test>\r\n",
			want: rEHLO + rMail + rRcpt + "550-5.7.1 No\r\n550 5.7.1 really not\r\n" + rRcpt,
		},
		{
			name: "refused message ends the transaction",
			k:    KindMessage,
			in:   inEHLO + inEnv + "DATA\r\nx\r\n.\r\nRCPT TO:<x@y.test>\r\n",
			want: rEHLO + rMail + rRcpt + rGo + "550-5.7.1 No\r\n550 5.7.1 really not\r\n" +
				"503 5.5.1 Error: need MAIL command\r\n",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i, pieces := range splits([]byte(tc.in)) {
				if got := converse(testConfig(), refuse(tc.k), pieces...); got != tc.want {
					t.Fatalf("input fed %s:\n%s", splitName(i), diffTranscript(got, tc.want))
				}
			}
		})
	}
}

// converse is like drive but lets host decide every event; the zero Reply
// accepts. It writes no MSG lines.
func converse(cfg *Config, host func(Event) Reply, pieces ...[]byte) string {
	s := NewSession(cfg)
	var out strings.Builder
	var buf []byte
	for _, p := range pieces {
		buf = append(buf, p...)
		for {
			n, ev := s.Next(buf)
			buf = buf[n:]
			out.Write(ev.Reply)
			switch ev.Kind {
			case KindHelo, KindMail, KindRcpt, KindData, KindMessage:
				out.Write(s.Resolve(host(ev)))
			}
			if ev.Close {
				out.WriteString("CLOSE\n")
				return out.String()
			}
			if ev.Kind == KindNeedMore {
				break
			}
		}
	}
	return out.String()
}

// TestReset checks the reset after STARTTLS (RFC 3207 4.2): the HELO name
// and the transaction are forgotten.
func TestReset(t *testing.T) {
	s := NewSession(testConfig())
	in := []byte(inEHLO + "MAIL FROM:<a@b.test>\r\n")
	for len(in) > 0 {
		n, ev := s.Next(in)
		in = in[n:]
		if ev.Kind != KindReply && ev.Kind != KindNeedMore {
			s.Resolve(Reply{})
		}
	}
	if !s.Extended() || !s.Greeted() || !s.Tx().Active {
		t.Fatalf("before Reset: Extended=%v Greeted=%v Active=%v", s.Extended(), s.Greeted(), s.Tx().Active)
	}
	s.Reset()
	if s.Extended() || s.Greeted() || s.Tx().Active {
		t.Fatalf("after Reset: Extended=%v Greeted=%v Active=%v", s.Extended(), s.Greeted(), s.Tx().Active)
	}
	_, ev := s.Next([]byte("MAIL FROM:<a@b.test>\r\n"))
	if got, want := string(ev.Reply), "503 5.5.1 Error: send HELO/EHLO first\r\n"; got != want {
		t.Fatalf("MAIL after Reset: %q, want %q", got, want)
	}
}

// TestHostReplyAgreesWithState checks that what the client is told about a
// decision matches what the session did with it: a Reply with text but no
// code must not be a 451 on the wire and an acceptance in the state.
func TestHostReplyAgreesWithState(t *testing.T) {
	host := func(ev Event) Reply {
		if ev.Kind == KindRcpt {
			return Reply{Text: "Recipient ok"}
		}
		return Reply{}
	}
	got := converse(testConfig(), host, []byte(inEHLO+inEnv+"DATA\r\n"))
	rcpt := strings.SplitAfter(got, "\r\n")[8]
	accepted := strings.HasSuffix(got, rGo)
	if (rcpt[0] == '2') != accepted {
		t.Fatalf("RCPT answered %q but DATA answered %q", rcpt, strings.SplitAfter(got, "\r\n")[9])
	}
}
