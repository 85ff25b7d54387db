package dnsx_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"loopmx/internal/dnsx"
	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/servertest"
)

// settings asks addr only, once, waiting timeout; answers are cached for
// their own TTL (no floor) up to an hour.
func settings(addr string, timeout time.Duration) dnsx.Settings {
	return dnsx.Settings{Servers: []string{addr}, Timeout: timeout, Attempts: 1, MaxTTL: time.Hour, CacheSize: 1000}
}

func budget(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestLookups(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t,
		"example.org. 300 IN MX 20 mx2.example.org.",
		"example.org. 300 IN MX 10 MX1.Example.ORG.",
		"example.org. 300 IN TXT \"v=spf1 \" \"ip4:192.0.2.0/24 -all\"",
		"mx1.example.org. 300 IN A 192.0.2.25",
		"mx1.example.org. 300 IN AAAA 2001:db8::25",
		"www.example.org. 300 IN CNAME mx1.example.org.",
		"25.2.0.192.in-addr.arpa. 300 IN PTR mx1.example.org.",
		"5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR mx1.example.org.",
		"null.example. 300 IN MX 0 .",
	)
	r := dnsx.New(settings(srv.Addr, time.Second))
	ctx := budget(t, 5*time.Second)

	mxs, err := r.LookupMX(ctx, "Example.org")
	if err != nil || !slices.Equal(mxs, []dnsx.MX{{"mx1.example.org", 10}, {"mx2.example.org", 20}}) {
		t.Errorf("LookupMX = %v, %v; want mx1 (10) then mx2 (20), lower case, no dot", mxs, err)
	}
	if mxs, err := r.LookupMX(ctx, "null.example"); err != nil || !slices.Equal(mxs, []dnsx.MX{{"", 0}}) {
		t.Errorf("a null MX reads %v, %v; want one MX with host \"\"", mxs, err)
	}
	if txts, err := r.LookupTXT(ctx, "example.org."); err != nil || !slices.Equal(txts, []string{"v=spf1 ip4:192.0.2.0/24 -all"}) {
		t.Errorf("LookupTXT = %q, %v; want the strings of the record joined", txts, err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.25"), netip.MustParseAddr("2001:db8::25")}
	for _, tc := range []struct {
		network, name string
		want          []netip.Addr
	}{
		{"ip", "mx1.example.org", want},
		{"ip4", "mx1.example.org", want[:1]},
		{"ip6", "mx1.example.org", want[1:]},
		{"ip", "www.example.org", want}, // through the CNAME
	} {
		got, err := r.LookupIP(ctx, tc.network, tc.name)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("LookupIP(%s, %s) = %v, %v; want %v", tc.network, tc.name, got, err, tc.want)
		}
	}
	for _, ip := range []string{"192.0.2.25", "::ffff:192.0.2.25", "2001:db8::25"} {
		names, err := r.LookupAddr(ctx, netip.MustParseAddr(ip))
		if err != nil || !slices.Equal(names, []string{"mx1.example.org"}) {
			t.Errorf("LookupAddr(%s) = %v, %v; want mx1.example.org", ip, names, err)
		}
	}
}

func TestNotFoundAndTemporary(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "host.example. 300 IN A 192.0.2.1")
	srv.Fail("broken.example", dns.RcodeServerFailure)
	srv.Fail("closed.example", dns.RcodeRefused)
	r := dnsx.New(settings(srv.Addr, time.Second))
	ctx := budget(t, 5*time.Second)
	for _, tc := range []struct {
		name  string
		qtype uint16
		kind  dnsx.Kind
	}{
		{"nowhere.example", dns.TypeA, dnsx.NXDomain},
		{"host.example", dns.TypeMX, dnsx.NoData},
		{"broken.example", dns.TypeA, dnsx.ServFail},
		{"closed.example", dns.TypeA, dnsx.Refused},
		{"a..b.example", dns.TypeA, dnsx.BadName},
		{strings.Repeat("x", 64) + ".example", dns.TypeA, dnsx.BadName},
	} {
		_, err := r.Exchange(ctx, tc.name, tc.qtype)
		var e *dnsx.Error
		if !errors.As(err, &e) || e.Kind != tc.kind {
			t.Errorf("%s %s: error %v, want kind %s", tc.name, dns.TypeToString[tc.qtype], err, tc.kind)
			continue
		}
		temporary := tc.kind == dnsx.ServFail || tc.kind == dnsx.Refused
		if dnsx.IsTemporary(err) != temporary || dnsx.IsNotFound(err) == temporary {
			t.Errorf("%s: IsTemporary %v, IsNotFound %v; want temporary %v", err, dnsx.IsTemporary(err), dnsx.IsNotFound(err), temporary)
		}
	}
	if n := srv.Count("a..b.example", dns.TypeA); n != 0 {
		t.Errorf("a bad name was asked %d times", n)
	}
}

