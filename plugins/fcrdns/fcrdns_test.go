package fcrdns_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"loopmx/internal/dnsx"
	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/access"
	_ "loopmx/plugins/fcrdns"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/results"
)

const (
	banner = "220 mx.test ESMTP loopmx"
	mailOK = "250 2.1.0 Ok"
	rcptOK = "250 2.1.5 Ok"
)

// smtpINI: enough workers and queue for a hundred connections waiting
// for DNS at once.
const smtpINI = "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 16\nwork_queue_size = 256\n" +
	"graceful_timeout = 1s\nmax_connections = 0\n"

var dialer = servertest.Dialer{Enhanced: servertest.Never}

// zone answers for the test clients, each a loopback address:
//
//	127.0.0.1  mail.good.test, which resolves back: confirmed
//	127.0.0.2  liar.test, which resolves elsewhere
//	127.0.0.3  no PTR
//	127.0.0.4  127-0-0-4.dyn.isp.test, confirmed but generic
//	127.0.0.5  SERVFAIL on the PTR
//	127.0.0.6  bad.test (no address) and ok.test (confirmed)
func zone(t *testing.T) *dnstest.Server {
	t.Helper()
	srv := dnstest.Start(t)
	srv.Add(t,
		"1.0.0.127.in-addr.arpa. 300 IN PTR mail.good.test.",
		"mail.good.test. 300 IN A 127.0.0.1",
		"2.0.0.127.in-addr.arpa. 300 IN PTR liar.test.",
		"liar.test. 300 IN A 192.0.2.1",
		"4.0.0.127.in-addr.arpa. 300 IN PTR 127-0-0-4.dyn.isp.test.",
		"127-0-0-4.dyn.isp.test. 300 IN A 127.0.0.4",
		"6.0.0.127.in-addr.arpa. 300 IN PTR bad.test.",
		"6.0.0.127.in-addr.arpa. 300 IN PTR ok.test.",
		"ok.test. 300 IN A 127.0.0.6",
	)
	srv.Fail("5.0.0.127.in-addr.arpa", dns.RcodeServerFailure)
	return srv
}

// files runs plugins (fcrdns first unless they say otherwise) with
// fcrdns.ini ini, asking the DNS server at addr.
func files(addr, ini, plugins string) map[string]string {
	return map[string]string{
		"smtp.ini":   smtpINI,
		"plugins":    plugins,
		"fcrdns.ini": "skip_private = false\n" + ini,
		"dns.ini":    "servers = " + addr + "\n",
	}
}

// toRcpt greets, sends MAIL and one RCPT, and requires the RCPT reply want.
func toRcpt(c *servertest.Client, want string) {
	c.T.Helper()
	c.ExpectExact(banner)
	c.EHLO("client.example.org")
	c.CmdExact("MAIL FROM:<sender@example.org>", mailOK)
	c.CmdExact("RCPT TO:<user@example.com>", want)
}

// TestFindings: without refusals every client passes; each gets its
// finding, and a generic name a second one.
func TestFindings(t *testing.T) {
	srv := zone(t)
	ts := servertest.Start(t, files(srv.Addr, "", "results\nfcrdns\n"))
	for _, tc := range []struct{ client, finding string }{
		{"127.0.0.1", `"fcrdns":["pass: mail.good.test"]`},
		{"127.0.0.2", `"fcrdns":["fail: liar.test does not resolve to the client's address"]`},
		{"127.0.0.3", `"fcrdns":["fail: no PTR record"]`},
		{"127.0.0.4", `"fcrdns":["pass: 127-0-0-4.dyn.isp.test","fail (generic): 127-0-0-4.dyn.isp.test holds the client's address"]`},
		{"127.0.0.5", `"fcrdns":["err: lookup failed"]`},
		{"127.0.0.6", `"fcrdns":["pass: ok.test"]`},
	} {
		c := dialer.DialFrom(t, ts.Addr, tc.client)
		toRcpt(c, rcptOK)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
		servertest.Eventually(t, 10*time.Millisecond, "the results lines of "+tc.client, func() bool {
			return ts.Log.Count(`"plugin":"results"`, `"conn":{`+tc.finding+`}`) == 2
		})
	}
}

