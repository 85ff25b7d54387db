package spf_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/auth_results"
	_ "loopmx/plugins/dkim"
	_ "loopmx/plugins/dmarc"
	_ "loopmx/plugins/dnsbl"
	_ "loopmx/plugins/fcrdns"
	_ "loopmx/plugins/greylist"
	_ "loopmx/plugins/mail_from.is_resolvable"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	_ "loopmx/plugins/results"
	_ "loopmx/plugins/spf"
)

const (
	banner = "220 mx.test ESMTP loopmx"
	ok     = "250 2.1.0 Ok"
)

var dialer = servertest.Dialer{Enhanced: servertest.Never}

// zone holds a sender domain for each SPF result for the client
// 127.0.0.1, and one for each mechanism that asks the DNS.
func zone(t *testing.T) *dnstest.Server {
	t.Helper()
	srv := dnstest.Start(t)
	srv.Add(t,
		`pass.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		`fail.test. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`softfail.test. 300 IN TXT "v=spf1 ~all"`,
		`neutral.test. 300 IN TXT "v=spf1 ?all"`,
		`none.test. 300 IN A 192.0.2.1`,
		`permerror.test. 300 IN TXT "v=spf1 bogus:x -all"`,
		// Mechanisms that ask the DNS, each passing 127.0.0.1.
		`mx.test. 300 IN TXT "v=spf1 mx -all"`,
		`mx.test. 300 IN MX 10 mail.mx.test.`,
		`mail.mx.test. 300 IN A 127.0.0.1`,
		`a.test. 300 IN TXT "v=spf1 a:host.a.test -all"`,
		`host.a.test. 300 IN A 127.0.0.1`,
		`include.test. 300 IN TXT "v=spf1 include:pass.test -all"`,
		`ptr.test. 300 IN TXT "v=spf1 ptr -all"`,
		`1.0.0.127.in-addr.arpa. 300 IN PTR host.ptr.test.`,
		`host.ptr.test. 300 IN A 127.0.0.1`,
		`redirect.test. 300 IN TXT "v=spf1 redirect=fail.test"`,
		// HELO names.
		`helo.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`badhelo.test. 300 IN TXT "v=spf1 -all"`,
	)
	srv.Fail("temperror.test", dns.RcodeServerFailure)
	return srv
}

func files(addr, ini string) map[string]string {
	return map[string]string{
		"plugins": "results\nspf\nqueue/maildir\n",
		"spf.ini": ini,
		"dns.ini": dnstest.INI(addr, time.Second),
	}
}

// mail greets with helo and sends MAIL FROM:<from>, requiring the reply
// want.
func mail(t *testing.T, addr, helo, from, want string) {
	t.Helper()
	c := dialer.Dial(t, addr)
	c.ExpectExact(banner)
	c.EHLO(helo)
	c.CmdExact("MAIL FROM:<"+from+">", want)
	c.CmdExact("QUIT", "221 2.0.0 Bye")
}

// TestResultClasses: with the defaults every result is recorded and none
// refuses; the findings carry the result words.
func TestResultClasses(t *testing.T) {
	srv := zone(t)
	ts := servertest.Start(t, files(srv.Addr, ""))
	for _, tc := range []struct{ from, finding string }{
		{"a@pass.test", "pass: mail from pass.test"},
		{"a@fail.test", "fail: mail from fail.test"},
		{"a@softfail.test", "fail (softfail): mail from softfail.test"},
		{"a@neutral.test", "skip (neutral): mail from neutral.test"},
		{"a@none.test", "skip (none): mail from none.test"},
		{"a@nowhere.test", "skip (none): mail from nowhere.test"},
		{"a@temperror.test", "err (temperror): mail from temperror.test"},
		{"a@permerror.test", "err (permerror): mail from permerror.test"},
		{"a@mx.test", "pass: mail from mx.test"},
		{"a@a.test", "pass: mail from a.test"},
		{"a@include.test", "pass: mail from include.test"},
		{"a@ptr.test", "pass: mail from ptr.test"},
		{"a@redirect.test", "fail: mail from redirect.test"},
		{"a@[127.0.0.1]", "skip (none): mail from [127.0.0.1]"},
	} {
		mail(t, ts.Addr, "helo.test", tc.from, ok)
		want := `"tx":{"spf":["pass: helo helo.test","` + tc.finding + `"]}`
		servertest.Eventually(t, 10*time.Millisecond, "the results line of <"+tc.from+">", func() bool {
			return ts.Log.Count(`"plugin":"results"`, want) == 1
		})
	}
}

// TestActions: each result's action in [mail_from].
func TestActions(t *testing.T) {
	srv := zone(t)
	ts := servertest.Start(t, files(srv.Addr, "[mail_from]\nfail = reject\nsoftfail = tempfail\nneutral = reject\nnone = reject\n"+
		"temperror = tempfail\npermerror = reject\n"))
	for _, tc := range []struct{ from, reply string }{
		{"a@pass.test", ok},
		{"a@fail.test", "550 5.7.23 SPF fail: fail.test does not designate 127.0.0.1 as permitted sender"},
		{"a@softfail.test", "451 4.7.23 SPF softfail: softfail.test does not designate 127.0.0.1 as permitted sender (softfail), try again later"},
		{"a@neutral.test", "550 5.7.23 SPF neutral: 127.0.0.1 is neither permitted nor denied by neutral.test"},
		{"a@none.test", "550 5.7.23 SPF none: none.test publishes no SPF record"},
		{"a@temperror.test", "451 4.7.24 SPF temperror: the SPF record of temperror.test could not be looked up, try again later"},
		{"a@permerror.test", "550 5.7.24 SPF permerror: the SPF record of permerror.test is broken"},
	} {
		mail(t, ts.Addr, "helo.test", tc.from, tc.reply)
	}
}

// TestHelo: [helo] acts on the HELO name's result, at MAIL; check_helo =
// false leaves the HELO name alone. The null sender's MAIL FROM identity
// is postmaster@ the HELO name.
func TestHelo(t *testing.T) {
	srv := zone(t)
	const heloFail = "550 5.7.23 SPF fail: badhelo.test does not designate 127.0.0.1 as permitted sender"
	ts := servertest.Start(t, files(srv.Addr, "[helo]\nfail = reject\n"))
	mail(t, ts.Addr, "badhelo.test", "a@pass.test", heloFail)
	mail(t, ts.Addr, "helo.test", "a@fail.test", ok)
	mail(t, ts.Addr, "[127.0.0.1]", "a@pass.test", ok) // a literal: none

	ts = servertest.Start(t, files(srv.Addr, "check_helo = false\n[helo]\nfail = reject\n[mail_from]\nfail = reject\n"))
	mail(t, ts.Addr, "helo.test", "a@pass.test", ok)
	mail(t, ts.Addr, "badhelo.test", "", heloFail)
	mail(t, ts.Addr, "helo.test", "", ok)
	servertest.Eventually(t, 10*time.Millisecond, "the results line of <> from helo.test", func() bool {
		return ts.Log.Count(`"plugin":"results"`, `"tx":{"spf":["pass: mail from helo.test"]}`) == 1
	})
}

// TestNotes: the results as Authentication-Results method results, in
// the connection's and the transaction's notes; a second MAIL does not
// check the HELO name again, and asks nothing: its answers are cached, so
// the hook runs on the event loop.
func TestNotes(t *testing.T) {
	srv := zone(t)
	ch, err := servertest.Build(t, files(srv.Addr, ""))
	if err != nil {
		t.Fatal(err)
	}
	c := &plugins.Conn{ID: "t.1", RemoteIP: netip.MustParseAddr("127.0.0.1"), Helo: "helo.test"}
	c.BeginTx("a@softfail.test", time.Now())
	call := &plugins.Call{Hook: plugins.HookMail, Arg: "a@softfail.test"}
	res, next, done := ch.Step(c, call, 0)
	if done {
		t.Fatalf("the first MAIL ran inline (%s); its lookups need the workpool", res.Action)
	}
	if res = ch.RunOne(c, call, next); res.Action != plugins.Continue {
		t.Fatalf("MAIL: %s, want no opinion", res.Action)
	}
	if got, want := fmt.Sprint(c.Note("spf.helo")), "pass smtp.helo=helo.test"; got != want {
		t.Errorf("note spf.helo reads %q, want %q", got, want)
	}
	if got, want := fmt.Sprint(c.Tx.Note("spf")), "softfail smtp.mailfrom=a@softfail.test"; got != want {
		t.Errorf("note spf reads %q, want %q", got, want)
	}
	c.EndTx()

	queries := srv.Total()
	c.BeginTx("", time.Now())
	call = &plugins.Call{Hook: plugins.HookMail, Arg: ""}
	if res, _, done = ch.Step(c, call, 0); !done || res.Action != plugins.Continue {
		t.Fatalf("MAIL FROM:<> after a checked HELO: inline %v, %s; want inline, no opinion", done, res.Action)
	}
	if got, want := fmt.Sprint(c.Tx.Note("spf")), "pass smtp.mailfrom=postmaster@helo.test"; got != want {
		t.Errorf("note spf of <> reads %q, want %q", got, want)
	}
	findings, _ := c.Tx.Findings()
	if len(findings) != 1 || findings[0].Message != "mail from helo.test" {
		t.Errorf("the second transaction's findings: %+v; want only its MAIL FROM check", findings)
	}
	c.EndTx()
	c.BeginTx("b@softfail.test", time.Now())
	if _, _, done = ch.Step(c, &plugins.Call{Hook: plugins.HookMail, Arg: "b@softfail.test"}, 0); !done {
		t.Error("a MAIL whose answers are cached went to the workpool")
	}
	if n := srv.Total(); n != queries {
		t.Errorf("cached MAILs made %d queries: %s", n-queries, srv.Counts())
	}
}

// TestResolverNeverAnswers: a dead resolver costs a MAIL one
// lookup_timeout (the resolver's own 3 x 10s is beyond the client's
// patience): the result is temperror, and the mail flows, or is deferred
// with temperror = tempfail.
func TestResolverNeverAnswers(t *testing.T) {
	silent := dnstest.StartSilent(t)
	for _, tc := range []struct{ ini, reply string }{
		{"", ok},
		{"[mail_from]\ntemperror = tempfail\n", "451 4.7.24 SPF temperror: the SPF record of example.org could not be looked up, try again later"},
	} {
		f := files(silent.Addr, "lookup_timeout = 300ms\n"+tc.ini)
		f["dns.ini"] = "servers = " + silent.Addr + "\ntimeout = 10s\nattempts = 3\n"
		ts := servertest.Start(t, f)
		mail(t, ts.Addr, "helo.example.org", "a@example.org", tc.reply)
		servertest.Eventually(t, 10*time.Millisecond, "the results line", func() bool {
			return strings.Contains(ts.Log.String(), `"err (temperror): mail from example.org"`)
		})
		mail(t, ts.Addr, "helo.example.org", "b@example.org", tc.reply)
		if n := strings.Count(ts.Log.String(), "SPF lookup failed"); n != 1 {
			t.Errorf("the log has %d lines about the failed lookups, want 1:\n%s", n, ts.Log)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		ini  string
		want []string
	}{
		{"[mail_from]\nfail = refuse\n", []string{`config: spf.ini: [mail_from] fail: "refuse" is not one of record, reject, tempfail`}},
		{"[helo]\npass = reject\n", []string{`config: spf.ini: [helo] pass: "reject" is not one of record`}},
		{"[mail_from]\ntemperror = reject\n", []string{`config: spf.ini: [mail_from] temperror: "reject" is not one of record, tempfail`}},
		{"[mail_from]\nfial = reject\n", []string{"spf.ini", `"fial"`}},
		{"[mailfrom]\nfail = reject\n", []string{"spf.ini", "mailfrom"}},
		{"lookup_timeout = 30s\n", []string{"config: spf.ini: [main] lookup_timeout:", `"30s"`}},
		{"check_helo = maybe\n", []string{"spf.ini", "check_helo", `"maybe"`}},
	} {
		servertest.CheckBuild(t, files("127.0.0.1", tc.ini), tc.want...)
	}
	servertest.CheckBuild(t, files("127.0.0.1", "lookup_timeout = 3s\ncheck_helo = false\n[mail_from]\nfail = reject\nsoftfail = tempfail\ntemperror = tempfail\n[helo]\nfail = reject\n"))
}

// TestReceivedSPF: the stored message carries a Received-SPF field (RFC
// 7208 9.1) after loopmx's Received field and before the message's own;
// received_spf = false leaves it out.
func TestReceivedSPF(t *testing.T) {
	srv := zone(t)
	for _, tc := range []struct {
		ini, helo, from, want string
	}{
		{"", "helo.test", "a@softfail.test", "Received-SPF: softfail (mx.test: domain of a@softfail.test does not designate 127.0.0.1 as permitted sender (softfail))\r\n" +
			"\tclient-ip=127.0.0.1;\r\n\tenvelope-from=\"a@softfail.test\";\r\n\thelo=helo.test;\r\n\treceiver=mx.test;\r\n\tidentity=mailfrom\r\nSubject: hi\r\n"},
		{"", "[127.0.0.1]", "", "Received-SPF: none (mx.test: domain of postmaster@[127.0.0.1] publishes no SPF record)\r\n" +
			"\tclient-ip=127.0.0.1;\r\n\tenvelope-from=\"\";\r\n\thelo=\"[127.0.0.1]\";\r\n\treceiver=mx.test;\r\n\tidentity=mailfrom\r\nSubject: hi\r\n"},
		{"received_spf = false\n", "helo.test", "a@pass.test", ""},
	} {
		spool := t.TempDir()
		f := files(srv.Addr, tc.ini)
		f["plugins"] = "spf\nqueue/maildir\n"
		f["maildir.ini"] = "path = " + spool + "\n"
		ts := servertest.Start(t, f)
		c := dialer.Dial(t, ts.Addr)
		c.ExpectExact(banner)
		c.EHLO(tc.helo)
		c.CmdExact("MAIL FROM:<"+tc.from+">", ok)
		c.CmdExact("RCPT TO:<user@example.com>", "250 2.1.5 Ok")
		c.CmdExact("DATA", "354 End data with <CR><LF>.<CR><LF>")
		c.Send("Subject: hi\r\n\r\nhello\r\n.")
		c.Expect("250 2.0.0 Ok: queued")
		c.CmdExact("QUIT", "221 2.0.0 Bye")
		stored := readSpool(t, spool)
		received := strings.Index(stored, "Received: from")
		field := strings.Index(stored, "Received-SPF:")
		switch {
		case tc.want == "" && field >= 0:
			t.Errorf("received_spf = false, and the message has a Received-SPF field:\n%s", stored)
		case tc.want != "" && (received < 0 || !strings.Contains(stored[received:], tc.want)):
			t.Errorf("the stored message lacks, after its Received field,\n%q\n%q", tc.want, stored)
		}
	}
}

// readSpool returns the one message in the maildir's new/.
func readSpool(t *testing.T, spool string) string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(spool, "new"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("the maildir holds %d messages (%v), want 1", len(entries), err)
	}
	b, err := os.ReadFile(filepath.Join(spool, "new", entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestGreylistTrustsPass: greylist's default skip rule spf=pass reads the
// note spf sets: a sender whose SPF passes is not greylisted, one whose
// SPF fails is.
func TestGreylistTrustsPass(t *testing.T) {
	srv := zone(t)
	rs := redistest.Start(t)
	f := files(srv.Addr, "check_helo = false\n")
	f["plugins"] = "spf\ngreylist\nrcpt_to.in_host_list\nqueue/maildir\n"
	f["host_list"] = "example.com\n"
	dir := servertest.WriteDir(t, f)
	rs.WriteINI(dir)
	ts := servertest.StartDir(t, dir)
	for _, tc := range []struct{ from, rcpt string }{
		{"a@pass.test", "250 2.1.5 Ok"},
		{"a@fail.test", "451 4.7.1"},
	} {
		c := dialer.Dial(t, ts.Addr)
		c.ExpectExact(banner)
		c.EHLO("helo.test")
		c.CmdExact("MAIL FROM:<"+tc.from+">", ok)
		c.Cmd("RCPT TO:<user@example.com>", tc.rcpt)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
	}
}

// TestDeadDNSMailFlows: every DNS plugin in one chain, and a resolver
// that never answers. Each plugin waits its own lookup_timeout and no
// more (the resolver's own 3 x 10s is beyond the client's patience), the
// ones set to fail open let the message through, and it is stored.
func TestDeadDNSMailFlows(t *testing.T) {
	silent := dnstest.StartSilent(t)
	spool := t.TempDir()
	ts := servertest.Start(t, map[string]string{
		"plugins":                     "fcrdns\ndnsbl\nmail_from.is_resolvable\nspf\ndkim\ndmarc\nauth_results\nqueue/maildir\n",
		"dkim.ini":                    "lookup_timeout = 300ms\n",
		"dmarc.ini":                   "lookup_timeout = 300ms\n",
		"dns.ini":                     "servers = " + silent.Addr + "\ntimeout = 10s\nattempts = 3\n",
		"fcrdns.ini":                  "skip_private = false\nlookup_timeout = 300ms\n",
		"dnsbl.ini":                   "zones = bl.test\nskip_private = false\nlookup_timeout = 300ms\n",
		"mail_from.is_resolvable.ini": "on_error = pass\nlookup_timeout = 300ms\n",
		"spf.ini":                     "lookup_timeout = 300ms\n",
		"maildir.ini":                 "path = " + spool + "\n",
	})
	c := dialer.Dial(t, ts.Addr)
	c.ExpectExact(banner)
	c.EHLO("helo.example.org")
	c.CmdExact("MAIL FROM:<a@example.org>", ok)
	c.CmdExact("RCPT TO:<user@example.com>", "250 2.1.5 Ok")
	c.CmdExact("DATA", "354 End data with <CR><LF>.<CR><LF>")
	// A signature whose key and a From whose policy the dead resolver
	// cannot give: dkim and dmarc each wait their budget, then record.
	c.Send("DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; c=relaxed/relaxed;\r\n" +
		"\th=from:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n" +
		"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n.")
	c.Expect("250 2.0.0 Ok: queued")
	c.CmdExact("QUIT", "221 2.0.0 Bye")
	stored := readSpool(t, spool)
	for _, want := range []string{"Received-SPF: temperror", "dkim=temperror", "dmarc=temperror"} {
		if !strings.Contains(stored, want) {
			t.Errorf("the stored message lacks %q:\n%s", want, stored)
		}
	}
}
