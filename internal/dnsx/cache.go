package dnsx

import (
	"sync"
	"time"

	"github.com/miekg/dns"
)

// key is one question: a fully qualified name in lower case and a type.
type key struct {
	name  string
	qtype uint16
}

// answer is the outcome of one question: the records of the type asked
// (the CNAME chain already followed), or why there are none.
type answer struct {
	rrs  []dns.RR // shared by every reader: never modified
	kind Kind     // 0 when rrs holds the answer
}

// entry is a cached answer and when it goes stale.
type entry struct {
	a       answer
	expires time.Time
}

// evictSample is how many entries a full cache looks at to choose the
// one to drop: the one that expires first among them, so that neither
// insertion nor eviction ever walks the whole map.
const evictSample = 8

// cache holds answers until their TTL runs out, up to a fixed number of
// questions, shared by every plugin and connection of the process.
type cache struct {
	max int

	mu sync.Mutex
	m  map[key]entry
}

// newCache returns a cache of at most max questions, or nil (no cache)
// when max is 0.
func newCache(max int) *cache {
	if max == 0 {
		return nil
	}
	return &cache{max: max, m: make(map[key]entry, min(max, 1024))}
}

// get returns the answer cached for k, if it is still fresh at now.
func (c *cache) get(k key, now time.Time) (answer, bool) {
	if c == nil {
		return answer{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return answer{}, false
	}
	if !now.Before(e.expires) {
		delete(c.m, k)
		return answer{}, false
	}
	return e.a, true
}

// put caches a for k until now+ttl, making room first when the cache is
// full.
func (c *cache) put(k key, a answer, ttl time.Duration, now time.Time) {
	if c == nil || ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		// Map iteration starts at a random place: a cheap random sample.
		var victim key
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
	c.m[k] = entry{a: a, expires: now.Add(ttl)}
}
