package address

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"loopmx/config"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct{ in, local, domain string }{
		{"bob@Example.COM.", "bob", "example.com"},
		{`"a@b"@example.org`, `"a@b"`, "example.org"},
		{"postmaster", "postmaster", ""},
	} {
		l, d, ok := Split(tc.in)
		if l != tc.local || d != tc.domain || ok != (tc.domain != "") {
			t.Errorf("Split(%q) = %q, %q, %v", tc.in, l, d, ok)
		}
	}
}

func TestBase(t *testing.T) {
	for _, tc := range []struct{ local, seps, want string }{
		{"bob+lists", "+", "bob"},
		{"bob-lists+x", "+-", "bob"},
		{"bob+lists", "", "bob+lists"},
		{"+bob", "+", "+bob"}, // a separator first is no tag
		{"bob", "+", "bob"},
	} {
		if got := Base(tc.local, tc.seps); got != tc.want {
			t.Errorf("Base(%q, %q) = %q, want %q", tc.local, tc.seps, got, tc.want)
		}
	}
}

func TestSender(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"Bob@Example.ORG", "bob@example.org"},
		{"bob+news@example.org", "bob@example.org"},
		{"prvs=0123456789=bob@example.org", "bob@example.org"},
		{"PRVS=9876abcdef=Bob+x@Example.org", "bob@example.org"},
		{"msprvs1=17896hrt=bob@example.org", "bob@example.org"},
		{"btv1==0a1b2c3d4e5==bob@example.org", "bob@example.org"},
		{"SRS0=HHH=TT=origin.example=alice@forwarder.example", "alice@origin.example"},
		{"SRS0+HHH=TT=origin.example=alice@forwarder.example", "alice@origin.example"},
		{"SRS1=HHH=first.example==HHH=TT=origin.example=alice@second.example", "alice@origin.example"},
		{"srs0=broken@forwarder.example", "srs0=broken@forwarder.example"},
		{"prvs=@example.org", "prvs=@example.org"},
	} {
		if got := Sender(tc.in, "+"); got != tc.want {
			t.Errorf("Sender(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCheckOrder(t *testing.T) {
	load := func(plugins string) *config.Config {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "plugins"), []byte(plugins), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if err := CheckOrder(load("greylist\nrcpt_to.in_host_list\nqueue/discard\n"), "greylist"); err != nil {
		t.Errorf("greylist before in_host_list: %v", err)
	}
	if err := CheckOrder(load("greylist\nqueue/discard\n"), "greylist"); err != nil {
		t.Errorf("without in_host_list: %v", err)
	}
	err := CheckOrder(load("# recipients\nrcpt_to.in_host_list\ngreylist\nqueue/discard\n"), "greylist")
	if err == nil || !strings.Contains(err.Error(), "plugins:3: greylist comes after rcpt_to.in_host_list (line 2)") {
		t.Errorf("greylist after in_host_list: %v", err)
	}
}