// TestCacheHonoursTTL: an answer is reused while its TTL lasts, and not
// when its TTL is 0 (no floor); so are negative answers, for the SOA's
// TTL or MINIMUM, whichever is less (RFC 2308 5); a SERVFAIL is never
// reused.
func TestCacheHonoursTTL(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t,
		"long.example. 300 IN A 192.0.2.1",
		"zero.example. 0 IN A 192.0.2.2",
	)
	srv.Fail("broken.example", dns.RcodeServerFailure)
	r := dnsx.New(settings(srv.Addr, time.Second))
	ctx := budget(t, 5*time.Second)
	twice := func(name string, qtype uint16) int {
		for range 2 {
			r.Exchange(ctx, name, qtype)
		}
		return srv.Count(name, qtype)
	}
	for _, tc := range []struct {
		name    string
		qtype   uint16
		queries int
	}{
		{"long.example", dns.TypeA, 1},
		{"zero.example", dns.TypeA, 2},
		{"nowhere.example", dns.TypeA, 2}, // NXDOMAIN without SOA: MinTTL, 0 here
		{"long.example", dns.TypeMX, 2},   // NODATA without SOA
		{"broken.example", dns.TypeA, 2},
	} {
		if n := twice(tc.name, tc.qtype); n != tc.queries {
			t.Errorf("two lookups of %s %s made %d queries, want %d", tc.name, dns.TypeToString[tc.qtype], n, tc.queries)
		}
	}

	srv.SetSOA(t, "example. 3600 IN SOA ns.example. host.example. 1 3600 600 86400 60")
	for _, tc := range []struct{ name string }{{"gone.example"}, {"nodata.example"}} {
		qtype := dns.TypeA
		if tc.name == "nodata.example" {
			srv.Add(t, "nodata.example. 300 IN TXT \"x\"")
		}
		if n := twice(tc.name, qtype); n != 1 {
			t.Errorf("a negative answer with an SOA (%s) was asked for %d times, want 1", tc.name, n)
		}
	}
	srv.SetSOA(t, "example. 3600 IN SOA ns.example. host.example. 1 3600 600 86400 0")
	if n := twice("gone2.example", dns.TypeA); n != 2 {
		t.Errorf("an NXDOMAIN whose SOA MINIMUM is 0 was cached (%d queries for two lookups)", n)
	}
}

// TestFloor: with min_ttl, an answer whose TTL is 0 is reused.
func TestFloor(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "zero.example. 0 IN A 192.0.2.2")
	s := settings(srv.Addr, time.Second)
	s.MinTTL = time.Minute
	r := dnsx.New(s)
	for range 3 {
		r.LookupIP(budget(t, 5*time.Second), "ip4", "zero.example")
		r.Exchange(budget(t, 5*time.Second), "nowhere.example", dns.TypeA)
	}
	if a, nx := srv.Count("zero.example", dns.TypeA), srv.Count("nowhere.example", dns.TypeA); a != 1 || nx != 1 {
		t.Errorf("with min_ttl = 1m, three lookups made %d queries for a TTL 0 answer and %d for an NXDOMAIN, want 1 and 1", a, nx)
	}
}

