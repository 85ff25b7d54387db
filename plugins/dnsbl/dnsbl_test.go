package dnsbl_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"loopmx/internal/dnsx"
	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/dnsbl"
	_ "loopmx/plugins/results"
)

// startZone starts a DNS server holding the A records of answers
// (absolute name -> address) with a TTL of 300 seconds; every other name
// is NXDOMAIN.
func startZone(t *testing.T, answers map[string]string) *dnstest.Server {
	t.Helper()
	srv := dnstest.Start(t)
	for name, a := range answers {
		srv.Add(t, name+" 300 IN A "+a)
	}
	return srv
}

// 127.0.0.1, the address every test client connects from unless it says
// otherwise, is listed in bl.test; 127.0.0.2 is listed nowhere.
const listedName = "1.0.0.127.bl.test."

const (
	banner     = "220 mx.test ESMTP loopmx"
	mailOK     = "250 2.1.0 Ok"
	rcptOK     = "250 2.1.5 Ok"
	listedRcpt = "550 5.7.1 Service unavailable; client [127.0.0.1] listed by bl.test"
	listedConn = "554 5.7.1 Service unavailable; client [127.0.0.1] listed by bl.test"
	failedRcpt = "451 4.4.3 DNSBL lookup failed, try again later"
	failedConn = "421 4.4.3 DNSBL lookup failed, try again later"
)

// smtpINI is the smtp.ini of these tests: two event loops, four workers
// with a short queue, short timeouts, no cap on connections or data lines.
const smtpINI = "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 4\nwork_queue_size = 64\n" +
	"inactivity_timeout = 30s\ngraceful_timeout = 1s\nmax_connections = 0\nmax_data_line_length = 0\ntcp_keepalive = 0\n"

// dialer makes the test clients, which compare whole replies.
var dialer = servertest.Dialer{Enhanced: servertest.Never}

// files is a config directory running only dnsbl with the given ini.
func files(ini string) map[string]string {
	return map[string]string{"smtp.ini": smtpINI, "plugins": "dnsbl\n", "dnsbl.ini": ini}
}

// iniFor points dnsbl at resolver; extra adds keys.
func iniFor(resolver string, extra ...string) string {
	return "zones = bl.test\nresolver = " + resolver + "\nskip_private = false\n" + strings.Join(extra, "\n") + "\n"
}

// toRcpt greets, sends MAIL and one RCPT, and requires the RCPT reply want.
func toRcpt(c *servertest.Client, want string) {
	c.T.Helper()
	c.ExpectExact(banner)
	c.EHLO("client.example.org")
	c.CmdExact("MAIL FROM:<sender@example.org>", mailOK)
	c.CmdExact("RCPT TO:<user@example.com>", want)
}

func TestListedRefusedAtRcpt(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files(iniFor(zone.Addr)))

	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	toRcpt(c, listedRcpt)
	// Every recipient of the session is refused, and the session goes on.
	c.CmdExact("RCPT TO:<postmaster@example.com>", listedRcpt)
	c.CmdExact("QUIT", "221 2.0.0 Bye")
	if n := zone.Total(); n != 1 {
		t.Errorf("the zone got %d queries, want 1 (one lookup per connection)", n)
	}
}

func TestListedRefusedAtConnect(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files(iniFor(zone.Addr, "reject = connect")))

	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(listedConn)
	c.ExpectEOF()
}

func TestUnlistedAccepted(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	for _, reject := range []string{"rcpt", "connect"} {
		t.Run(reject, func(t *testing.T) {
			ts := servertest.Start(t, files(iniFor(zone.Addr, "reject = "+reject)))
			toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.2"), rcptOK)
		})
	}
}

// TestReplyNamesTheListingZone: of two zones, the one that lists the
// client is named, although the other comes first in dnsbl.ini, and each
// zone is asked once. The listing answer is held until the other zone's
// query has come: the lookup stops at the first listing and does not wait
// for the other answers, so without the hold the other query may still be
// in flight when the client reads its reply, and the count below would
// race with it.
func TestReplyNamesTheListingZone(t *testing.T) {
	const cleanName = "1.0.0.127.clean.test."
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	releaseAfter(zone, listedName, cleanName)
	ts := servertest.Start(t, files("zones = clean.test, bl.test\nresolver = "+zone.Addr+"\nskip_private = false\n"))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), listedRcpt)
	if n := zone.Total(); n != 2 {
		t.Errorf("the zones got %d queries, want 2 (one per zone): %s", n, zone.Counts())
	}
}

