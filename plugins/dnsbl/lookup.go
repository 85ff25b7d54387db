package dnsbl

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"

	"loopmx/internal/dnsx"
)

// answer is what one zone said about the client.
type answer struct {
	done    bool         // the zone answered (or failed) before the verdict
	listing []netip.Addr // its listing addresses: 127.0.0.0/8, error codes left out
	err     error        // the lookup failed
}

// lookup asks every zone about ip at once through r and waits at most
// lookupTimeout in all. It stops early once the answers still out can no
// longer bring the score below the threshold.
func (p *DNSBL) lookup(r *dnsx.Resolver, ip netip.Addr) verdict {
	ctx, cancel := p.Context()
	defer cancel()
	name := dnsx.Reverse(ip)
	type indexed struct {
		i int
		a answer
	}
	answers := make(chan indexed, len(p.zones)) // buffered: nobody waits for a late one
	for i, z := range p.zones {
		go func() {
			answers <- indexed{i, ask(ctx, r, name, z.name)}
		}()
	}
	got := make([]answer, len(p.zones))
	score, pendingNegative := 0, p.negative
	for range p.zones {
		a := <-answers
		got[a.i] = a.a
		z := p.zones[a.i]
		s, _, _ := z.score(a.a.listing)
		score += s
		pendingNegative -= z.negative
		if score+pendingNegative >= p.threshold {
			break
		}
	}
	return p.judge(got)
}

// cached is lookup on the cache-only resolver r, for the event loop, one
// zone after the other: dnsx.ErrNotCached when a zone's answer is not
// cached.
func (p *DNSBL) cached(r *dnsx.Resolver, ip netip.Addr) (verdict, error) {
	name := dnsx.Reverse(ip)
	got := make([]answer, len(p.zones))
	for i, z := range p.zones {
		got[i] = ask(context.Background(), r, name, z.name)
		if got[i].err == dnsx.ErrNotCached {
			return verdict{}, dnsx.ErrNotCached
		}
	}
	return p.judge(got), nil
}

// ask looks up the A records of name in zone. RFC 5782 2.1: an A record
// in 127.0.0.0/8 means listed, no record (NXDOMAIN or no data) means not
// listed. Answers in 127.255.255.0/24 are error codes that some lists
// (Spamhaus) return instead of an answer, for example to queries through
// a public resolver; alone, they make the lookup fail. Other addresses
// are no listing (a resolver that makes up answers).
func ask(ctx context.Context, r *dnsx.Resolver, name, zone string) answer {
	rrs, err := r.Exchange(ctx, name+"."+zone+".", dns.TypeA)
	if dnsx.IsNotFound(err) {
		return answer{done: true}
	}
	if err != nil {
		return answer{done: true, err: err}
	}
	a := answer{done: true}
	var refused netip.Addr
	for _, rr := range rrs {
		rec, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(rec.A.To4())
		if !ok || ip.As4()[0] != 127 {
			continue
		}
		if b := ip.As4(); b[1] == 255 && b[2] == 255 {
			refused = ip
			continue
		}
		a.listing = append(a.listing, ip)
	}
	if len(a.listing) == 0 && refused.IsValid() {
		a.err = fmt.Errorf("the zone answered %s, an error code, not a listing", refused)
	}
	return a
}

// judge adds up the answers into the verdict.
func (p *DNSBL) judge(got []answer) verdict {
	var v verdict
	for i, a := range got {
		z := p.zones[i]
		if !a.done {
			continue
		}
		if a.err != nil {
			if z.raises && v.err == nil {
				v.err = fmt.Errorf("%s: %w", z.name, a.err)
			}
			continue
		}
		s, raised, lowered := z.score(a.listing)
		v.score += s
		if raised {
			v.listedBy = append(v.listedBy, z.name)
		}
		if lowered {
			v.allowedBy = append(v.allowedBy, z.name)
		}
	}
	if p.weighted {
		v.threshold = p.threshold
	}
	v.listed = v.score >= p.threshold
	v.failed = !v.listed && v.err != nil
	return v
}
