package helochecks

import (
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		name string
		kind kind
		ip   string
	}{
		{"mail.example.org", domain, ""},
		{"localhost", domain, ""},
		{"a-b.c", domain, ""},
		{"1.2.3", domain, ""},          // digits-only labels are letters-digits-hyphen
		{"bücher.example", domain, ""}, // a U-label (RFC 6531)
		{strings.Repeat("a", 63) + ".example", domain, ""},
		{strings.Repeat("a.", 127) + "a", domain, ""}, // 255 octets
		{strings.Repeat("a.", 128) + "a", invalid, ""},
		{strings.Repeat("a", 64) + ".example", invalid, ""},
		{"a_b.example", invalid, ""},
		{"a-.example", invalid, ""},
		{"example.", invalid, ""},
		{".example", invalid, ""},
		{"ex ample", invalid, ""},
		{"\xff.example", invalid, ""},
		{"[192.0.2.1]", literal, "192.0.2.1"},
		{"[IPv6:2001:db8::1]", literal, "2001:db8::1"},
		{"[ipv6:2001:DB8::1]", literal, "2001:db8::1"},
		{"[IPv6:::ffff:192.0.2.1]", literal, "192.0.2.1"},
		{"[IPv6:fe80::1%eth0]", invalid, ""},
		{"[IPv6:192.0.2.1]", invalid, ""},
		{"[2001:db8::1]", invalid, ""},
		{"[192.0.2.01]", invalid, ""},
		{"[192.0.2.1", invalid, ""},
		{"[]", invalid, ""},
		{"[", invalid, ""},
		{"192.0.2.1", bareIP, "192.0.2.1"},
		{"2001:db8::1", bareIP, "2001:db8::1"},
		{"::ffff:192.0.2.1", bareIP, "192.0.2.1"},
	}
	for _, tc := range cases {
		h := classify(tc.name)
		ip := ""
		if h.ip.IsValid() {
			ip = h.ip.String()
		}
		if h.kind != tc.kind || ip != tc.ip {
			t.Errorf("classify(%q) = kind %d, ip %q; want kind %d, ip %q", tc.name, h.kind, ip, tc.kind, tc.ip)
		}
	}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"mail.example.org", "[192.0.2.1]", "[IPv6:::1]", "192.0.2.1", "a_b", "[", "bücher.de"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h := classify(s)
		switch h.kind {
		case literal, bareIP:
			if !h.ip.IsValid() || h.ip.Zone() != "" || h.ip.Is4In6() {
				t.Fatalf("classify(%q) gave address %v", s, h.ip)
			}
		case domain:
			if len(s) > 255 || strings.ContainsAny(s, " []_") {
				t.Fatalf("classify(%q) took it for a domain", s)
			}
		}
	})
}