// releaseAfter holds the answer for held until a query for first has
// come (or dnstest.HoldTimeout passes).
func releaseAfter(srv *dnstest.Server, held, first string) {
	release := srv.Hold(held, dns.TypeA)
	go func() {
		defer release()
		deadline := time.Now().Add(dnstest.HoldTimeout)
		for srv.Count(first, dns.TypeA) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}()
}

// TestResults: with the results plugin in front, a listed client's
// transaction and connection lines carry dnsbl's fail with the zone; a
// clean client's a pass, a skipped one's a skip.
func TestResults(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	f := files(iniFor(zone.Addr))
	f["plugins"] = "results\ndnsbl\n"
	ts := servertest.Start(t, f)
	for _, tc := range []struct{ from, rcpt, finding string }{
		{"127.0.0.1", listedRcpt, `"conn":{"dnsbl":["fail: listed by bl.test"]}`},
		{"127.0.0.2", rcptOK, `"conn":{"dnsbl":["pass: not listed"]}`},
	} {
		c := dialer.DialFrom(t, ts.Addr, tc.from)
		toRcpt(c, tc.rcpt)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
		// One transaction line, then the connection line.
		servertest.Eventually(t, 20*time.Millisecond, "the results lines of "+tc.from, func() bool {
			return ts.Log.Count(`"plugin":"results"`, tc.finding) == 2
		})
	}

	f["dnsbl.ini"] = "zones = bl.test\nresolver = " + zone.Addr + "\n"
	ts = servertest.Start(t, f)
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(banner)
	c.CmdExact("QUIT", "221 2.0.0 Bye")
	servertest.Eventually(t, 20*time.Millisecond, "the results line of a private address", func() bool {
		return ts.Log.Count(`"plugin":"results"`, `"conn":{"dnsbl":["skip: private address"]}`) == 1
	})
}

func TestCacheAnswersSecondConnection(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files(iniFor(zone.Addr, "reject = connect")))

	for i := range 2 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
		c.ExpectExact(listedConn)
		c.ExpectEOF()
		if n := zone.Total(); n != 1 {
			t.Fatalf("after connection %d the zone got %d queries, want 1", i+1, n)
		}
	}
	// A clean verdict is cached too.
	for i := range 2 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
		c.ExpectExact(banner)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
		if n := zone.Total(); n != 2 {
			t.Fatalf("after clean connection %d the zone got %d queries, want 2", i+1, n)
		}
	}
}

// TestCacheOff: with the shared cache off (dns.ini cache_size = 0) every
// connection asks.
func TestCacheOff(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	f := files(iniFor(zone.Addr, "reject = connect"))
	f["dns.ini"] = "cache_size = 0\n"
	ts := servertest.Start(t, f)
	for range 2 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
		c.ExpectExact(listedConn)
		c.ExpectEOF()
	}
	if n := zone.Total(); n != 2 {
		t.Errorf("without a cache the zone got %d queries for two connections, want 2", n)
	}
}

// TestResolverNeverAnswers: a dead resolver costs each connection at
// most one lookup_timeout, then the client gets 4xx or passes as
// on_error says. The resolver's own timeout (dns.ini, 3 x 10s) is far
// beyond the client's patience (servertest.IOTimeout), so a session that
// ends at all ended on the budget. The second connection finds the first
// one's query still waiting and joins it: the dead server gets one query,
// not one per connection. Failures are logged once, not per connection.
func TestResolverNeverAnswers(t *testing.T) {
	cases := []struct {
		reject, onError string
		run             func(c *servertest.Client)
	}{
		{"rcpt", "tempfail", func(c *servertest.Client) { toRcpt(c, failedRcpt) }},
		{"rcpt", "pass", func(c *servertest.Client) { toRcpt(c, rcptOK) }},
		{"connect", "tempfail", func(c *servertest.Client) { c.ExpectExact(failedConn); c.ExpectEOF() }},
		{"connect", "pass", func(c *servertest.Client) { toRcpt(c, rcptOK) }},
	}
	for _, tc := range cases {
		t.Run(tc.reject+"/"+tc.onError, func(t *testing.T) {
			silent := dnstest.StartSilent(t)
			f := files("zones = bl.test\nskip_private = false\nlookup_timeout = 300ms\nreject = " + tc.reject + "\non_error = " + tc.onError + "\n")
			f["dns.ini"] = "servers = " + silent.Addr + "\ntimeout = 10s\nattempts = 3\n"
			ts := servertest.Start(t, f)
			for range 2 {
				tc.run(dialer.DialFrom(t, ts.Addr, "127.0.0.1"))
			}
			if n := silent.Reads(); n != 1 {
				t.Errorf("the resolver saw %d queries for two connections, want 1 (the second joins the first)", n)
			}
			if n := strings.Count(ts.Log.String(), "DNSBL lookup failed"); n != 1 {
				t.Errorf("the log has %d lines about the failed lookups, want 1:\n%s", n, ts.Log)
			}
		})
	}
}

