// Package dnsx is the DNS layer every loopmx plugin shares: one resolver
// configuration per process (dns.ini, defaulting to /etc/resolv.conf),
// one cache that honours each answer's TTL between a floor and a ceiling
// and keeps negative answers too (RFC 2308), one query in flight per
// question however many lookups want it, and a budget per lookup given by
// the caller's context.
//
// A plugin's hook asks on the workpool; before that, on the event loop,
// its ConnBlocker may run the same check on CacheOnly(), which never
// touches the network and answers ErrNotCached on a miss, so that a check
// whose answers are all cached costs no workpool round trip.
//
// dnsx is a library for plugins, not a plugin: it registers nothing and
// is never named in the plugins file.
package dnsx

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/breaker"
)

// Stats counts what the DNS layer did. Every field only grows; the
// metrics read them.
type Stats struct {
	// Lookups counts questions asked by plugins, cached or not;
	// CacheHits those the cache answered; Joined those that waited for
	// the same question already in flight; Abandoned those whose budget
	// ran out before the answer came (the query goes on and its answer
	// is cached).
	Lookups, CacheHits, Joined, Abandoned atomic.Uint64
	// Queries counts questions sent to the servers (each with its
	// retries); the others count how they ended: records (OK), no such
	// name, no records of the type, SERVFAIL, refused or another error
	// code, and no answer at all.
	Queries, OK, NXDomain, NoData, ServFail, Refused, Timeout atomic.Uint64
	// BreakerOpen counts lookups answered at once because the servers
	// were taken to be down.
	BreakerOpen atomic.Uint64
}

// Counters are the process's counts, over every Resolver.
var Counters Stats

// count adds one query outcome to Counters.
func count(k Kind) {
	switch k {
	case 0:
		Counters.OK.Add(1)
	case NXDomain:
		Counters.NXDomain.Add(1)
	case NoData:
		Counters.NoData.Add(1)
	case ServFail:
		Counters.ServFail.Add(1)
	case Refused:
		Counters.Refused.Add(1)
	case Timeout:
		Counters.Timeout.Add(1)
	}
}

// Resolver asks the servers of its Settings and caches their answers. It
// is safe for concurrent use. The view returned by CacheOnly shares its
// cache.
type Resolver struct {
	*core
	cacheOnly bool
}

// core is what a Resolver and its cache-only view share.
type core struct {
	s     Settings
	cache *cache
	udp   dns.Client
	tcp   dns.Client
	only  *Resolver // the cache-only view

	mu      sync.Mutex
	flights map[key]*flight

	breaker *breaker.Breaker // opens when the servers stop answering
}

// flight is one question on its way to the servers; every lookup that
// wants it waits for done, then reads a.
type flight struct {
	done chan struct{}
	a    answer
}

// New returns a Resolver for s with a cache of its own. Plugins use Open,
// which shares one per process.
func New(s Settings) *Resolver {
	c := &core{
		s:       s,
		cache:   newCache(s.CacheSize),
		udp:     dns.Client{Net: "udp", Timeout: s.Timeout},
		tcp:     dns.Client{Net: "tcp", Timeout: s.Timeout},
		flights: map[key]*flight{},
		breaker: breaker.New("dns "+strings.Join(s.Servers, ","), breaker.Options{
			Failures:   s.BreakerFailures,
			Backoff:    s.BreakerBackoff,
			MaxBackoff: s.BreakerBackoffMax,
		}),
	}
	c.only = &Resolver{core: c, cacheOnly: true}
	return &Resolver{core: c}
}

// CacheOnly returns a view of r that answers from the cache alone: a
// lookup that would need the network returns ErrNotCached at once. It
// is what a plugin's BlocksConn uses on the event loop.
func (r *Resolver) CacheOnly() *Resolver { return r.only }

// shared is one process-wide resolver and the number of plugins using it.
type shared struct {
	r    *Resolver
	refs int
}

var (
	mu        sync.Mutex
	resolvers = map[string]*shared{}
)

// Open returns the process's Resolver for the config directory of cfg and
// its dns.ini, creating it on first use. Every plugin hands it back with
// Release when it closes.
func Open(cfg *config.Config) (*Resolver, error) {
	s, err := Load(cfg)
	if err != nil {
		return nil, err
	}
	return Shared(cfg.Dir, s), nil
}

