package dnsbl_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/dnsbl"
	_ "loopmx/plugins/results"
)

// fakeZone is a DNS server on 127.0.0.1 that answers A queries from a
// table and NXDOMAIN for every other name, counting the queries.
type fakeZone struct {
	addr    string
	answers map[string]string // absolute query name -> A record
	queries atomic.Int64

	// holds orders answers: the answer for a key is sent only once a
	// query for its value has come (or after servertest.IOTimeout).
	holds map[string]string

	mu      sync.Mutex
	arrived map[string]chan struct{} // closed at the first query for the name
}

func startZone(t *testing.T, answers map[string]string) *fakeZone {
	t.Helper()
	return startZoneHolding(t, answers, nil)
}

// startZoneHolding starts a zone whose answers for the keys of holds wait
// for a query for their values.
func startZoneHolding(t *testing.T, answers, holds map[string]string) *fakeZone {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z := &fakeZone{addr: pc.LocalAddr().String(), answers: answers, holds: holds, arrived: map[string]chan struct{}{}}
	up := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve), NotifyStartedFunc: func() { close(up) }}
	go srv.ActivateAndServe()
	<-up
	t.Cleanup(func() { srv.Shutdown() })
	return z
}

// arrival returns the channel closed at the first query for name; with
// came it closes it.
func (z *fakeZone) arrival(name string, came bool) chan struct{} {
	z.mu.Lock()
	defer z.mu.Unlock()
	ch, ok := z.arrived[name]
	if !ok {
		ch = make(chan struct{})
		z.arrived[name] = ch
	}
	if came {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
	return ch
}

func (z *fakeZone) serve(w dns.ResponseWriter, req *dns.Msg) {
	z.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	if len(req.Question) == 1 {
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		z.arrival(name, true)
		if other, ok := z.holds[name]; ok {
			select {
			case <-z.arrival(other, false):
			case <-time.After(servertest.IOTimeout):
			}
		}
		a, ok := z.answers[name]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A:   net.ParseIP(a),
			})
		}
	}
	w.WriteMsg(m)
}

// silentResolver is a UDP socket that reads queries and never answers.
type silentResolver struct {
	addr  string
	reads atomic.Int64
}

func startSilent(t *testing.T) *silentResolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentResolver{addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			s.reads.Add(1)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return s
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
	ts := servertest.Start(t, files(iniFor(zone.addr)))

	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	toRcpt(c, listedRcpt)
	// Every recipient of the session is refused, and the session goes on.
	c.CmdExact("RCPT TO:<postmaster@example.com>", listedRcpt)
	c.CmdExact("QUIT", "221 2.0.0 Bye")
	if n := zone.queries.Load(); n != 1 {
		t.Errorf("the zone got %d queries, want 1 (one lookup per connection)", n)
	}
}

func TestListedRefusedAtConnect(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files(iniFor(zone.addr, "reject = connect")))

	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(listedConn)
	c.ExpectEOF()
}

func TestUnlistedAccepted(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	for _, reject := range []string{"rcpt", "connect"} {
		t.Run(reject, func(t *testing.T) {
			ts := servertest.Start(t, files(iniFor(zone.addr, "reject = "+reject)))
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
	zone := startZoneHolding(t, map[string]string{listedName: "127.0.0.2"}, map[string]string{listedName: cleanName})
	ts := servertest.Start(t, files("zones = clean.test, bl.test\nresolver = "+zone.addr+"\nskip_private = false\n"))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), listedRcpt)
	if n := zone.queries.Load(); n != 2 {
		t.Errorf("the zones got %d queries, want 2 (one per zone)", n)
	}
}

// TestResults: with the results plugin in front, a listed client's
// transaction and connection lines carry dnsbl's fail with the zone; a
// clean client's a pass, a skipped one's a skip.
func TestResults(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	f := files(iniFor(zone.addr))
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

	f["dnsbl.ini"] = "zones = bl.test\nresolver = " + zone.addr + "\n"
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
	ts := servertest.Start(t, files(iniFor(zone.addr, "reject = connect")))

	for i := range 2 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
		c.ExpectExact(listedConn)
		c.ExpectEOF()
		if n := zone.queries.Load(); n != 1 {
			t.Fatalf("after connection %d the zone got %d queries, want 1", i+1, n)
		}
	}
	// A clean verdict is cached too.
	for i := range 2 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
		c.ExpectExact(banner)
		c.CmdExact("QUIT", "221 2.0.0 Bye")
		if n := zone.queries.Load(); n != 2 {
			t.Fatalf("after clean connection %d the zone got %d queries, want 2", i+1, n)
		}
	}
}