// TestCacheSizeZero: cache_size = 0 turns the cache off.
func TestCacheSizeZero(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "long.example. 300 IN A 192.0.2.1")
	s := settings(srv.Addr, time.Second)
	s.CacheSize = 0
	r := dnsx.New(s)
	for range 2 {
		r.LookupIP(budget(t, 5*time.Second), "ip4", "long.example")
	}
	if n := srv.Count("long.example", dns.TypeA); n != 2 {
		t.Errorf("without a cache two lookups made %d queries, want 2", n)
	}
}

// TestCacheOnly: the cache-only view never asks; it answers what the
// cache holds, and ErrNotCached for the rest, also when only half of an
// "ip" lookup is cached.
func TestCacheOnly(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "host.example. 300 IN A 192.0.2.1", "host.example. 300 IN AAAA 2001:db8::1")
	r := dnsx.New(settings(srv.Addr, time.Second))
	ctx := budget(t, 5*time.Second)
	c := r.CacheOnly()
	if _, err := c.LookupIP(ctx, "ip4", "host.example"); err != dnsx.ErrNotCached {
		t.Fatalf("cache-only lookup before any query: %v, want ErrNotCached", err)
	}
	if srv.Total() != 0 {
		t.Fatalf("the cache-only view asked the server (%s)", srv.Counts())
	}
	r.LookupIP(ctx, "ip4", "host.example")
	if got, err := c.LookupIP(ctx, "ip4", "host.example"); err != nil || len(got) != 1 {
		t.Errorf("cache-only lookup after a query: %v, %v", got, err)
	}
	if _, err := c.LookupIP(ctx, "ip", "host.example"); err != dnsx.ErrNotCached {
		t.Errorf("an ip lookup with only A cached: %v, want ErrNotCached", err)
	}
	r.Exchange(ctx, "nowhere.example", dns.TypeA) // not cached: no SOA, no floor
	if _, err := c.Exchange(ctx, "nowhere.example", dns.TypeA); err != dnsx.ErrNotCached {
		t.Errorf("cache-only: %v, want ErrNotCached", err)
	}
	if dnsx.IsTemporary(dnsx.ErrNotCached) || dnsx.IsNotFound(dnsx.ErrNotCached) {
		t.Error("ErrNotCached reads as a DNS answer")
	}
}

// TestSingleFlight: lookups of one question while it is in flight wait
// for that one query; later ones take the cached answer.
func TestSingleFlight(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "1.2.0.192.in-addr.arpa. 300 IN PTR host.example.")
	release := srv.Hold("1.2.0.192.in-addr.arpa", dns.TypePTR)
	r := dnsx.New(settings(srv.Addr, 10*time.Second))
	ip := netip.MustParseAddr("192.0.2.1")
	const n = 50
	joined := dnsx.Counters.Joined.Load()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			names, err := r.LookupAddr(budget(t, 10*time.Second), ip)
			if err == nil && !slices.Equal(names, []string{"host.example"}) {
				err = errors.New("wrong names " + strings.Join(names, ","))
			}
			if err != nil {
				errs <- err
			}
		})
	}
	servertest.Eventually(t, time.Millisecond, "every lookup waiting for the one query", func() bool {
		return dnsx.Counters.Joined.Load()-joined == n-1
	})
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	r.LookupAddr(budget(t, time.Second), ip)
	if q := srv.Count("1.2.0.192.in-addr.arpa", dns.TypePTR); q != 1 {
		t.Errorf("%d concurrent lookups and one later made %d queries, want 1", n+1, q)
	}
}

