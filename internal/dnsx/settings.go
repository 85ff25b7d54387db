package dnsx

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"loopmx/config"
)

// File is the name of the DNS settings file in the config directory.
const File = "dns.ini"

// ResolvConf is where the system's resolver settings are read from when
// dns.ini does not name the servers, the timeout or the attempts.
const ResolvConf = "/etc/resolv.conf"

// These are the defaults of the dns.ini keys that /etc/resolv.conf does
// not give.
const (
	// DefaultServer is asked when neither dns.ini nor resolv.conf names a
	// server, as the C library does.
	DefaultServer = "127.0.0.1:53"
	// DefaultTimeout is how long one try waits for one server. The C
	// library waits 5s; a mail server has a budget of a few seconds per
	// lookup, in which a second try must fit.
	DefaultTimeout   = time.Second
	DefaultAttempts  = 2
	DefaultMinTTL    = 10 * time.Second
	DefaultMaxTTL    = time.Hour
	DefaultCacheSize = 20000
	// DefaultBreakerFailures is higher than Redis' (a single timeout
	// there opens the breaker): a recursive resolver times out on slow
	// authoritative servers while it is healthy.
	DefaultBreakerFailures   = 5
	DefaultBreakerBackoff    = time.Second
	DefaultBreakerBackoffMax = 30 * time.Second
)

// Settings are the values of dns.ini.
type Settings struct {
	// Servers are the recursive resolvers asked, as IP:port, in order.
	Servers []string
	// Timeout is how long one try waits for one server's answer.
	Timeout time.Duration
	// Attempts is how many rounds over Servers a query makes before it
	// gives up (a round ends early when every server answered).
	Attempts int
	// MinTTL and MaxTTL bound how long an answer is cached, whatever TTL
	// it carries; a negative answer without an SOA is cached for MinTTL.
	MinTTL, MaxTTL time.Duration
	// CacheSize is the most answers the cache holds; 0 turns it off.
	CacheSize int
	// BreakerFailures is how many queries in a row that no server
	// answered open the circuit breaker: lookups that need the network
	// then fail at once (a temporary error) for BreakerBackoff, doubled
	// after each failed probe up to BreakerBackoffMax. One slow name
	// times out now and then; a dead resolver times out every time.
	BreakerFailures                   int
	BreakerBackoff, BreakerBackoffMax time.Duration
}

// Load reads dns.ini from the config directory; a missing file means
// every default. Servers, Timeout and Attempts default to what
// /etc/resolv.conf says (nameserver lines, options timeout: and
// attempts:), then to the constants above. A bad value or an unknown key
// is an error that names file, key and value.
func Load(cfg *config.Config) (Settings, error) {
	return load(cfg, ResolvConf)
}

func load(cfg *config.Config, resolvConf string) (Settings, error) {
	sys, err := readResolvConf(resolvConf)
	if err != nil {
		return Settings{}, err
	}
	pc, err := cfg.Plugin("dns")
	if err != nil {
		return Settings{}, err
	}
	servers := pc.Strings("", "servers", nil)
	s := Settings{
		Timeout:   pc.Duration("", "timeout", sys.timeout),
		Attempts:  pc.Int("", "attempts", sys.attempts),
		MinTTL:    pc.Duration("", "min_ttl", DefaultMinTTL),
		MaxTTL:    pc.Duration("", "max_ttl", DefaultMaxTTL),
		CacheSize: pc.Int("", "cache_size", DefaultCacheSize),

		BreakerFailures:   pc.Int("", "breaker_failures", DefaultBreakerFailures),
		BreakerBackoff:    pc.Duration("", "breaker_backoff", DefaultBreakerBackoff),
		BreakerBackoffMax: pc.Duration("", "breaker_backoff_max", DefaultBreakerBackoffMax),
	}
	if err := pc.Check(); err != nil {
		return Settings{}, err
	}
	bad := func(key, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", File, key, pc.String("", key, ""), why)
	}
	if servers == nil {
		s.Servers = sys.servers
	} else {
		for _, v := range servers {
			addr, ok := ParseServer(v)
			if !ok {
				return Settings{}, fmt.Errorf("config: %s: [main] servers: %q is not an IP address, or an IP address and port (such as 127.0.0.1, [::1]:5353)", File, v)
			}
			s.Servers = append(s.Servers, addr)
		}
		if len(s.Servers) == 0 {
			return Settings{}, bad("servers", "names no server")
		}
	}
	if s.Timeout <= 0 {
		return Settings{}, bad("timeout", "must be more than 0")
	}
	if s.Attempts < 1 {
		return Settings{}, bad("attempts", "is out of range (minimum 1)")
	}
	if s.MinTTL < 0 {
		return Settings{}, bad("min_ttl", "must not be negative")
	}
	if s.MaxTTL < s.MinTTL || s.MaxTTL <= 0 {
		return Settings{}, bad("max_ttl", "must be more than 0 and not less than min_ttl")
	}
	if s.CacheSize < 0 {
		return Settings{}, bad("cache_size", "must not be negative (0 turns the cache off)")
	}
	switch {
	case s.BreakerFailures < 1:
		return Settings{}, bad("breaker_failures", "is out of range (minimum 1)")
	case s.BreakerBackoff <= 0:
		return Settings{}, bad("breaker_backoff", "must be more than 0")
	case s.BreakerBackoffMax < s.BreakerBackoff:
		return Settings{}, bad("breaker_backoff_max", "is less than breaker_backoff")
	}
	return s, nil
}

// ParseServer reads a server address as dns.ini and the plugins take it:
// an IP address with an optional port (192.0.2.53, 192.0.2.53:5353,
// [2001:db8::53]:53, 2001:db8::53), and returns it as IP:port, port 53
// when none is given.
func ParseServer(v string) (string, bool) {
	if ap, err := netip.ParseAddrPort(v); err == nil && ap.Port() != 0 {
		return ap.String(), true
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.AddrPortFrom(a, 53).String(), true
	}
	return "", false
}

// system is what resolv.conf says, with the defaults filled in.
type system struct {
	servers  []string
	timeout  time.Duration
	attempts int
}

// readResolvConf reads the nameserver lines and the timeout and attempts
// options of a resolv.conf file. A missing file gives the defaults, as
// it does to the C library.
func readResolvConf(path string) (system, error) {
	sys := system{timeout: DefaultTimeout, attempts: DefaultAttempts}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return sys, fmt.Errorf("config: %s (the default DNS servers of %s): %w", path, File, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			// resolv.conf names addresses, without a port.
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				sys.servers = append(sys.servers, net.JoinHostPort(a.String(), "53"))
			}
		case "options":
			for _, o := range fields[1:] {
				name, v, ok := strings.Cut(o, ":")
				n, err := strconv.Atoi(v)
				if !ok || err != nil || n < 1 {
					continue
				}
				switch name {
				case "timeout":
					sys.timeout = time.Duration(n) * time.Second
				case "attempts":
					sys.attempts = n
				}
			}
		}
	}
	if len(sys.servers) == 0 {
		sys.servers = []string{DefaultServer}
	}
	return sys, nil
}