// TestReceivedNamesTheConfirmedName: the stored message's Received header
// carries the confirmed name before the address; a name that does not
// resolve back is not written.
func TestReceivedNamesTheConfirmedName(t *testing.T) {
	srv := zone(t)
	spool := t.TempDir()
	f := files(srv.Addr, "", "fcrdns\nqueue/maildir\n")
	f["maildir.ini"] = "path = " + spool + "\n"
	ts := servertest.Start(t, f)
	for _, tc := range []struct{ client, from string }{
		{"127.0.0.1", "from client.example.org (mail.good.test [127.0.0.1])"},
		{"127.0.0.2", "from client.example.org ([127.0.0.2])"},
	} {
		c := dialer.DialFrom(t, ts.Addr, tc.client)
		toRcpt(c, rcptOK)
		c.CmdExact("DATA", "354 End data with <CR><LF>.<CR><LF>")
		c.Send("Subject: hi\r\n\r\nhello\r\n.")
		c.Expect("250 2.0.0 Ok: queued")
		c.CmdExact("QUIT", "221 2.0.0 Bye")
		if !strings.Contains(readSpool(t, spool), "Received: "+tc.from) {
			t.Errorf("no message from %s holds %q:\n%s", tc.client, "Received: "+tc.from, readSpool(t, spool))
		}
	}
}

// readSpool returns every message in the maildir's new/, one after the
// other.
func readSpool(t *testing.T, spool string) string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(spool, "new"))
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(spool, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	return all.String()
}

// TestAccessReadsTheName: access, after fcrdns, matches its rDNS lists
// against the confirmed name.
func TestAccessReadsTheName(t *testing.T) {
	srv := zone(t)
	f := files(srv.Addr, "", "fcrdns\naccess\n")
	f["access.rdns.deny"] = ".good.test\n"
	ts := servertest.Start(t, f)
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.Expect("554 5.7.1")
	c = dialer.DialFrom(t, ts.Addr, "127.0.0.6")
	toRcpt(c, rcptOK)
}

func TestRejectNoFCrDNS(t *testing.T) {
	srv := zone(t)
	const none = "550 5.7.25 Client [127.0.0.%d] has no forward-confirmed reverse DNS name"
	for _, tc := range []struct {
		ini     string
		replies map[string]string // client -> RCPT reply
	}{
		{"reject_no_fcrdns = true\n", map[string]string{
			"127.0.0.1": rcptOK,
			"127.0.0.2": strings.Replace(none, "%d", "2", 1),
			"127.0.0.3": strings.Replace(none, "%d", "3", 1),
			"127.0.0.4": rcptOK, // generic, but confirmed
			"127.0.0.5": rcptOK, // on_error = pass
			"127.0.0.6": rcptOK,
		}},
		{"reject_no_fcrdns = true\non_error = tempfail\n", map[string]string{
			"127.0.0.5": "450 4.7.25 Reverse DNS lookup failed, try again later",
		}},
		{"reject_generic = true\n", map[string]string{
			"127.0.0.1": rcptOK,
			"127.0.0.3": rcptOK,
			"127.0.0.4": "550 5.7.1 Client host name 127-0-0-4.dyn.isp.test looks like a dynamic address; send through your provider's mail server",
		}},
	} {
		ts := servertest.Start(t, files(srv.Addr, tc.ini, "fcrdns\n"))
		for client, want := range tc.replies {
			c := dialer.DialFrom(t, ts.Addr, client)
			toRcpt(c, want)
			if want != rcptOK {
				// Every recipient is refused, and the session goes on.
				c.CmdExact("RCPT TO:<postmaster@example.com>", want)
			}
			c.CmdExact("QUIT", "221 2.0.0 Bye")
		}
	}

	ts := servertest.Start(t, files(srv.Addr, "reject_no_fcrdns = true\nreject = connect\n", "fcrdns\n"))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.3")
	c.ExpectExact("554 5.7.25 Client [127.0.0.3] has no forward-confirmed reverse DNS name")
	c.ExpectEOF()
}

// TestGenericPatterns: generic_patterns replaces the built-in patterns;
// generic_ip_in_name = false stops the address test.
func TestGenericPatterns(t *testing.T) {
	srv := zone(t)
	f := files(srv.Addr, "reject_generic = true\ngeneric_patterns = fcrdns.generic\ngeneric_ip_in_name = false\n", "fcrdns\n")
	f["fcrdns.generic"] = "# our own\n^mail\\.good\\.\n"
	ts := servertest.Start(t, f)
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.4"), rcptOK)
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"),
		"550 5.7.1 Client host name mail.good.test looks like a dynamic address; send through your provider's mail server")
}