// TestSilentServer: a server that never answers costs a lookup its
// budget and no more, the error is a temporary timeout, nothing is
// cached, and the query itself ends after attempts x timeout.
func TestSilentServer(t *testing.T) {
	silent := dnstest.StartSilent(t)
	s := settings(silent.Addr, 200*time.Millisecond)
	s.Attempts = 2
	r := dnsx.New(s)
	timeouts := dnsx.Counters.Timeout.Load()
	abandoned := dnsx.Counters.Abandoned.Load()

	_, err := r.LookupTXT(budget(t, 50*time.Millisecond), "example.org")
	var e *dnsx.Error
	if !errors.As(err, &e) || e.Kind != dnsx.Timeout || !dnsx.IsTemporary(err) {
		t.Fatalf("lookup on a silent server: %v, want a temporary timeout", err)
	}
	if dnsx.Counters.Abandoned.Load() != abandoned+1 {
		t.Error("the lookup that gave up was not counted as abandoned")
	}
	// The query goes on: two attempts, then it counts a timeout.
	servertest.Eventually(t, 10*time.Millisecond, "the query's timeout", func() bool {
		return dnsx.Counters.Timeout.Load() > timeouts
	})
	if n := silent.Reads(); n != 2 {
		t.Errorf("the silent server got %d queries, want 2 (attempts = 2)", n)
	}
	// Nothing cached: the next lookup asks again.
	r.LookupTXT(budget(t, 50*time.Millisecond), "example.org")
	servertest.Eventually(t, 10*time.Millisecond, "a new query", func() bool { return silent.Reads() > 2 })
}

// TestNextServer: a server that does not answer, or answers SERVFAIL,
// is followed by the next one.
func TestNextServer(t *testing.T) {
	silent := dnstest.StartSilent(t)
	broken := dnstest.Start(t)
	broken.Fail("host.example", dns.RcodeServerFailure)
	good := dnstest.Start(t)
	good.Add(t, "host.example. 300 IN A 192.0.2.1")
	s := settings(silent.Addr, 100*time.Millisecond)
	s.Servers = []string{silent.Addr, broken.Addr, good.Addr}
	got, err := dnsx.New(s).LookupIP(budget(t, 5*time.Second), "ip4", "host.example")
	if err != nil || len(got) != 1 {
		t.Errorf("LookupIP with a silent and a broken server first: %v, %v", got, err)
	}
	if silent.Reads() != 1 || broken.Count("host.example", dns.TypeA) != 1 {
		t.Errorf("the silent server got %d queries and the broken one %d, want 1 each", silent.Reads(), broken.Count("host.example", dns.TypeA))
	}
}

// TestTruncatedAnswerOverTCP: an answer too large for UDP comes again
// over TCP.
func TestTruncatedAnswerOverTCP(t *testing.T) {
	srv := dnstest.Start(t)
	var records []string
	for i := range 30 {
		records = append(records, "big.example. 300 IN TXT \""+strings.Repeat(string(rune('a'+i%26)), 200)+"\"")
	}
	srv.Add(t, records...)
	txts, err := dnsx.New(settings(srv.Addr, time.Second)).LookupTXT(budget(t, 5*time.Second), "big.example")
	if err != nil || len(txts) != 30 {
		t.Errorf("LookupTXT of a 6 KB answer: %d records, %v; want 30", len(txts), err)
	}
}

