package access

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"loopmx/config"
)

func lines(texts ...string) []line {
	out := make([]line, len(texts))
	for i, t := range texts {
		out[i] = line{text: t, src: "test:" + t}
	}
	return out
}

func TestIPList(t *testing.T) {
	l, err := parseIPList(lines("192.0.2.0/24", "198.51.100.7", "2001:db8::/32", "2001:db8:ffff::1", "::ffff:203.0.113.9"))
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]bool{
		"192.0.2.0":          true,
		"192.0.2.255":        true,
		"192.0.3.1":          false,
		"198.51.100.7":       true,
		"198.51.100.8":       false,
		"::ffff:192.0.2.9":   true, // an IPv4-mapped client is its IPv4 address
		"203.0.113.9":        true, // and so is a mapped entry
		"2001:db8:1::5":      true,
		"2001:db9::1":        false,
		"2001:db8:ffff::1":   true,
		"::1":                false,
		"2001:0db8:0000::ff": true,
	} {
		if _, got := l.match(netip.MustParseAddr(ip)); got != want {
			t.Errorf("%s: match = %v, want %v", ip, got, want)
		}
	}
	var none *ipList
	if _, got := none.match(netip.MustParseAddr("192.0.2.1")); got {
		t.Error("an empty list matched")
	}
}

func TestNameList(t *testing.T) {
	l, err := parseList(lines("mx.example.com", ".example.org", "/^dyn-/", "[192.0.2.1]"), names)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"mx.example.com":   true,
		"MX.Example.COM.":  true,
		"a.mx.example.com": false, // exact entries do not cover subdomains
		"example.com":      false,
		"example.org":      true, // a leading dot covers the domain itself
		"a.b.example.org":  true,
		"badexample.org":   false,
		"Dyn-7.isp.net":    true,
		"static.dyn-7.net": false,
		"[192.0.2.1]":      true,
		"":                 false,
	} {
		if _, got := l.match(name); got != want {
			t.Errorf("%q: match = %v, want %v", name, got, want)
		}
	}
}

func TestAddressList(t *testing.T) {
	l, err := parseList(lines("user@example.com", "example.net", ".example.org", "/^bounce-/", "[192.0.2.1]"), addresses)
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"user@example.com":    true,
		"USER@Example.Com.":   true,
		"other@example.com":   false,
		"any@example.net":     true,
		"any@sub.example.net": false, // a plain domain does not cover subdomains
		"any@example.org":     true,
		"any@a.example.org":   true,
		`"a@b"@example.net`:   true, // the domain is after the last '@'
		"bounce-1@x.test":     true,
		"postmaster":          false,
		"":                    false,
		"u@[192.0.2.1]":       true,
	} {
		if _, got := l.match(addr); got != want {
			t.Errorf("%q: match = %v, want %v", addr, got, want)
		}
	}
}

func TestReadLines(t *testing.T) {
	dir := t.TempDir()
	data := "# heading\n\n  a.example  \nb.example # why\nc#d.example\n\t# indented comment\n"
	if err := os.WriteFile(filepath.Join(dir, "list"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readLines(cfg, "list")
	if err != nil {
		t.Fatal(err)
	}
	want := []line{{"a.example", "list:3"}, {"b.example", "list:4"}, {"c#d.example", "list:5"}}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %q, want %q", i, got[i], want[i])
		}
	}
	if got, err := readLines(cfg, "missing"); got != nil || err != nil {
		t.Errorf("a missing file gives %q, %v; want an empty list", got, err)
	}
}
