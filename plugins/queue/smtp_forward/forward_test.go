package smtpforward_test

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/internal/nexthop/nexthoptest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/queue/smtp_forward"
)

// body is a message as a client writes it; net/smtp dot-stuffs it on the
// way in, loopmx unstuffs it, and the plugin must stuff it again.
const body = "From: Alice <alice@example.org>\r\n" +
	"Subject: forward test\r\n" +
	"\r\n" +
	".a line that starts with a dot\r\n" +
	"..and one with two\r\n" +
	"gr\xc3\xbc\xc3\x9fe\r\n" +
	"last line\r\n"

// forwardINI is a config directory running queue/smtp_forward with an
// smtp_forward.ini pointing at hosts, plus extra lines; the server has
// two workers.
func forwardINI(hosts string, extra ...string) map[string]string {
	return map[string]string{
		"smtp.ini":         servertest.SMTPINI + "threadpool_size = 2\n",
		"plugins":          "queue/smtp_forward\n",
		"smtp_forward.ini": "hosts = " + hosts + "\n" + strings.Join(extra, "\n") + "\n",
	}
}

// receivedRe is the Received header the plugin adds, in front of the
// message exactly as the client sent it.
var receivedRe = regexp.MustCompile(`^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n` +
	`\tby mx\.test \(loopmx\) with UTF8SMTP id [^ ;\r\n]+;\r\n` +
	`\t[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} [-+][0-9]{4}\r\n`)

func TestForwardDeliversWithReceived(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))

	got := servertest.Deliver(t, srv.Addr, servertest.UTF8("alice@example.org", "bob@example.com", "carol@example.com"), body)
	if got.Code != 250 || !regexp.MustCompile(`^2\.0\.0 Ok: queued as \S+ \(backend: Ok: queued\)$`).MatchString(got.Text()) {
		t.Fatalf("client got %q, want 250 with our id and the backend's text", got)
	}
	msgs := be.Messages()
	if len(msgs) != 1 {
		t.Fatalf("backend has %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.From != "alice@example.org" || strings.Join(m.Rcpts, ",") != "bob@example.com,carol@example.com" {
		t.Errorf("backend envelope: from %q to %q", m.From, m.Rcpts)
	}
	loc := receivedRe.FindStringIndex(m.Data)
	if loc == nil {
		t.Fatalf("the message does not start with our Received header:\n%q", m.Data)
	}
	if rest := m.Data[loc[1]:]; rest != body {
		t.Errorf("after the Received header the backend has\n%q\nwant the message as sent\n%q", rest, body)
	}
	// SIZE is the size of what is sent, Received included (RFC 1870).
	for _, p := range []string{"SIZE=" + strconv.Itoa(len(m.Data)), "BODY=8BITMIME", "SMTPUTF8"} {
		if !strings.Contains(" "+m.Params+" ", " "+p+" ") {
			t.Errorf("MAIL parameters %q lack %s", m.Params, p)
		}
	}
}

func TestForwardNullSenderAndPlainSession(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))
	if got := servertest.Deliver(t, srv.Addr, servertest.Plain("", "postmaster@example.com"), "Subject: bounce\r\n\r\nx\r\n"); got.Code != 250 {
		t.Fatalf("client got %q", got)
	}
	m := be.Messages()[0]
	if m.From != "" || strings.Contains(m.Params, "SMTPUTF8") {
		t.Errorf("backend got MAIL FROM:<%s> %s; want the null sender without SMTPUTF8", m.From, m.Params)
	}
	if !strings.Contains(m.Data, "with ESMTP id") || !strings.Contains(m.Data, "\tfor <postmaster@example.com>;\r\n") {
		t.Errorf("Received header in %q", m.Data)
	}
}

func TestPoolReusesSessionAndPipelines(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))
	const n = 5
	for i := range n {
		// Every message comes over its own client connection.
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b"+strconv.Itoa(i)+"@example.com"), body); got.Code != 250 {
			t.Fatalf("message %d: client got %q", i, got)
		}
	}
	if c := be.Conns(); c != 1 {
		t.Errorf("backend saw %d sessions for %d messages, want 1 reused session", c, n)
	}
	if got := len(be.Messages()); got != n {
		t.Errorf("backend has %d messages, want %d", got, n)
	}
	// With PIPELINING, MAIL, RCPT and DATA arrive in one write; a reused
	// session starts with RSET in the same write.
	want := []string{"EHLO", "MAIL RCPT DATA"}
	for range n - 1 {
		want = append(want, "RSET MAIL RCPT DATA")
	}
	if got := be.Groups(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("backend read the commands in groups\n%q\nwant\n%q", got, want)
	}
}

