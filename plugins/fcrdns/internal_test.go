package fcrdns

import (
	"net/netip"
	"testing"
)

func TestGeneric(t *testing.T) {
	p := &FCrDNS{genericAddress: true}
	p.patterns, _ = loadPatterns(nil, "")
	ip := netip.MustParseAddr("192.0.2.99")
	for _, tc := range []struct {
		name    string
		generic bool
	}{
		{"192-0-2-99.example.net", true},
		{"99.2.0.192.in-addr.example.net", true},
		{"host192.0.2.99.example.net", true},
		{"c0000263.example.net", true},
		{"dyn-1-2.example.net", true},
		{"adsl.example.net", true},
		{"pool12.isp.example", true},
		{"cpe-12-34.cable.example", true},
		{"customer.example.net", true},
		{"mail.example.net", false},
		{"mx1.example.org", false},
		{"dynamo.example.org", false},
		{"192-0-2-98.example.net", false},
		{"poolside.example.org", false},
		{"", false},
	} {
		if got := p.genericWhy(tc.name, ip) != ""; got != tc.generic {
			t.Errorf("%q: generic %v, want %v (%s)", tc.name, got, tc.generic, p.genericWhy(tc.name, ip))
		}
	}
	p.genericAddress = false
	if why := p.genericWhy("192-0-2-99.example.net", ip); why != "" {
		t.Errorf("with generic_ip_in_name off the address counts: %s", why)
	}
	if why := p.genericWhy("2001-db8--1.example.net", netip.MustParseAddr("2001:db8::1")); why != "" {
		t.Errorf("an IPv6 name: %s", why)
	}
}