// TestIPTemporaryBeforeNotFound: an "ip" lookup without addresses reports
// the temporary failure of either family before a "not found".
func TestIPTemporaryBeforeNotFound(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "v4.example. 300 IN A 192.0.2.1", "mixed.example. 300 IN TXT \"x\"")
	r := dnsx.New(settings(srv.Addr, time.Second))
	ctx := budget(t, 5*time.Second)
	if got, err := r.LookupIP(ctx, "ip", "v4.example"); err != nil || len(got) != 1 {
		t.Errorf("ip lookup of an IPv4-only name: %v, %v", got, err)
	}
	if _, err := r.LookupIP(ctx, "ip", "mixed.example"); !dnsx.IsNotFound(err) {
		t.Errorf("ip lookup of a name without addresses: %v, want not found", err)
	}
	srv.Fail("half.example", dns.RcodeServerFailure)
	if _, err := r.LookupIP(ctx, "ip", "half.example"); !dnsx.IsTemporary(err) {
		t.Errorf("ip lookup with SERVFAIL: %v, want temporary", err)
	}
	if _, err := r.LookupIP(ctx, "tcp", "v4.example"); err == nil {
		t.Error("LookupIP accepted network tcp")
	}
}

func TestNetError(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Fail("broken.example", dns.RcodeServerFailure)
	r := dnsx.New(settings(srv.Addr, time.Second))
	ctx := budget(t, 5*time.Second)
	_, nx := r.LookupTXT(ctx, "nowhere.example")
	_, sf := r.LookupTXT(ctx, "broken.example")
	for _, tc := range []struct {
		err                 error
		notFound, temporary bool
	}{{nx, true, false}, {sf, false, true}} {
		ne, ok := dnsx.NetError(tc.err).(interface {
			Temporary() bool
			Timeout() bool
		})
		if !ok || ne.Temporary() != tc.temporary {
			t.Errorf("NetError(%v) = %#v", tc.err, dnsx.NetError(tc.err))
		}
	}
	if dnsx.NetError(dnsx.ErrNotCached) != dnsx.ErrNotCached {
		t.Error("NetError changed ErrNotCached")
	}
}

func TestReverse(t *testing.T) {
	cases := []struct{ ip, want string }{
		// RFC 5782 2.1 and 2.4 give these two.
		{"192.0.2.99", "99.2.0.192"},
		{"2001:db8:1:2:3:4:567:89ab", "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"},
		{"127.0.0.1", "1.0.0.127"},
		{"::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"},
		{"2001:DB8::FFFF", "f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"},
		{"::ffff:198.51.100.7", "7.100.51.198"},
	}
	for _, tc := range cases {
		if got := dnsx.Reverse(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Reverse(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
}

// TestBreakerWhenServersAreSilent: once queries in a row went
// unanswered, lookups fail at once, as a temporary error, without asking
// the dead servers again, and the cache-only view says so too, so that a
// hook decides on the event loop instead of going to the workpool.
func TestBreakerWhenServersAreSilent(t *testing.T) {
	silent := dnstest.StartSilent(t)
	s := settings(silent.Addr, 100*time.Millisecond)
	s.BreakerFailures, s.BreakerBackoff, s.BreakerBackoffMax = 2, time.Hour, time.Hour
	r := dnsx.New(s)
	for _, name := range []string{"a.example", "b.example"} {
		if _, err := r.LookupTXT(budget(t, 5*time.Second), name); !dnsx.IsTemporary(err) {
			t.Fatalf("%s on a silent server: %v", name, err)
		}
	}
	asked := silent.Reads()
	open := dnsx.Counters.BreakerOpen.Load()
	_, err := r.LookupTXT(budget(t, 5*time.Second), "c.example")
	var e *dnsx.Error
	if !errors.As(err, &e) || e.Kind != dnsx.Timeout {
		t.Errorf("a lookup with the breaker open: %v, want a timeout", err)
	}
	if _, err := r.CacheOnly().LookupTXT(budget(t, time.Second), "d.example"); !errors.As(err, &e) || e.Kind != dnsx.Timeout {
		t.Errorf("the cache-only view with the breaker open: %v, want a timeout, not ErrNotCached", err)
	}
	if n := silent.Reads(); n != asked {
		t.Errorf("the dead server was asked %d more times with the breaker open", n-asked)
	}
	if dnsx.Counters.BreakerOpen.Load() < open+2 {
		t.Error("the lookups refused by the breaker were not counted")
	}
}