func TestPoolIsSharedByConcurrentClients(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))
	const clients, each = 4, 10
	var wg sync.WaitGroup
	codes := make(chan int, clients*each)
	for i := range clients {
		wg.Go(func() {
			for j := range each {
				codes <- servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "c"+strconv.Itoa(i)+"m"+strconv.Itoa(j)+"@example.com"), body).Code
			}
		})
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 250 {
			t.Errorf("a client got %d", c)
		}
	}
	if got := len(be.Messages()); got != clients*each {
		t.Errorf("backend has %d messages, want %d", got, clients*each)
	}
	// At most threadpool_size (2) deliveries run at once, so at most two
	// sessions are ever needed: never one per client connection.
	if c := be.Conns(); c > 2 {
		t.Errorf("backend saw %d sessions for %d clients, want at most 2", c, clients)
	}
}

func TestWithoutPipeliningEachCommandWaits(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{Extensions: []string{"8BITMIME", "SMTPUTF8"}})
	srv := servertest.Start(t, forwardINI(be.Addr))
	for range 2 {
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com", "c@example.com"), body); got.Code != 250 {
			t.Fatalf("client got %q", got)
		}
	}
	want := "EHLO|MAIL|RCPT|RCPT|DATA|RSET|MAIL|RCPT|RCPT|DATA"
	if got := strings.Join(be.Groups(), "|"); got != want {
		t.Errorf("backend read %q, want one command per round trip %q", got, want)
	}
	if m := be.Messages()[0]; strings.Contains(m.Params, "SIZE=") {
		t.Errorf("SIZE=%q sent to a backend that does not offer SIZE", m.Params)
	}
}

func TestRecipientRefusals(t *testing.T) {
	rcpt := func(to string) string {
		switch {
		case strings.HasPrefix(to, "unknown"):
			return "550 5.1.1 User unknown"
		case strings.HasPrefix(to, "busy"):
			return "450 4.2.1 Mailbox busy, try later"
		case strings.HasPrefix(to, "named"):
			return "550 5.1.1 <" + to + ">: Recipient address rejected"
		}
		return ""
	}
	for _, tc := range []struct {
		name  string
		rcpts []string
		want  string
	}{
		{"one of two unknown", []string{"ok@example.com", "unknown@example.com"}, "550 5.1.1 backend: <unknown@example.com>: User unknown"},
		{"one of two busy", []string{"ok@example.com", "busy@example.com"}, "450 4.2.1 backend: <busy@example.com>: Mailbox busy, try later"},
		{"busy and unknown: the permanent refusal wins", []string{"busy@example.com", "ok@example.com", "unknown@example.com"}, "550 5.1.1 backend: <unknown@example.com>: User unknown"},
		{"all unknown", []string{"unknown1@example.com", "unknown2@example.com"}, "550 5.1.1 backend: <unknown1@example.com>: User unknown"},
		{"the backend names the recipient itself", []string{"named@example.com"}, "550 5.1.1 backend: <named@example.com>: Recipient address rejected"},
	} {
		for _, pipelining := range []bool{true, false} {
			name := tc.name
			ext := nexthoptest.DefaultExtensions
			if !pipelining {
				name += " without pipelining"
				ext = []string{"SMTPUTF8"}
			}
			t.Run(name, func(t *testing.T) {
				be := nexthoptest.Start(t, nexthoptest.Options{Rcpt: rcpt, Extensions: ext})
				srv := servertest.Start(t, forwardINI(be.Addr))
				if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", tc.rcpts...), body); got.String() != tc.want {
					t.Errorf("client got %q, want %q", got, tc.want)
				}
				if msgs := be.Messages(); len(msgs) != 0 {
					t.Errorf("backend took %d messages; a refused recipient must stop the whole message", len(msgs))
				}
				// The next message still goes through.
				if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "ok@example.com"), body); got.Code != 250 {
					t.Errorf("the next message got %q", got)
				}
				if msgs := be.Messages(); len(msgs) != 1 || strings.Join(msgs[0].Rcpts, ",") != "ok@example.com" {
					t.Errorf("backend has %+v, want the one message to ok@example.com", msgs)
				}
			})
		}
	}
}

func TestBackendRefusalsPassedBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    nexthoptest.Options
		want string
	}{
		{"MAIL 553", nexthoptest.Options{Mail: func(string) string { return "553 5.7.1 Sender rejected" }}, "553 5.7.1 backend: Sender rejected"},
		{"MAIL 421 closing", nexthoptest.Options{Mail: func(string) string { return "421 4.3.2 Shutting down" }}, "451 4.3.2 backend: Shutting down"},
		{"MAIL without enhanced code", nexthoptest.Options{Mail: func(string) string { return "451 Local error" }}, "451 4.0.0 backend: Local error"},
		{"end of data 554", nexthoptest.Options{Final: func(string) string { return "554 5.6.0 Content rejected" }}, "554 5.6.0 backend: Content rejected"},
		{"end of data 452", nexthoptest.Options{Final: func(string) string { return "452 4.3.1 Insufficient system storage" }}, "452 4.3.1 backend: Insufficient system storage"},
		{"multi-line reply", nexthoptest.Options{Final: func(string) string { return "550-5.7.1 Message refused\r\n550 5.7.1 see https://example.net/policy" }},
			"550 5.7.1 backend: Message refused see https://example.net/policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := nexthoptest.Start(t, tc.o)
			srv := servertest.Start(t, forwardINI(be.Addr))
			if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.String() != tc.want {
				t.Errorf("client got %q, want %q", got, tc.want)
			}
		})
	}
}

// acknowledged delivers n messages and returns how many got 250; every
// other reply must be want.
func acknowledged(t *testing.T, addr string, n int, want string) int {
	t.Helper()
	ok := 0
	for i := range n {
		got := servertest.Deliver(t, addr, servertest.UTF8("a@example.org", "r"+strconv.Itoa(i)+"@example.com"), body)
		switch {
		case got.Code == 250:
			ok++
		case !strings.HasPrefix(got.String(), want):
			t.Errorf("message %d: client got %q, want 250 or %q", i, got, want)
		}
	}
	return ok
}

func TestBackendStopped(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))
	acked := acknowledged(t, srv.Addr, 2, "")
	be.Stop() // closes the listener and the pooled session
	for i := range 3 {
		got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "late"+strconv.Itoa(i)+"@example.com"), body)
		if got.String() != "451 4.4.1 Next hop not reachable, try again later" {
			t.Errorf("with the backend gone the client got %q, want 451 4.4.1", got)
		}
	}
	// Nothing lost: every 250 the clients got is a message the backend has.
	if got := len(be.Messages()); acked != 2 || got != acked {
		t.Errorf("clients got %d acknowledgements, the backend has %d messages", acked, got)
	}
}

func TestBackendStoppedDuringMessage(t *testing.T) {
	hold := make(chan struct{})
	be := nexthoptest.Start(t, nexthoptest.Options{HoldFinal: hold})
	srv := servertest.Start(t, forwardINI(be.Addr))
	done := make(chan servertest.Reply, 1)
	go func() {
		done <- servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body)
	}()
	servertest.Eventually(t, 5*time.Millisecond, "the backend to have the message", func() bool { return len(be.Messages()) == 1 })
	be.Stop() // before it answered the end of data
	if got := <-done; got.String() != "451 4.4.2 Connection to the next hop lost or timed out, try again later" {
		t.Errorf("client got %q, want 451 4.4.2 (the client retries; a duplicate at worst)", got)
	}
}

func TestStalePooledSessionIsReplaced(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.Code != 250 {
		t.Fatalf("client got %q", got)
	}
	be.CloseConns() // the backend drops the idle session, as on its idle timeout
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "c@example.com"), body); got.Code != 250 {
		t.Fatalf("after the backend closed the pooled session the client got %q, want 250 over a new one", got)
	}
	if c, n := be.Conns(), len(be.Messages()); c != 2 || n != 2 {
		t.Errorf("backend saw %d sessions and %d messages, want 2 and 2", c, n)
	}
}

