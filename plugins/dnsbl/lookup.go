package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// lookup asks every zone about ip at once and waits at most
// lookupTimeout in all. The first zone to answer with a listing decides;
// otherwise a failed query makes the whole lookup fail.
func (p *DNSBL) lookup(ip netip.Addr) (verdict, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.lookupTimeout)
	defer cancel()
	name := reverse(ip)
	type answer struct {
		zone   string
		listed bool
		err    error
	}
	answers := make(chan answer, len(p.zones)) // buffered: nobody waits for a late one
	for _, z := range p.zones {
		go func() {
			listed, err := p.query(ctx, name+"."+z+".")
			answers <- answer{z, listed, err}
		}()
	}
	var failure error
	for range p.zones {
		a := <-answers
		switch {
		case a.listed:
			return verdict{zone: a.zone}, nil
		case a.err != nil && failure == nil:
			failure = fmt.Errorf("%s: %w", a.zone, a.err)
		}
	}
	return verdict{}, failure
}

// query looks up the A records of the absolute name q. RFC 5782 2.1: an
// A record in 127.0.0.0/8 means listed, no record (NXDOMAIN or no data)
// means not listed. Answers in 127.255.255.0/24 are error codes that
// some lists (Spamhaus) return instead of an answer, for example to
// queries through a public resolver; they count as a failed lookup.
// Other addresses are no listing (a resolver that makes up answers).
func (p *DNSBL) query(ctx context.Context, q string) (bool, error) {
	addrs, err := p.resolver.LookupNetIP(ctx, "ip4", q)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return false, nil
		}
		return false, err
	}
	var refused netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() || a.As4()[0] != 127 {
			continue
		}
		if b := a.As4(); b[1] == 255 && b[2] == 255 {
			refused = a
			continue
		}
		return true, nil
	}
	if refused.IsValid() {
		return false, fmt.Errorf("the zone answered %s, an error code, not a listing", refused)
	}
	return false, nil
}

// resolverAt returns a resolver that sends every query to addr (UDP, and
// TCP when an answer is truncated) instead of the servers of
// /etc/resolv.conf.
func resolverAt(addr string) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

const hexDigits = "0123456789abcdef"

// reverse returns the name under which DNSBLs list ip, without the zone:
// the four octets in reverse order for IPv4 (RFC 5782 2.1), the 32 nibbles
// in reverse order for IPv6 (RFC 5782 2.4).
func reverse(ip netip.Addr) string {
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

// cache keeps verdicts per address for a fixed time, up to a fixed
// number of addresses, shared by every connection of the process.
type cache struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[netip.Addr]cached
}

type cached struct {
	v       verdict
	expires time.Time
}

// evictSample is how many entries a full cache looks at to choose the
// one to drop: the one that expires first among them, so that neither
// insertion nor eviction ever walks the whole map.
const evictSample = 8

func newCache(ttl time.Duration, max int) *cache {
	return &cache{ttl: ttl, max: max, m: make(map[netip.Addr]cached, min(max, 1024))}
}

// get returns the cached verdict for ip, if any is still fresh at now.
func (c *cache) get(ip netip.Addr, now time.Time) (verdict, bool) {
	if c == nil {
		return verdict{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[ip]
	if !ok {
		return verdict{}, false
	}
	if !now.Before(e.expires) {
		delete(c.m, ip)
		return verdict{}, false
	}
	return e.v, true
}

// put caches v for ip from now on, making room first when the cache is
// full.
func (c *cache) put(ip netip.Addr, v verdict, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[ip]; !ok && len(c.m) >= c.max {
		// Map iteration starts at a random place: a cheap random sample.
		var victim netip.Addr
		var soonest time.Time
		n := 0
		for k, e := range c.m {
			if n == 0 || e.expires.Before(soonest) {
				victim, soonest = k, e.expires
			}
			if n++; n == evictSample {
				break
			}
		}
		delete(c.m, victim)
	}
	c.m[ip] = cached{v: v, expires: now.Add(c.ttl)}
}