// TestFailureNotCached: a failed lookup is not cached; the next
// connection asks again.
func TestFailureNotCached(t *testing.T) {
	zone := startZone(t, nil)
	zone.Fail(listedName, dns.RcodeServerFailure)
	ts := servertest.Start(t, files(iniFor(zone.Addr, "on_error = tempfail")))
	for i := range 2 {
		toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), failedRcpt)
		if n := zone.Total(); n != int64(i+1) {
			t.Errorf("after connection %d the zone got %d queries; a SERVFAIL must not be cached", i+1, n)
		}
	}
}

func TestErrorCodeAnswerIsAFailure(t *testing.T) {
	// Spamhaus answers 127.255.255.254 to queries through public
	// resolvers: that is no listing, and no clean bill either.
	zone := startZone(t, map[string]string{listedName: "127.255.255.254"})
	ts := servertest.Start(t, files(iniFor(zone.Addr, "on_error = tempfail")))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), failedRcpt)
}

func TestAnswerOutside127IsNoListing(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "192.0.2.1"})
	ts := servertest.Start(t, files(iniFor(zone.Addr, "on_error = tempfail")))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), rcptOK)
}

func TestSkipPrivateByDefault(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files("zones = bl.test\nresolver = "+zone.Addr+"\n"))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), rcptOK)
	if n := zone.Total(); n != 0 {
		t.Errorf("a loopback client was looked up (%d queries)", n)
	}
}

// TestHooksInlineOrPool checks what the event loop does with each hook:
// the connect hook (DNS) goes to the workpool, the RCPT hook (a note)
// runs inline.
func TestHooksInlineOrPool(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ch, err := servertest.Build(t, files(iniFor(zone.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	c := &plugins.Conn{ID: "t.1", RemoteIP: netip.MustParseAddr("127.0.0.1")}
	call := &plugins.Call{Hook: plugins.HookConnect}
	res, next, done := ch.Step(c, call, 0)
	if done {
		t.Fatalf("the connect hook ran inline (result %s); a DNS lookup must go to the workpool", res.Action)
	}
	if res = ch.RunOne(c, call, next); res.Action != plugins.Continue {
		t.Fatalf("with reject = rcpt the connect hook decided %s", res.Action)
	}
	if got := fmt.Sprint(c.Note("dnsbl")); got != "listed by bl.test" {
		t.Errorf("note dnsbl reads %q, want %q", got, "listed by bl.test")
	}
	res, _, done = ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt, Arg: "user@example.com"}, 0)
	if !done {
		t.Fatal("the RCPT hook went to the workpool; it only reads a note")
	}
	if got := string(plugins.ReplyFor(plugins.HookRcpt, res).AppendTo(nil)); got != listedRcpt+"\r\n" {
		t.Errorf("RCPT: client reads %q, want %q", got, listedRcpt)
	}

	// The next connection from the address finds the answer in the DNS
	// cache: its connect hook runs inline and asks nothing.
	c = &plugins.Conn{ID: "t.2", RemoteIP: netip.MustParseAddr("127.0.0.1")}
	if res, _, done = ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0); !done || res.Action != plugins.Continue {
		t.Fatalf("a cached client's connect hook: inline %v, result %s; want inline, Continue", done, res.Action)
	}
	if got := fmt.Sprint(c.Note("dnsbl")); got != "listed by bl.test" {
		t.Errorf("from the cache, note dnsbl reads %q, want %q", got, "listed by bl.test")
	}
	if n := zone.Total(); n != 1 {
		t.Errorf("two connections made %d queries, want 1", n)
	}
}

