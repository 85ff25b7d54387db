package dnsbl

import (
	"net/netip"
	"testing"
	"time"
)

func TestReverse(t *testing.T) {
	cases := []struct{ ip, want string }{
		// RFC 5782 2.1 and 2.4 give these two.
		{"192.0.2.99", "99.2.0.192"},
		{"2001:db8:1:2:3:4:567:89ab", "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"},
		{"127.0.0.1", "1.0.0.127"},
		{"::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"},
		{"2001:DB8::FFFF", "f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"},
		// An IPv4-mapped IPv6 address is looked up as the IPv4 address.
		{"::ffff:198.51.100.7", "7.100.51.198"},
	}
	for _, tc := range cases {
		if got := reverse(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("reverse(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
}

func TestCacheExpires(t *testing.T) {
	c := newCache(time.Minute, 10)
	ip := netip.MustParseAddr("192.0.2.1")
	now := time.Now()
	c.put(ip, verdict{zone: "bl.test"}, now)
	if v, ok := c.get(ip, now.Add(59*time.Second)); !ok || v.zone != "bl.test" {
		t.Errorf("a fresh entry: got %v, %v", v, ok)
	}
	if _, ok := c.get(ip, now.Add(time.Minute)); ok {
		t.Error("an entry is still served at its expiry")
	}
	if len(c.m) != 0 {
		t.Errorf("an expired entry was looked up and kept: %d entries", len(c.m))
	}
}

func TestCacheIsBounded(t *testing.T) {
	const size = 100
	c := newCache(time.Minute, size)
	now := time.Now()
	for i := range 10 * size {
		ip := addrN(i)
		c.put(ip, verdict{}, now.Add(time.Duration(i)*time.Millisecond))
		if len(c.m) > size {
			t.Fatalf("after %d inserts the cache holds %d entries, more than cache_size %d", i+1, len(c.m), size)
		}
	}
	// The newest address is always kept.
	last := addrN(10*size - 1)
	if _, ok := c.get(last, now); !ok {
		t.Error("the address cached last is gone")
	}
	// Updating a cached address does not evict another one.
	n := len(c.m)
	c.put(last, verdict{zone: "bl.test"}, now)
	if len(c.m) != n {
		t.Errorf("updating an entry changed the size from %d to %d", n, len(c.m))
	}
}

func TestCacheNilIsOff(t *testing.T) {
	var c *cache
	ip := netip.MustParseAddr("192.0.2.1")
	c.put(ip, verdict{}, time.Now())
	if _, ok := c.get(ip, time.Now()); ok {
		t.Error("a nil cache answered")
	}
}

// addrN returns a distinct IPv4 address for each n below 65536.
func addrN(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(n >> 8), byte(n)}) }
