package dnsbl

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseZones(t *testing.T) {
	zones, err := parseZones([]string{
		"zen.example=127.0.0.[10;11]*8",
		"bl.example",
		"ZEN.example.=127.0.0.[2..9]*4",
		"wl.example=127.0.[0..255].[1;3..4]*-5",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(zones) != 3 || zones[0].name != "zen.example" || zones[1].name != "bl.example" || zones[2].name != "wl.example" {
		t.Fatalf("zones %v: want zen.example (two entries), bl.example, wl.example, in that order", zones)
	}
	if len(zones[0].entries) != 2 || zones[2].negative != -5 || zones[2].raises || !zones[0].raises {
		t.Errorf("zen.example has %d entries, wl.example negative %d raises %v", len(zones[0].entries), zones[2].negative, zones[2].raises)
	}
	for _, tc := range []struct {
		zone    int
		listing string
		score   int
	}{
		{0, "127.0.0.10", 8},
		{0, "127.0.0.3", 4},
		{0, "127.0.0.12", 0},
		{1, "127.0.0.200", 1}, // no filter: any listing
		{2, "127.0.9.1", -5},
		{2, "127.0.9.4", -5},
		{2, "127.0.9.2", 0},
	} {
		got, _, _ := zones[tc.zone].score([]netip.Addr{netip.MustParseAddr(tc.listing)})
		if got != tc.score {
			t.Errorf("%s answering %s scores %d, want %d", zones[tc.zone].name, tc.listing, got, tc.score)
		}
	}
	// Two addresses matching one entry count once; each entry counts.
	got, _, _ := zones[0].score([]netip.Addr{netip.MustParseAddr("127.0.0.10"), netip.MustParseAddr("127.0.0.11"), netip.MustParseAddr("127.0.0.2")})
	if got != 12 {
		t.Errorf("zen.example answering .10, .11 and .2 scores %d, want 8+4", got)
	}
}

func TestParseZonesErrors(t *testing.T) {
	for _, tc := range []struct{ item, want string }{
		{"bad zone!", `"bad zone!" is not a DNS zone name`},
		{"bl.example*x", `the weight "x"`},
		{"bl.example*0", `the weight "0"`},
		{"bl.example=127.0.0", `the filter "127.0.0" is not four octets`},
		{"bl.example=127.0.0.2.3", `is not four octets`},
		{"bl.example=127.0.0.[2..300]", `"2..300", which is no octet value`},
		{"bl.example=127.0.0.[9..2]", `"9..2"`},
		{"bl.example=127.0.0.[2", `has a [ without ]`},
		{"bl.example=127.0.0.x", `"x"`},
	} {
		_, err := parseZones([]string{tc.item})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("zones = %s: error %v, want %q", tc.item, err, tc.want)
		}
	}
}

func TestVerdictString(t *testing.T) {
	for _, tc := range []struct {
		v    verdict
		want string
	}{
		{verdict{}, "not listed"},
		{verdict{listed: true, listedBy: []string{"bl.example"}, score: 1}, "listed by bl.example"},
		{verdict{failed: true}, "lookup failed"},
		{verdict{threshold: 3}, "not listed"},
		{verdict{threshold: 3, listed: true, score: 4, listedBy: []string{"a.example", "b.example"}}, "listed by a.example, b.example (score 4, threshold 3)"},
		{verdict{threshold: 3, score: 0, listedBy: []string{"a.example"}, allowedBy: []string{"wl.example"}}, "score 0 below threshold 3: listed by a.example; allowed by wl.example"},
		{verdict{threshold: 3, score: 2, listedBy: []string{"a.example"}}, "score 2 below threshold 3: listed by a.example"},
		{verdict{threshold: 3, failed: true, score: 2, listedBy: []string{"a.example"}}, "lookup failed (score 2, threshold 3)"},
	} {
		if got := tc.v.String(); got != tc.want {
			t.Errorf("%+v reads %q, want %q", tc.v, got, tc.want)
		}
	}
}