func TestCacheOff(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files(iniFor(zone.addr, "reject = connect", "cache_size = 0")))
	for range 2 {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
		c.ExpectExact(listedConn)
		c.ExpectEOF()
	}
	if n := zone.queries.Load(); n != 2 {
		t.Errorf("without a cache the zone got %d queries for two connections, want 2", n)
	}
}

// TestResolverNeverAnswers: a dead resolver costs each connection one
// lookup_timeout, then the client gets 4xx or passes as on_error says.
// Failures are not cached and are logged once, not per connection.
func TestResolverNeverAnswers(t *testing.T) {
	const lookupTimeout = 300 * time.Millisecond
	// bound is "well under" anything that would mean a hang: the chain's
	// own timeout is 30s.
	const bound = 10 * time.Second
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
			silent := startSilent(t)
			ts := servertest.Start(t, files(iniFor(silent.addr,
				"lookup_timeout = "+lookupTimeout.String(), "reject = "+tc.reject, "on_error = "+tc.onError)))
			for i := range 2 {
				start := time.Now()
				tc.run(dialer.DialFrom(t, ts.Addr, "127.0.0.1"))
				took := time.Since(start)
				if took < lookupTimeout || took > bound {
					t.Errorf("connection %d: the session took %v, want one lookup_timeout (%v) and well under %v", i+1, took, lookupTimeout, bound)
				}
				if n := silent.reads.Load(); n < int64(i+1) {
					t.Errorf("after connection %d the resolver saw %d queries; a failed lookup must not be cached", i+1, n)
				}
			}
			if n := strings.Count(ts.Log.String(), "DNSBL lookup failed"); n != 1 {
				t.Errorf("the log has %d lines about the failed lookups, want 1:\n%s", n, ts.Log)
			}
		})
	}
}

func TestErrorCodeAnswerIsAFailure(t *testing.T) {
	// Spamhaus answers 127.255.255.254 to queries through public
	// resolvers: that is no listing, and no clean bill either.
	zone := startZone(t, map[string]string{listedName: "127.255.255.254"})
	ts := servertest.Start(t, files(iniFor(zone.addr, "on_error = tempfail")))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), failedRcpt)
}

func TestAnswerOutside127IsNoListing(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "192.0.2.1"})
	ts := servertest.Start(t, files(iniFor(zone.addr, "on_error = tempfail")))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), rcptOK)
}

func TestSkipPrivateByDefault(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ts := servertest.Start(t, files("zones = bl.test\nresolver = "+zone.addr+"\n"))
	toRcpt(dialer.DialFrom(t, ts.Addr, "127.0.0.1"), rcptOK)
	if n := zone.queries.Load(); n != 0 {
		t.Errorf("a loopback client was looked up (%d queries)", n)
	}
}

// TestHooksInlineOrPool checks what the event loop does with each hook:
// the connect hook (DNS) goes to the workpool, the RCPT hook (a note)
// runs inline.
func TestHooksInlineOrPool(t *testing.T) {
	zone := startZone(t, map[string]string{listedName: "127.0.0.2"})
	ch, err := servertest.Build(t, files(iniFor(zone.addr)))
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
		{"zones = bl.test\nresolver = 127.0.0.1\n", []string{"config: dnsbl.ini: [main] resolver:", `"127.0.0.1"`}},
		{"zones = bl.test\nreject = later\n", []string{`config: dnsbl.ini: [main] reject: "later" is not one of connect, rcpt`}},
		{"zones = bl.test\non_error = ignore\n", []string{`config: dnsbl.ini: [main] on_error: "ignore" is not one of pass, tempfail`}},
		{"zones = bl.test\nlookup_timeout = 30s\n", []string{"config: dnsbl.ini: [main] lookup_timeout:", `"30s"`, "less than timeout"}},
		{"zones = bl.test\nlookup_timeout = 5s\ntimeout = 3s\n", []string{"config: dnsbl.ini: [main] lookup_timeout:", `"5s"`, "less than timeout (3s)"}},
		{"zones = bl.test\nlookup_timeout = soon\n", []string{"dnsbl.ini", "lookup_timeout", `"soon"`}},
		{"zones = bl.test\ncache_size = -1\n", []string{"config: dnsbl.ini: [main] cache_size:", `"-1"`}},
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
	if _, err := servertest.Build(t, files("zones = zen.spamhaus.org., bl.example.net\n")); err != nil {
		t.Errorf("a good dnsbl.ini: %v", err)
	}
}