// TestWeights: listings add their weights, an allowlist (a negative
// weight) takes from the score, filters pick the answers an entry counts,
// and only a score that reaches the threshold refuses. Each zone is
// asked once per client, however many entries name it.
func TestWeights(t *testing.T) {
	const ini = "zones = weak1.test*2, weak2.test*2, strong.test=127.0.0.[2..11]*3, strong.test=127.0.0.10*1, wl.test=127.0.[0..255].[2;3]*-2\n" +
		"threshold = 3\n"
	zone := startZone(t, nil)
	listings := map[string][]string{ // client -> zone=answer
		"127.0.0.2": {"weak1.test=127.0.0.2"},
		"127.0.0.3": {"weak1.test=127.0.0.2", "weak2.test=127.0.0.2"},
		"127.0.0.4": {"weak1.test=127.0.0.2", "weak2.test=127.0.0.2", "wl.test=127.0.10.2"},
		"127.0.0.5": {"strong.test=127.0.0.20"},
		"127.0.0.6": {"strong.test=127.0.0.2"},
		"127.0.0.7": {"strong.test=127.0.0.2", "wl.test=127.0.10.3"},
		"127.0.0.8": {"weak1.test=127.0.0.2", "weak2.test=127.0.0.2", "wl.test=127.0.10.5"},
		"127.0.0.9": {"strong.test=127.0.0.10", "wl.test=127.0.10.3"},
	}
	for client, ls := range listings {
		ip := netip.MustParseAddr(client)
		for _, l := range ls {
			z, a, _ := strings.Cut(l, "=")
			zone.Add(t, dnsx.Reverse(ip)+"."+z+". 300 IN A "+a)
		}
	}
	f := files(ini + "resolver = " + zone.Addr + "\nskip_private = false\n")
	f["plugins"] = "results\ndnsbl\n"
	ts := servertest.Start(t, f)
	for _, tc := range []struct{ client, rcpt, finding string }{
		// One weak listing is not enough; two are.
		{"127.0.0.2", rcptOK, "pass: score 2 below threshold 3: listed by weak1.test"},
		{"127.0.0.3", "550 5.7.1 Service unavailable; client [127.0.0.3] listed by weak1.test, weak2.test",
			"fail: listed by weak1.test, weak2.test (score 4, threshold 3)"},
		// The allowlist lifts two weak listings...
		{"127.0.0.4", rcptOK, "pass: score 2 below threshold 3: listed by weak1.test, weak2.test; allowed by wl.test"},
		// ... but only for the answers its filter names.
		{"127.0.0.8", "550 5.7.1 Service unavailable; client [127.0.0.8] listed by weak1.test, weak2.test",
			"fail: listed by weak1.test, weak2.test (score 4, threshold 3)"},
		// An answer outside the filter counts nothing.
		{"127.0.0.5", rcptOK, "pass: not listed"},
		{"127.0.0.6", "550 5.7.1 Service unavailable; client [127.0.0.6] listed by strong.test",
			"fail: listed by strong.test (score 3, threshold 3)"},
		// A strong listing lifted by the allowlist; an answer that two
		// entries of its zone match counts for both (3 + 1 - 2).
		{"127.0.0.7", rcptOK, "pass: score 1 below threshold 3: listed by strong.test; allowed by wl.test"},
		{"127.0.0.9", rcptOK, "pass: score 2 below threshold 3: listed by strong.test; allowed by wl.test"},
	} {
		t.Run(tc.client, func(t *testing.T) {
			before := zone.Total()
			finding := `"conn":{"dnsbl":["` + tc.finding + `"]}`
			lines := ts.Log.Count(`"plugin":"results"`, finding) // another client's may read the same
			c := dialer.DialFrom(t, ts.Addr, tc.client)
			toRcpt(c, tc.rcpt)
			c.CmdExact("QUIT", "221 2.0.0 Bye")
			// One transaction line, then the connection line.
			servertest.Eventually(t, 20*time.Millisecond, "the results lines of "+tc.client, func() bool {
				return ts.Log.Count(`"plugin":"results"`, finding) == lines+2
			})
			strong := dnsx.Reverse(netip.MustParseAddr(tc.client)) + ".strong.test."
			if n, s := zone.Total()-before, zone.Count(strong, dns.TypeA); n != 4 || s != 1 {
				t.Errorf("the zones got %d queries, strong.test %d; want 4 and 1 (one per zone)", n, s)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		ini  string
		want []string // all in the error
	}{
		{"zones = bl.test\nzone = bl.test\n", []string{"dnsbl.ini", `"zone"`}},
		{"resolver = 127.0.0.1:53\n", []string{"config: dnsbl.ini: [main] zones:", "no zone"}},
		{"zones = bl.test, bad zone!\n", []string{"config: dnsbl.ini: [main] zones:", `"bad zone!"`}},
		{"zones = bl.test\nresolver = localhost:53\n", []string{"config: dnsbl.ini: [main] resolver:", `"localhost:53"`}},
		{"zones = bl.test\nreject = later\n", []string{`config: dnsbl.ini: [main] reject: "later" is not one of connect, rcpt`}},
		{"zones = bl.test\non_error = ignore\n", []string{`config: dnsbl.ini: [main] on_error: "ignore" is not one of pass, tempfail`}},
		{"zones = bl.test\nlookup_timeout = 30s\n", []string{"config: dnsbl.ini: [main] lookup_timeout:", `"30s"`, "less than timeout"}},
		{"zones = bl.test\nlookup_timeout = 5s\ntimeout = 3s\n", []string{"config: dnsbl.ini: [main] lookup_timeout:", `"5s"`, "less than timeout (3s)"}},
		{"zones = bl.test\nlookup_timeout = soon\n", []string{"dnsbl.ini", "lookup_timeout", `"soon"`}},
		{"zones = bl.test\ncache_size = 100\n", []string{"config: dnsbl.ini: [main] cache_size:", `"100"`, "dns.ini"}},
		{"zones = bl.test\ncache_ttl = 60s\n", []string{"config: dnsbl.ini: [main] cache_ttl:", `"60s"`, "dns.ini"}},
		{"zones = bl.test*x\n", []string{"config: dnsbl.ini: [main] zones:", `the weight "x"`}},
		{"zones = bl.test=127.0.0.[2..300]\n", []string{"config: dnsbl.ini: [main] zones:", `"2..300"`}},
		{"zones = bl.test\nthreshold = 0\n", []string{"config: dnsbl.ini: [main] threshold:", `"0"`}},
		{"zones = bl.test\nthreshold = many\n", []string{"dnsbl.ini", "threshold", `"many"`}},
		{"zones = bl.test\nskip_private = perhaps\n", []string{"dnsbl.ini", "skip_private", `"perhaps"`}},
	}
	for _, tc := range cases {
		_, err := servertest.Build(t, files(tc.ini))
		if err == nil {
			t.Errorf("dnsbl.ini %q: Build succeeded, want an error", tc.ini)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("dnsbl.ini %q: error %q does not contain %q", tc.ini, err, w)
			}
		}
	}
	if _, err := servertest.Build(t, files("zones = zen.spamhaus.org., bl.example.net*2, list.dnswl.org=127.0.[0..255].[1;2..3]*-3\nthreshold = 2\nresolver = 127.0.0.1\n")); err != nil {
		t.Errorf("a good dnsbl.ini: %v", err)
	}
}

// TestDNSWLNote: a client an allowlist lists gets the connection note
// dnswl, which other plugins (greylist) read as a client vouched for; a
// client no allowlist lists gets none.
func TestDNSWLNote(t *testing.T) {
	zone := startZone(t, map[string]string{
		"2.0.0.127.wl.test.": "127.0.10.2",
		"3.0.0.127.bl.test.": "127.0.0.2",
	})
	ch, err := servertest.Build(t, files("zones = bl.test*2, wl.test*-2\nthreshold = 2\nresolver = "+zone.Addr+"\nskip_private = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		client string
		note   any
	}{{"127.0.0.2", "listed by wl.test"}, {"127.0.0.3", nil}} {
		c := &plugins.Conn{ID: "t.1", RemoteIP: netip.MustParseAddr(tc.client)}
		call := &plugins.Call{Hook: plugins.HookConnect}
		if _, next, done := ch.Step(c, call, 0); !done {
			ch.RunOne(c, call, next)
		}
		if got := c.Note("dnswl"); got != tc.note {
			t.Errorf("client %s: note dnswl %#v, want %#v", tc.client, got, tc.note)
		}
	}
}