// deadAddr is a TCP address nobody listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestNextHostIsTried(t *testing.T) {
	t.Run("first host down", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(deadAddr(t)+", "+be.Addr))
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.Code != 250 || len(be.Messages()) != 1 {
			t.Errorf("client got %q, backend has %d messages", got, len(be.Messages()))
		}
	})
	t.Run("first host silent", func(t *testing.T) {
		silent := nexthoptest.Start(t, nexthoptest.Options{HoldGreeting: make(chan struct{})})
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(silent.Addr+", "+be.Addr, "command_timeout = 200ms"))
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.Code != 250 || len(be.Messages()) != 1 {
			t.Errorf("client got %q, backend has %d messages", got, len(be.Messages()))
		}
	})
	t.Run("first host refuses service", func(t *testing.T) {
		refusing := nexthoptest.Start(t, nexthoptest.Options{Greeting: "554 5.3.2 No service here"})
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(refusing.Addr+", "+be.Addr))
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.Code != 250 || len(be.Messages()) != 1 {
			t.Errorf("client got %q, backend has %d messages", got, len(be.Messages()))
		}
	})
	t.Run("all hosts down", func(t *testing.T) {
		srv := servertest.Start(t, forwardINI(deadAddr(t)+", "+deadAddr(t)))
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.String() != "451 4.4.1 Next hop not reachable, try again later" {
			t.Errorf("client got %q", got)
		}
	})
}

func TestSlowBackendTimesOut(t *testing.T) {
	const broken = "451 4.4.2 Connection to the next hop lost or timed out, try again later"
	for _, tc := range []struct {
		name string
		ini  []string
	}{
		{"data_timeout", []string{"data_timeout = 200ms"}},
		// A data_timeout longer than the plugin's timeout is cut short by
		// it: the plugin answers, not the loop's generic 451 4.3.0.
		{"the plugin's timeout", []string{"timeout = 1s", "data_timeout = 300s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hold := make(chan struct{})
			be := nexthoptest.Start(t, nexthoptest.Options{HoldFinal: hold})
			srv := servertest.Start(t, forwardINI(be.Addr, tc.ini...))
			defer close(hold)
			if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.String() != broken {
				t.Errorf("client got %q, want %q", got, broken)
			}
			// The backend got the whole message before it went quiet: the
			// client will retry, so the worst case is a duplicate.
			if n := len(be.Messages()); n != 1 {
				t.Errorf("backend has %d messages", n)
			}
		})
	}
}

func TestSMTPUTF8(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{Extensions: []string{"PIPELINING", "8BITMIME"}})
	srv := servertest.Start(t, forwardINI(be.Addr))
	if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.String() != "550 5.6.7 Next hop does not support SMTPUTF8" {
		t.Errorf("an SMTPUTF8 message to a backend without SMTPUTF8: client got %q", got)
	}
	if got := servertest.Deliver(t, srv.Addr, servertest.Plain("a@example.org", "b@example.com"), body); got.Code != 250 {
		t.Errorf("a message without SMTPUTF8: client got %q", got)
	}
	if got := len(be.Messages()); got != 1 {
		t.Errorf("backend has %d messages, want 1", got)
	}
}

func TestHELOFallback(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{RefuseEHLO: true})
	srv := servertest.Start(t, forwardINI(be.Addr, "helo = relay.example.net"))
	if got := servertest.Deliver(t, srv.Addr, servertest.Plain("a@example.org", "b@example.com"), body); got.Code != 250 {
		t.Fatalf("client got %q", got)
	}
	if m := be.Messages()[0]; m.Params != "" {
		t.Errorf("MAIL parameters %q sent after HELO", m.Params)
	}
	if got := strings.Join(be.Verbs()[:2], " "); got != "EHLO HELO" {
		t.Errorf("backend saw %q first, want EHLO then HELO", got)
	}
}

