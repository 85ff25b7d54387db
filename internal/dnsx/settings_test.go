package dnsx

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"loopmx/config"
)

// loadDir writes dns.ini (unless ini is "-") and resolv.conf into a new
// config directory and loads the settings.
func loadDir(t *testing.T, ini, resolvConf string) (Settings, error) {
	t.Helper()
	dir := t.TempDir()
	if ini != "-" {
		if err := os.WriteFile(filepath.Join(dir, File), []byte(ini), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rc := filepath.Join(dir, "resolv.conf")
	if resolvConf != "-" {
		if err := os.WriteFile(rc, []byte(resolvConf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return load(cfg, rc)
}

func TestDefaultsFromResolvConf(t *testing.T) {
	const rc = "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver bogus\noptions ndots:2 timeout:3 attempts:4\n"
	s, err := loadDir(t, "-", rc)
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{Servers: []string{"192.0.2.53:53", "[2001:db8::53]:53"}, Timeout: 3 * time.Second, Attempts: 4,
		MinTTL: DefaultMinTTL, MaxTTL: DefaultMaxTTL, CacheSize: DefaultCacheSize}
	if !slices.Equal(s.Servers, want.Servers) || s.Timeout != want.Timeout || s.Attempts != want.Attempts ||
		s.MinTTL != want.MinTTL || s.MaxTTL != want.MaxTTL || s.CacheSize != want.CacheSize {
		t.Errorf("settings %+v, want %+v", s, want)
	}

	// Without resolv.conf: 127.0.0.1, one second, two attempts.
	s, err = loadDir(t, "", "-")
	if err != nil || !slices.Equal(s.Servers, []string{DefaultServer}) || s.Timeout != DefaultTimeout || s.Attempts != DefaultAttempts {
		t.Errorf("without resolv.conf: %+v, %v", s, err)
	}

	// dns.ini wins over resolv.conf.
	s, err = loadDir(t, "servers = 192.0.2.1, [2001:db8::1]:5353, 2001:db8::2\ntimeout = 500ms\nattempts = 1\nmin_ttl = 0\nmax_ttl = 5m\ncache_size = 0\n", rc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Servers, []string{"192.0.2.1:53", "[2001:db8::1]:5353", "[2001:db8::2]:53"}) ||
		s.Timeout != 500*time.Millisecond || s.Attempts != 1 || s.MinTTL != 0 || s.MaxTTL != 5*time.Minute || s.CacheSize != 0 {
		t.Errorf("dns.ini settings: %+v", s)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ ini, want string }{
		{"server = 192.0.2.1\n", `config: dns.ini: [main] unknown key "server"`},
		{"servers = ns.example.org\n", `config: dns.ini: [main] servers: "ns.example.org" is not an IP address`},
		{"servers = ,\n", `config: dns.ini: [main] servers: "," names no server`},
		{"timeout = 0\n", `dns.ini`},
		{"timeout = soon\n", `"soon"`},
		{"attempts = 0\n", `config: dns.ini: [main] attempts: "0" is out of range (minimum 1)`},
		{"min_ttl = -1s\n", `config: dns.ini: [main] min_ttl: "-1s" must not be negative`},
		{"min_ttl = 10m\nmax_ttl = 1m\n", `config: dns.ini: [main] max_ttl: "1m" must be more than 0 and not less than min_ttl`},
		{"cache_size = -1\n", `config: dns.ini: [main] cache_size: "-1" must not be negative`},
	} {
		_, err := loadDir(t, tc.ini, "nameserver 192.0.2.53\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dns.ini %q: error %v, want %q", tc.ini, err, tc.want)
		}
	}
}

func TestShared(t *testing.T) {
	s := Settings{Servers: []string{"127.0.0.1:53"}, Timeout: time.Second, Attempts: 1, MaxTTL: time.Hour, CacheSize: 10}
	a, b := Shared("/etc/loopmx", s), Shared("/etc/loopmx", s)
	other := s
	other.Servers = []string{"127.0.0.2:53"}
	c := Shared("/etc/loopmx", other)
	if a != b || a == c {
		t.Errorf("same settings give one resolver (%v), other servers another (%v)", a == b, a != c)
	}
	Release(a)
	if Shared("/etc/loopmx", s) != b {
		t.Error("a resolver still held by one plugin was dropped")
	}
	Release(b)
	Release(b)
	if Shared("/etc/loopmx", s) == a {
		t.Error("a resolver released by every plugin was kept")
	}
	Release(c)
}