// Shared returns the process's Resolver for the config directory dir and
// the settings s (dns.ini's, perhaps with a plugin's own servers),
// creating it on first use: plugins with the same settings share one
// cache, and so do the old and the new chain across a reload. Hand it
// back with Release.
func Shared(dir string, s Settings) *Resolver {
	k := dir + "\x00" + fmt.Sprintf("%+v", s)
	mu.Lock()
	defer mu.Unlock()
	sh := resolvers[k]
	if sh == nil {
		sh = &shared{r: New(s)}
		resolvers[k] = sh
	}
	sh.refs++
	return sh.r
}

// Release hands back a Resolver obtained from Open or Shared; the last
// Release drops it and its cache. A Resolver dnsx did not share, or
// one already dropped, is ignored.
func Release(r *Resolver) {
	if r == nil {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	for k, sh := range resolvers {
		if sh.r.core == r.core {
			if sh.refs--; sh.refs == 0 {
				delete(resolvers, k)
			}
			return
		}
	}
}

// Exchange asks for the records of type qtype at name and returns those
// of that type, after the CNAME chain the server gave. The records are
// shared with the cache: do not modify them. An empty answer is an
// *Error (NXDomain, NoData, ...); ctx bounds the wait.
func (r *Resolver) Exchange(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	Counters.Lookups.Add(1)
	fqdn := strings.ToLower(dns.Fqdn(name))
	k := key{fqdn, qtype}
	if _, ok := dns.IsDomainName(fqdn); !ok || fqdn == "." || strings.Contains(fqdn, "..") {
		return nil, &Error{Name: fqdn, Type: qtype, Kind: BadName}
	}
	if a, ok := r.cache.get(k, time.Now()); ok {
		Counters.CacheHits.Add(1)
		return a.result(k)
	}
	if r.cacheOnly {
		if !r.breaker.Ready() {
			// The servers are down: the lookup would fail at once, so
			// it fails here, without a trip to the workpool.
			Counters.BreakerOpen.Add(1)
			return nil, &Error{Name: fqdn, Type: qtype, Kind: Timeout}
		}
		return nil, ErrNotCached
	}
	f, a, cached := r.join(k)
	if cached {
		Counters.CacheHits.Add(1)
		return a.result(k)
	}
	select {
	case <-f.done:
		return f.a.result(k)
	case <-ctx.Done():
		Counters.Abandoned.Add(1)
		return nil, &Error{Name: fqdn, Type: qtype, Kind: Timeout}
	}
}

// result is the answer as Exchange returns it.
func (a answer) result(k key) ([]dns.RR, error) {
	if a.kind != 0 {
		return nil, &Error{Name: k.name, Type: k.qtype, Kind: a.kind}
	}
	return a.rrs, nil
}

// join returns the flight for k, starting one when none is on its way,
// or the cached answer: a flight that ended since the caller looked at
// the cache has left its answer there, and a second flight would ask the
// same question again.
func (r *Resolver) join(k key) (*flight, answer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.flights[k]; ok {
		Counters.Joined.Add(1)
		return f, answer{}, false
	}
	if a, ok := r.cache.get(k, time.Now()); ok {
		return nil, a, true
	}
	f := &flight{done: make(chan struct{})}
	r.flights[k] = f
	go r.fly(k, f)
	return f, answer{}, false
}

// fly asks the servers for k, caches the answer, then hands it to the
// lookups waiting for it. The flight is bounded by the settings (attempts
// rounds of one timeout per server), not by any lookup's budget: a
// lookup that gives up leaves the answer to the cache for the next one.
func (r *Resolver) fly(k key, f *flight) {
	var a answer
	var ttl time.Duration
	if call, err := r.breaker.Begin(); err != nil {
		// The servers are taken to be down: fail at once, as a
		// timeout would after the whole wait.
		a = answer{kind: Timeout}
		Counters.BreakerOpen.Add(1)
	} else {
		a, ttl = r.ask(k)
		// Only silence counts against the servers (a plain error, so
		// that it takes BreakerFailures in a row): SERVFAIL and REFUSED
		// are answers.
		var fail error
		if a.kind == Timeout {
			fail = errNoServerAnswered
		}
		call.Done(fail)
	}
	if a.kind != ServFail && a.kind != Refused && a.kind != Timeout {
		r.cache.put(k, a, ttl, time.Now())
	}
	// Cached before the flight ends, so that no lookup in between starts
	// a second one.
	r.mu.Lock()
	delete(r.flights, k)
	r.mu.Unlock()
	count(a.kind) // once the flight is over: a lookup that sees the count starts a new one
	f.a = a
	close(f.done)
}

// errNoServerAnswered is a query that no server answered, for the
// breaker.
var errNoServerAnswered = errors.New("no DNS server answered")

// SetLogger sets where the resolver's circuit breaker logs its changes
// of state (the first logger set wins).
func (r *Resolver) SetLogger(l *zerolog.Logger) { r.breaker.SetLogger(l) }

// ednsSize is the UDP payload size announced (EDNS0, RFC 6891): large
// enough for most TXT answers, small enough not to fragment.
const ednsSize = 1232

// ask sends the question k to the servers: each round asks every server
// in turn, up to Attempts rounds, until one answers with records, NOERROR
// or NXDOMAIN. It returns the answer and how long to cache it.
func (r *Resolver) ask(k key) (answer, time.Duration) {
	Counters.Queries.Add(1)
	failed := Timeout
	for range r.s.Attempts {
		answered := 0
		for _, srv := range r.s.Servers {
			m := new(dns.Msg)
			m.SetQuestion(k.name, k.qtype)
			m.SetEdns0(ednsSize, false)
			resp := r.try(m, srv)
			if resp == nil {
				continue
			}
			answered++
			switch resp.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return r.interpret(k, resp)
			case dns.RcodeServerFailure:
				failed = ServFail
			default:
				if failed != ServFail {
					failed = Refused
				}
			}
		}
		if answered == len(r.s.Servers) {
			break // every server gave its answer: another round would repeat it
		}
	}
	return answer{kind: failed}, 0
}

