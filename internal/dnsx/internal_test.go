package dnsx

import (
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestInterpretTTL: an answer is cached for its TTL, bounded by min_ttl
// and max_ttl.
func TestInterpretTTL(t *testing.T) {
	r := New(Settings{MinTTL: 10 * time.Second, MaxTTL: time.Hour})
	k := key{"host.example.", 1}
	for _, tc := range []struct {
		ttl  uint32
		want time.Duration
	}{{0, 10 * time.Second}, {300, 300 * time.Second}, {86400, time.Hour}} {
		resp := mustMsg(t, k.name, "host.example. "+strconv.Itoa(int(tc.ttl))+" IN A 192.0.2.1")
		if _, got := r.interpret(k, resp); got != tc.want {
			t.Errorf("TTL %d is cached for %v, want %v", tc.ttl, got, tc.want)
		}
	}
}

// mustMsg is an answer to name holding the records rrs.
func mustMsg(t *testing.T, name string, rrs ...string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response = true
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		m.Answer = append(m.Answer, rr)
	}
	return m
}

func TestCacheExpires(t *testing.T) {
	c := newCache(10)
	k := key{"host.example.", dns.TypeA}
	now := time.Now()
	c.put(k, answer{kind: NXDomain}, time.Minute, now)
	if a, ok := c.get(k, now.Add(59*time.Second)); !ok || a.kind != NXDomain {
		t.Errorf("a fresh entry: got %v, %v", a, ok)
	}
	if _, ok := c.get(k, now.Add(time.Minute)); ok {
		t.Error("an entry is still served at its expiry")
	}
	if len(c.m) != 0 {
		t.Errorf("an expired entry was looked up and kept: %d entries", len(c.m))
	}
}

func TestCacheIsBounded(t *testing.T) {
	const size = 100
	c := newCache(size)
	now := time.Now()
	keyN := func(i int) key { return key{strconv.Itoa(i) + ".example.", dns.TypeA} }
	for i := range 10 * size {
		c.put(keyN(i), answer{}, time.Minute+time.Duration(i)*time.Millisecond, now)
		if len(c.m) > size {
			t.Fatalf("after %d inserts the cache holds %d entries, more than cache_size %d", i+1, len(c.m), size)
		}
	}
	last := keyN(10*size - 1)
	if _, ok := c.get(last, now); !ok {
		t.Error("the answer cached last is gone")
	}
	n := len(c.m)
	c.put(last, answer{kind: NoData}, time.Minute, now)
	if len(c.m) != n {
		t.Errorf("updating an entry changed the size from %d to %d", n, len(c.m))
	}
}

func TestCacheNilIsOff(t *testing.T) {
	c := newCache(0)
	k := key{"host.example.", dns.TypeA}
	c.put(k, answer{}, time.Minute, time.Now())
	if _, ok := c.get(k, time.Now()); ok {
		t.Error("a cache of size 0 answered")
	}
}
