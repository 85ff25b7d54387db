package lmtp_test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"loopmx/internal/nexthop/nexthoptest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/queue/lmtp"
)

const body = "From: Alice <alice@example.org>\r\n" +
	"Subject: lmtp test\r\n" +
	"\r\n" +
	".a line that starts with a dot\r\n" +
	"last line\r\n"

// lmtpINI is a config directory running queue/lmtp with an lmtp.ini
// pointing at hosts, plus extra lines; the server has two workers.
func lmtpINI(hosts string, extra ...string) map[string]string {
	return map[string]string{
		"smtp.ini": servertest.SMTPINI + "threadpool_size = 2\n",
		"plugins":  "queue/lmtp\n",
		"lmtp.ini": "hosts = " + hosts + "\n" + strings.Join(extra, "\n") + "\n",
	}
}

// store starts an LMTP server on a unix socket (or TCP) whose replies
// after the message are final(rcpt).
func store(t *testing.T, unix bool, final func(rcpt string) string) *nexthoptest.Backend {
	return nexthoptest.Start(t, nexthoptest.Options{LMTP: true, Unix: unix, Final: final})
}

// finalFor answers the end of data per recipient from a table; the rest
// get the default 250.
func finalFor(table map[string]string) func(string) string {
	return func(rcpt string) string { return table[rcpt] }
}

var received = regexp.MustCompile(`^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(loopmx\) with UTF8SMTP id `)

func TestLMTPAllAccepted(t *testing.T) {
	for _, unix := range []bool{true, false} {
		name := "tcp"
		if unix {
			name = "unix socket"
		}
		t.Run(name, func(t *testing.T) {
			be := store(t, unix, nil)
			srv := servertest.Start(t, lmtpINI(be.Addr))
			got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "bob@example.com", "carol@example.com"), body)
			if got.Code != 250 || !strings.HasPrefix(got.Text(), "2.0.0 Ok: queued as ") {
				t.Fatalf("client got %q", got)
			}
			msgs := be.Messages()
			if len(msgs) != 1 {
				t.Fatalf("store has %d messages", len(msgs))
			}
			m := msgs[0]
			if m.From != "alice@example.org" || strings.Join(m.Rcpts, ",") != "bob@example.com,carol@example.com" {
				t.Errorf("store envelope: from %q to %q", m.From, m.Rcpts)
			}
			if !received.MatchString(m.Data) || !strings.HasSuffix(m.Data, "\r\n"+body) {
				t.Errorf("store has\n%q\nwant a Received header, then the message as sent", m.Data)
			}
			// LHLO (RFC 2033 4.1), then the envelope and DATA in one write.
			if got := strings.Join(be.Groups(), "|"); got != "LHLO|MAIL RCPT RCPT DATA" {
				t.Errorf("store read %q", got)
			}
		})
	}
}

func TestLMTPPerRecipientReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		final map[string]string
		want  string
	}{
		{"one mailbox full and one delivered",
			map[string]string{"b@example.com": "552 5.2.2 Mailbox full"},
			"552 5.2.2 backend: <b@example.com>: Mailbox full (delivered to 1 of 2 recipients)"},
		{"one delayed and one delivered",
			map[string]string{"a@example.com": "451 4.2.0 Mailbox locked"},
			"451 4.2.0 backend: <a@example.com>: Mailbox locked (delivered to 1 of 2 recipients)"},
		{"all refused",
			map[string]string{"a@example.com": "550 5.1.1 No such user", "b@example.com": "550 5.1.1 No such user"},
			"550 5.1.1 backend: <a@example.com>: No such user"},
		{"delayed and refused: the permanent refusal wins",
			map[string]string{"a@example.com": "452 4.2.2 Over quota", "b@example.com": "550 5.1.1 No such user"},
			"550 5.1.1 backend: <b@example.com>: No such user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := store(t, true, finalFor(tc.final))
			srv := servertest.Start(t, lmtpINI(be.Addr))
			if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "a@example.com", "b@example.com"), body); got.String() != tc.want {
				t.Errorf("client got %q, want %q", got, tc.want)
			}
			if strings.Contains(tc.want, "delivered to") && !strings.Contains(srv.Log.String(), "PARTIAL DELIVERY") {
				t.Errorf("a partial delivery is not logged prominently:\n%s", srv.Log)
			}
			// The session stays usable.
			if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "c@example.com"), body); got.Code != 250 {
				t.Errorf("the next message got %q", got)
			}
			if c := be.Conns(); c != 1 {
				t.Errorf("store saw %d sessions, want 1", c)
			}
		})
	}
}

func TestLMTPRecipientRefusedBeforeData(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{LMTP: true, Rcpt: func(to string) string {
		if to == "nobody@example.com" {
			return "550 5.1.1 No such user here"
		}
		return ""
	}})
	srv := servertest.Start(t, lmtpINI(be.Addr))
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "a@example.com", "nobody@example.com"), body); got.String() != "550 5.1.1 backend: <nobody@example.com>: No such user here" {
		t.Errorf("client got %q", got)
	}
	if n := len(be.Messages()); n != 0 {
		t.Errorf("store has %d messages; nothing may be sent when a recipient was refused", n)
	}
}

func TestLMTPStoreStopped(t *testing.T) {
	be := store(t, true, nil)
	srv := servertest.Start(t, lmtpINI(be.Addr))
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "a@example.com"), body); got.Code != 250 {
		t.Fatalf("client got %q", got)
	}
	be.Stop()
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "b@example.com"), body); got.String() != "451 4.4.1 Next hop not reachable, try again later" {
		t.Errorf("client got %q with the store gone", got)
	}
	if n := len(be.Messages()); n != 1 {
		t.Errorf("store has %d messages, want the one acknowledged", n)
	}
}

func TestLMTPStoreStoppedBeforeReplies(t *testing.T) {
	hold := make(chan struct{})
	be := nexthoptest.Start(t, nexthoptest.Options{LMTP: true, HoldFinal: hold})
	srv := servertest.Start(t, lmtpINI(be.Addr))
	done := make(chan servertest.Reply, 1)
	go func() {
		done <- servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "a@example.com", "b@example.com"), body)
	}()
	servertest.Eventually(t, 5*time.Millisecond, "the store to have the message", func() bool { return len(be.Messages()) == 1 })
	be.Stop()
	if got := <-done; got.Code != 451 || !strings.HasPrefix(got.Text(), "4.4.2 ") {
		t.Errorf("client got %q, want 451 4.4.2", got)
	}
}

func TestLMTPSpeaksNoSMTP(t *testing.T) {
	// An SMTP server answers LHLO with 502: not a usable LMTP store.
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, lmtpINI(be.Addr))
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "a@example.com"), body); got.String() != "451 4.4.1 Next hop not reachable, try again later" {
		t.Errorf("client got %q", got)
	}
}

func TestLMTPConfigErrors(t *testing.T) {
	for _, tc := range []struct{ ini, want string }{
		{"", "hosts"},
		{"hosts = unix:run/lmtp.sock\n", "absolute"},
		{"hosts = unix:/run/lmtp.sock\nmax_messages = 3\n", "max_messages"},
	} {
		_, err := servertest.Build(t, map[string]string{"plugins": "queue/lmtp\n", "lmtp.ini": tc.ini})
		if err == nil || !strings.Contains(err.Error(), "lmtp.ini") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("lmtp.ini %q: error %v, want one naming lmtp.ini and %s", tc.ini, err, tc.want)
		}
	}
}