// try sends m to one server over UDP, and again over TCP when the answer
// was truncated. It returns nil when the server did not answer in time,
// could not be reached, or answered another question.
func (r *Resolver) try(m *dns.Msg, srv string) *dns.Msg {
	resp, _, err := r.udp.Exchange(m, srv)
	if err == nil && resp.Truncated {
		resp, _, err = r.tcp.Exchange(m, srv)
	}
	if err != nil || len(resp.Question) != 1 {
		return nil
	}
	q := resp.Question[0]
	if q.Qtype != m.Question[0].Qtype || !strings.EqualFold(q.Name, m.Question[0].Name) {
		return nil
	}
	return resp
}

// maxChain is how many CNAMEs interpret follows.
const maxChain = 8

// interpret reads an answer with RCODE NOERROR or NXDOMAIN: the records
// of the type asked at the name or at the end of its CNAME chain, cached
// for the least TTL along the way; or no records, cached for the
// negative TTL (RFC 2308 5).
func (r *Resolver) interpret(k key, resp *dns.Msg) (answer, time.Duration) {
	if resp.Rcode == dns.RcodeNameError {
		return answer{kind: NXDomain}, r.negativeTTL(resp)
	}
	target := k.name
	var rrs []dns.RR
	ttl := uint32(1<<32 - 1)
	for range maxChain {
		var next string
		for _, rr := range resp.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, target) {
				continue
			}
			switch {
			case h.Rrtype == k.qtype:
				rrs = append(rrs, rr)
				ttl = min(ttl, h.Ttl)
			case h.Rrtype == dns.TypeCNAME && next == "":
				next = rr.(*dns.CNAME).Target
				ttl = min(ttl, h.Ttl)
			}
		}
		if len(rrs) > 0 || next == "" {
			break
		}
		target = next
	}
	if len(rrs) == 0 {
		return answer{kind: NoData}, r.negativeTTL(resp)
	}
	return answer{rrs: rrs}, r.clamp(time.Duration(ttl) * time.Second)
}

// negativeTTL is how long a negative answer is cached: the SOA's TTL or
// its MINIMUM field, whichever is less (RFC 2308 5); MinTTL when the
// answer carries no SOA.
func (r *Resolver) negativeTTL(resp *dns.Msg) time.Duration {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return r.clamp(time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second)
		}
	}
	return r.s.MinTTL
}

// clamp bounds a TTL by MinTTL and MaxTTL.
func (r *Resolver) clamp(ttl time.Duration) time.Duration {
	return max(r.s.MinTTL, min(r.s.MaxTTL, ttl))
}

