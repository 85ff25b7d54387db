package loop

import (
	"net/netip"
	"testing"
	"time"
)

// TestIPKey: an IPv4 address counts alone and an IPv6 address with its
// /64 by default; other prefix lengths group accordingly.
func TestIPKey(t *testing.T) {
	cases := []struct {
		bits4, bits6 int
		a, b         string
		same         bool
	}{
		{32, 64, "192.0.2.1", "192.0.2.2", false},
		{32, 64, "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true},
		{32, 64, "2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{24, 64, "192.0.2.1", "192.0.2.200", true},
		{32, 128, "2001:db8::1", "2001:db8::2", false},
		{32, 48, "2001:db8:1:2::1", "2001:db8:1:3::1", true},
	}
	for _, tc := range cases {
		s := &Server{guard: guard{ipBits4: tc.bits4, ipBits6: tc.bits6}}
		ka, _ := s.ipKey(netip.MustParseAddr(tc.a))
		kb, _ := s.ipKey(netip.MustParseAddr(tc.b))
		if (ka == kb) != tc.same {
			t.Errorf("/%d, /%d: %s counts as %s and %s as %s; same = %v, want %v", tc.bits4, tc.bits6, tc.a, ka, tc.b, kb, ka == kb, tc.same)
		}
	}
}

// TestDeadlines: a message's deadline moves with its octets at the
// minimum rate; the other phases have fixed ones.
func TestDeadlines(t *testing.T) {
	l := limits{idle: 300 * time.Second, line: 60 * time.Second, rate: 1024}
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		ph   uint8
		body int64
		want time.Duration
	}{
		{phaseIdle, 0, 300 * time.Second},
		{phaseLine, 5000, 60 * time.Second},
		{phaseBody, 0, 60 * time.Second},
		{phaseBody, 10 * 1024, 70 * time.Second},
		{phaseBody, 512, 60*time.Second + 500*time.Millisecond},
		{phaseBody, 1 << 40, 60*time.Second + (1<<30)*time.Second},
		{phaseClosing, 0, lingerTime},
	} {
		if got := l.deadline(tc.ph, t0, tc.body).Sub(t0); got != tc.want {
			t.Errorf("phase %d with %d octets: deadline after %v, want %v", tc.ph, tc.body, got, tc.want)
		}
	}
}
