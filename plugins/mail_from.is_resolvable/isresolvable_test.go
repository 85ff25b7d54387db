package isresolvable_test

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/mail_from.is_resolvable"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/results"
)

const banner = "220 mx.test ESMTP loopmx"

var dialer = servertest.Dialer{Enhanced: servertest.Never}

// zone holds one sender domain for each case.
func zone(t *testing.T) *dnstest.Server {
	t.Helper()
	srv := dnstest.Start(t)
	srv.Add(t,
		"mx.test. 300 IN MX 20 mx2.mx.test.",
		"mx.test. 300 IN MX 10 mx1.mx.test.",
		"mx2.mx.test. 300 IN A 192.0.2.25",
		"a-only.test. 300 IN A 192.0.2.1",
		"v6-only.test. 300 IN AAAA 2001:db8::1",
		"txt-only.test. 300 IN TXT \"v=spf1 -all\"",
		"null.test. 300 IN MX 0 .",
		"deadmx.test. 300 IN MX 10 gone.deadmx.test.",
		"slowmx.test. 300 IN MX 10 mx.slowmx.test.",
	)
	srv.Fail("broken.test", dns.RcodeServerFailure)
	srv.Fail("mx.slowmx.test", dns.RcodeServerFailure)
	return srv
}

func files(addr, ini string) map[string]string {
	return map[string]string{
		"plugins":                     "results\nmail_from.is_resolvable\nqueue/maildir\n",
		"mail_from.is_resolvable.ini": ini,
		"dns.ini":                     dnstest.INI(addr, time.Second),
	}
}

// mail greets and sends MAIL FROM:<from>, requiring the reply want.
func mail(t *testing.T, addr, from, want string) {
	t.Helper()
	c := dialer.Dial(t, addr)
	c.ExpectExact(banner)
	c.EHLO("client.example.org")
	c.CmdExact("MAIL FROM:<"+from+">", want)
	c.CmdExact("QUIT", "221 2.0.0 Bye")
}

const (
	ok       = "250 2.1.0 Ok"
	deferred = "450 4.1.8 Sender address rejected: cannot resolve %s now, try again later"
)

func TestSenders(t *testing.T) {
	srv := zone(t)
	ts := servertest.Start(t, files(srv.Addr, ""))
	for _, tc := range []struct{ from, reply, finding string }{
		{"a@mx.test", ok, "pass: mx.test: mx mx2.mx.test"}, // mx1 has no address, mx2 has
		{"a@A-Only.test", ok, "pass: a-only.test: address record"},
		{"a@v6-only.test", ok, "pass: v6-only.test: address record"},
		{"a@txt-only.test", "550 5.1.8 Sender address rejected: txt-only.test has no MX or address record",
			"fail: txt-only.test has no MX or address record"},
		{"a@nowhere.test", "550 5.1.8 Sender address rejected: nowhere.test does not exist", "fail: nowhere.test does not exist"},
		{"a@null.test", "550 5.7.27 Sender address rejected: null.test accepts no mail (null MX)", "fail: null.test: null MX"},
		{"a@deadmx.test", "550 5.1.8 Sender address rejected: deadmx.test has no mail exchanger with an address",
			"fail: deadmx.test has no mail exchanger with an address"},
		{"a@broken.test", strings.Replace(deferred, "%s", "broken.test", 1), "err: broken.test: lookup failed"},
		{"a@slowmx.test", strings.Replace(deferred, "%s", "slowmx.test", 1), "err: slowmx.test: lookup failed"},
		{"", ok, "skip: null sender"},
		{"a@[192.0.2.1]", ok, "skip: no domain to look up"},
	} {
		mail(t, ts.Addr, tc.from, tc.reply)
		// A refused MAIL's finding is the connection's; an accepted one's
		// the transaction's.
		scope := `"tx":{`
		if tc.reply != ok {
			scope = `"conn":{`
		}
		servertest.Eventually(t, 10*time.Millisecond, "the results line for <"+tc.from+">", func() bool {
			return ts.Log.Count(`"plugin":"results"`, scope+`"mail_from.is_resolvable":["`+tc.finding+`"]`) >= 1
		})
	}
}

// TestOptions: check_mx_hosts = false takes any MX; on_error = pass lets
// a sender through when the DNS fails.
func TestOptions(t *testing.T) {
	srv := zone(t)
	ts := servertest.Start(t, files(srv.Addr, "check_mx_hosts = false\non_error = pass\n"))
	mail(t, ts.Addr, "a@deadmx.test", ok)
	mail(t, ts.Addr, "a@broken.test", ok)
	mail(t, ts.Addr, "a@null.test", "550 5.7.27 Sender address rejected: null.test accepts no mail (null MX)")
}

// TestCachedSenderAsksNothing: the second MAIL from a domain is judged
// from the cache.
func TestCachedSenderAsksNothing(t *testing.T) {
	srv := zone(t)
	ts := servertest.Start(t, files(srv.Addr, ""))
	mail(t, ts.Addr, "a@mx.test", ok)
	n := srv.Total()
	mail(t, ts.Addr, "b@mx.test", ok)
	mail(t, ts.Addr, "a@nowhere.test", "550 5.1.8 Sender address rejected: nowhere.test does not exist")
	m := srv.Total()
	mail(t, ts.Addr, "b@nowhere.test", "550 5.1.8 Sender address rejected: nowhere.test does not exist")
	if srv.Total() != m || m != n+1 {
		t.Errorf("cached senders made queries: %s", srv.Counts())
	}
}

// TestResolverNeverAnswers: a dead resolver costs a MAIL one
// lookup_timeout (the resolver's own 3 x 10s is beyond the client's
// patience): the sender is deferred, or passes with on_error = pass; the
// null sender is never looked up.
func TestResolverNeverAnswers(t *testing.T) {
	silent := dnstest.StartSilent(t)
	for _, tc := range []struct{ ini, reply string }{
		{"", strings.Replace(deferred, "%s", "example.org", 1)},
		{"on_error = pass\n", ok},
	} {
		f := files(silent.Addr, "lookup_timeout = 300ms\n"+tc.ini)
		f["dns.ini"] = "servers = " + silent.Addr + "\ntimeout = 10s\nattempts = 3\n"
		ts := servertest.Start(t, f)
		mail(t, ts.Addr, "a@example.org", tc.reply)
		n := silent.Reads()
		mail(t, ts.Addr, "", ok)
		if silent.Reads() != n {
			t.Error("the null sender was looked up")
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		ini  string
		want []string
	}{
		{"on_error = ignore\n", []string{`config: mail_from.is_resolvable.ini: [main] on_error: "ignore" is not one of pass, tempfail`}},
		{"lookup_timeout = 0\n", []string{"config: mail_from.is_resolvable.ini: [main] lookup_timeout:", `"0"`}},
		{"check_mx_host = false\n", []string{"mail_from.is_resolvable.ini", `"check_mx_host"`}},
	} {
		servertest.CheckBuild(t, files("127.0.0.1", tc.ini), tc.want...)
	}
	servertest.CheckBuild(t, files("127.0.0.1", "check_mx_hosts = true\non_error = pass\nlookup_timeout = 3s\n"))
}