// TestOnePTRQueryForManySessions: a hundred sessions from one new client
// at once make one PTR query and one A query (single flight), and the
// sessions after them none (the cache).
func TestOnePTRQueryForManySessions(t *testing.T) {
	srv := zone(t)
	const ptr = "1.0.0.127.in-addr.arpa."
	release := srv.Hold(ptr, dns.TypePTR)
	f := files(srv.Addr, "lookup_timeout = 15s\n", "fcrdns\n")
	f["dns.ini"] = dnstest.INI(srv.Addr, 15*time.Second)
	ts := servertest.Start(t, f)

	joined := dnsx.Counters.Joined.Load()
	const sessions = 100
	var clients []*servertest.Client
	for range sessions {
		clients = append(clients, dialer.DialFrom(t, ts.Addr, "127.0.0.1"))
	}
	// Every worker (threadpool_size 16) runs a connect hook: one asks,
	// fifteen wait for its answer.
	servertest.Eventually(t, time.Millisecond, "16 lookups of the PTR at once", func() bool {
		return dnsx.Counters.Joined.Load()-joined >= 15
	})
	release()
	for _, c := range clients {
		c.ExpectExact(banner)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
	}
	if p, a := srv.Count(ptr, dns.TypePTR), srv.Count("mail.good.test", dns.TypeA); p != 1 || a != 1 {
		t.Errorf("%d sessions made %d PTR and %d A queries, want 1 and 1: %s", sessions, p, a, srv.Counts())
	}
	total := srv.Total()
	for range 10 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
		c.ExpectExact(banner)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
	}
	if n := srv.Total() - total; n != 0 {
		t.Errorf("ten later sessions made %d queries, want 0 (cached)", n)
	}
}

// TestResolverNeverAnswers: a dead resolver costs a session one
// lookup_timeout: the resolver's own timeout (10s, 3 attempts) is beyond
// the client's patience (servertest.IOTimeout), so a session that ends
// ended on the budget. Mail flows, or is deferred with on_error =
// tempfail; the failures are logged once.
func TestResolverNeverAnswers(t *testing.T) {
	silent := dnstest.StartSilent(t)
	for _, tc := range []struct{ ini, rcpt string }{
		{"reject_no_fcrdns = true\n", rcptOK},
		{"reject_no_fcrdns = true\non_error = tempfail\n", "450 4.7.25 Reverse DNS lookup failed, try again later"},
	} {
		f := files(silent.Addr, "lookup_timeout = 300ms\n"+tc.ini, "fcrdns\n")
		f["dns.ini"] = "servers = " + silent.Addr + "\ntimeout = 10s\nattempts = 3\n"
		ts := servertest.Start(t, f)
		for range 2 {
			toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), tc.rcpt)
		}
		if n := strings.Count(ts.Log.String(), "reverse DNS lookup failed"); n != 1 {
			t.Errorf("the log has %d lines about the failed lookups, want 1:\n%s", n, ts.Log)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		ini   string
		extra map[string]string
		want  []string
	}{
		{"reject = later\n", nil, []string{`config: fcrdns.ini: [main] reject: "later" is not one of connect, rcpt`}},
		{"on_error = ignore\n", nil, []string{`config: fcrdns.ini: [main] on_error: "ignore" is not one of pass, tempfail`}},
		{"lookup_timeout = 30s\n", nil, []string{"config: fcrdns.ini: [main] lookup_timeout:", `"30s"`, "less than timeout"}},
		{"reject_generic = sometimes\n", nil, []string{"fcrdns.ini", "reject_generic", `"sometimes"`}},
		{"reject_no_fcrdn = true\n", nil, []string{"fcrdns.ini", `"reject_no_fcrdn"`}},
		{"generic_patterns = missing.list\n", nil, []string{"generic_patterns", `"missing.list"`}},
		{"generic_patterns = fcrdns.generic\n", map[string]string{"fcrdns.generic": "ok\n(unclosed\n"}, []string{"config: fcrdns.generic:2:", `"(unclosed"`}},
	} {
		f := files("127.0.0.1", tc.ini, "fcrdns\nqueue/maildir\n")
		for k, v := range tc.extra {
			f[k] = v
		}
		servertest.CheckBuild(t, f, tc.want...)
	}
	servertest.CheckBuild(t, files("127.0.0.1", "", "fcrdns\nqueue/maildir\n"))
}