// LookupIP returns the addresses of name: its A records for network
// "ip4", its AAAA records for "ip6", both for "ip". For "ip", addresses
// of one family are returned without error even when the other lookup
// failed; with none, a temporary failure of either is returned before a
// "not found".
func (r *Resolver) LookupIP(ctx context.Context, network, name string) ([]netip.Addr, error) {
	switch network {
	case "ip4":
		return r.addrs(ctx, name, dns.TypeA)
	case "ip6":
		return r.addrs(ctx, name, dns.TypeAAAA)
	case "ip":
	default:
		return nil, fmt.Errorf("dns: LookupIP: unknown network %q", network)
	}
	// Both questions at once; from the cache (or on the cache-only view)
	// one after the other, which costs no goroutine.
	var v6 []netip.Addr
	var err6 error
	done := make(chan struct{})
	if r.cacheOnly {
		v6, err6 = r.addrs(ctx, name, dns.TypeAAAA)
		close(done)
	} else {
		go func() {
			defer close(done)
			v6, err6 = r.addrs(ctx, name, dns.TypeAAAA)
		}()
	}
	v4, err4 := r.addrs(ctx, name, dns.TypeA)
	<-done
	switch {
	case err4 == ErrNotCached || err6 == ErrNotCached:
		// Half an answer from the cache is not the answer.
		return nil, ErrNotCached
	case len(v4)+len(v6) > 0:
		return append(v4, v6...), nil
	case IsTemporary(err6) && !IsTemporary(err4):
		return nil, err6
	}
	return nil, err4
}

// addrs returns the A or AAAA records of name as addresses.
func (r *Resolver) addrs(ctx context.Context, name string, qtype uint16) ([]netip.Addr, error) {
	rrs, err := r.Exchange(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(rrs))
	for _, rr := range rrs {
		var ip []byte
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A.To4()
		case *dns.AAAA:
			ip = rr.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// LookupAddr returns the names of ip from its PTR records (RFC 1035
// 3.5, RFC 3596 2.5), in lower case, without the trailing dot.
func (r *Resolver) LookupAddr(ctx context.Context, ip netip.Addr) ([]string, error) {
	if !ip.IsValid() {
		return nil, &Error{Name: ".", Type: dns.TypePTR, Kind: BadName}
	}
	suffix := ".ip6.arpa."
	if ip = ip.Unmap(); ip.Is4() {
		suffix = ".in-addr.arpa."
	}
	rrs, err := r.Exchange(ctx, Reverse(ip)+suffix, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if ptr, ok := rr.(*dns.PTR); ok {
			names = append(names, hostName(ptr.Ptr))
		}
	}
	return names, nil
}

// MX is one mail exchanger of a domain.
type MX struct {
	// Host is the exchange in lower case, without the trailing dot; ""
	// for the root, which a null MX names (RFC 7505).
	Host string
	Pref uint16
}

// LookupMX returns the MX records of name, most preferred first.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]MX, error) {
	rrs, err := r.Exchange(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mxs := make([]MX, 0, len(rrs))
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, MX{Host: hostName(mx.Mx), Pref: mx.Preference})
		}
	}
	slices.SortStableFunc(mxs, func(a, b MX) int { return int(a.Pref) - int(b.Pref) })
	return mxs, nil
}

// LookupTXT returns the TXT records of name, each record's strings joined
// into one (RFC 7208 3.3).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.Exchange(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	txts := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if txt, ok := rr.(*dns.TXT); ok {
			txts = append(txts, strings.Join(txt.Txt, ""))
		}
	}
	return txts, nil
}

// hostName is a name from the DNS as loopmx shows it: lower case, no
// trailing dot.
func hostName(fqdn string) string {
	return strings.TrimSuffix(strings.ToLower(fqdn), ".")
}

const hexDigits = "0123456789abcdef"

// Reverse returns the labels under which the DNS lists ip, before the
// zone: the four octets in reverse order for IPv4 (in-addr.arpa, DNSBLs:
// RFC 5782 2.1), the 32 nibbles in reverse order for IPv6 (ip6.arpa, RFC
// 5782 2.4). An IPv4-mapped IPv6 address is the IPv4 address.
func Reverse(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is4() {
		b := ip.As4()
		out := make([]byte, 0, 15)
		for i := 3; i >= 0; i-- {
			out = strconv.AppendUint(out, uint64(b[i]), 10)
			if i > 0 {
				out = append(out, '.')
			}
		}
		return string(out)
	}
	b := ip.As16()
	out := make([]byte, 0, 63)
	for i := len(b) - 1; i >= 0; i-- {
		if len(out) > 0 {
			out = append(out, '.')
		}
		out = append(out, hexDigits[b[i]&0x0f], '.', hexDigits[b[i]>>4])
	}
	return string(out)
}