func TestSTARTTLS(t *testing.T) {
	t.Run("without verification", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{TLS: nexthoptest.SelfSigned(t)})
		srv := servertest.Start(t, forwardINI(be.Addr, "starttls = yes", "tls_verify = no"))
		for range 2 {
			if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.Code != 250 {
				t.Fatalf("client got %q", got)
			}
		}
		for _, m := range be.Messages() {
			if !m.TLS {
				t.Error("message sent without TLS")
			}
		}
		if got := strings.Join(be.Verbs()[:3], " "); got != "EHLO STARTTLS EHLO" {
			t.Errorf("backend saw %q first", got)
		}
		if c := be.Conns(); c != 1 {
			t.Errorf("%d TLS sessions for two messages, want 1", c)
		}
	})
	t.Run("a certificate that does not verify", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{TLS: nexthoptest.SelfSigned(t)})
		srv := servertest.Start(t, forwardINI(be.Addr, "starttls = yes"))
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.String() != "451 4.4.1 Next hop not reachable, try again later" {
			t.Errorf("client got %q", got)
		}
		if n := len(be.Messages()); n != 0 {
			t.Errorf("backend has %d messages", n)
		}
	})
	t.Run("STARTTLS not offered", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(be.Addr, "starttls = yes", "tls_verify = no"))
		if got := servertest.Deliver(t, srv.Addr, servertest.UTF8("a@example.org", "b@example.com"), body); got.Code != 451 {
			t.Errorf("client got %q, want 451: TLS was asked for", got)
		}
	})
}

func TestSessionLimits(t *testing.T) {
	t.Run("max_messages_per_connection", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(be.Addr, "max_messages_per_connection = 2"))
		if n := acknowledged(t, srv.Addr, 5, ""); n != 5 {
			t.Fatalf("%d of 5 acknowledged", n)
		}
		if c := be.Conns(); c != 3 {
			t.Errorf("backend saw %d sessions for 5 messages at 2 per session, want 3", c)
		}
	})
	t.Run("idle_timeout", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(be.Addr, "idle_timeout = 50ms"))
		acknowledged(t, srv.Addr, 1, "")
		servertest.Eventually(t, 5*time.Millisecond, "the idle session to be ended with QUIT", func() bool {
			v := be.Verbs()
			return v[len(v)-1] == "QUIT"
		})
		acknowledged(t, srv.Addr, 1, "")
		if c := be.Conns(); c != 2 {
			t.Errorf("backend saw %d sessions, want a new one after the idle timeout", c)
		}
	})
	t.Run("pool_size = 0", func(t *testing.T) {
		be := nexthoptest.Start(t, nexthoptest.Options{})
		srv := servertest.Start(t, forwardINI(be.Addr, "pool_size = 0"))
		acknowledged(t, srv.Addr, 3, "")
		if c := be.Conns(); c != 3 {
			t.Errorf("backend saw %d sessions, want one per message without a pool", c)
		}
	})
}

func TestCloseSaysQUIT(t *testing.T) {
	be := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, forwardINI(be.Addr))
	acknowledged(t, srv.Addr, 1, "")
	if err := srv.Chain.Close(); err != nil {
		t.Fatal(err)
	}
	if v := be.Verbs(); v[len(v)-1] != "QUIT" {
		t.Errorf("backend saw %q; Close must end the pooled session with QUIT", v)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, ini string
		want      []string
	}{
		{"no hosts", "", []string{"smtp_forward.ini", "hosts"}},
		{"empty hosts", "hosts =\n", []string{"smtp_forward.ini", "hosts"}},
		{"no port", "hosts = mail.example.net\n", []string{"smtp_forward.ini", "hosts", "mail.example.net"}},
		{"bad port", "hosts = mail.example.net:99999\n", []string{"smtp_forward.ini", "hosts", "99999"}},
		{"relative unix path", "hosts = unix:lmtp.sock\n", []string{"smtp_forward.ini", "hosts", "absolute"}},
		{"unknown key", "hosts = a.example:25\nport = 25\n", []string{"smtp_forward.ini", "port"}},
		{"bad duration", "hosts = a.example:25\ndata_timeout = soon\n", []string{"smtp_forward.ini", "data_timeout"}},
		{"zero timeout", "hosts = a.example:25\ncommand_timeout = 0\n", []string{"smtp_forward.ini", "command_timeout"}},
		{"negative pool", "hosts = a.example:25\npool_size = -1\n", []string{"smtp_forward.ini", "pool_size"}},
		{"no messages per session", "hosts = a.example:25\nmax_messages_per_connection = 0\n", []string{"smtp_forward.ini", "max_messages_per_connection"}},
		{"bad bool", "hosts = a.example:25\nstarttls = maybe\n", []string{"smtp_forward.ini", "starttls"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := servertest.Build(t, map[string]string{"plugins": "queue/smtp_forward\n", "smtp_forward.ini": tc.ini})
			if err == nil {
				t.Fatal("the chain was built with a bad smtp_forward.ini")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}
