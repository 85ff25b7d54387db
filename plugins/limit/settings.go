package limit

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"loopmx/config"
	"loopmx/internal/redisx"
)

// rate is a number of events per period, written N/period in limit.ini
// ("30/1m", "500/1h", "10/60" with the period in seconds). The zero rate
// is no limit.
type rate struct {
	N   int64
	Per time.Duration
}

// On reports whether the rate limits anything.
func (r rate) On() bool { return r.N > 0 }

// parseRate reads N/period; "" and "0" are no limit.
func parseRate(v string) (rate, bool) {
	v = strings.TrimSpace(v)
	if v == "" || v == "0" {
		return rate{}, true
	}
	ns, ps, ok := strings.Cut(v, "/")
	if !ok {
		return rate{}, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(ns), 10, 64)
	if err != nil || n < 1 {
		return rate{}, false
	}
	ps = strings.TrimSpace(ps)
	per, err := time.ParseDuration(ps)
	if err != nil {
		secs, serr := strconv.ParseInt(ps, 10, 64)
		if serr != nil {
			return rate{}, false
		}
		per = time.Duration(secs) * time.Second
	}
	if per < time.Millisecond {
		return rate{}, false
	}
	return rate{N: n, Per: per}, true
}

// settings are the values of limit.ini.
type settings struct {
	redis           bool
	failClosed      bool
	maxConcurrency  int
	concurrencyTTL  time.Duration
	maxRcptsPerTx   int
	maxErrors       int
	maxUnrecognized int
	ipv6Prefix      int
	connRate        rate
	senderRate      rate
}

// These are the defaults of the limit.ini keys whose default is not "no
// limit".
const (
	DefaultConcurrencyTTL = 10 * time.Minute
	DefaultIPv6Prefix     = 64
)

// readSettings reads limit.ini. Redis is used when redis.ini exists,
// unless limit.ini says redis = false.
func readSettings(cfg *config.Config) (settings, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return settings{}, err
	}
	_, haveRedis, err := redisx.Load(cfg)
	if err != nil {
		return settings{}, err
	}
	s := settings{
		redis:           pc.Bool("", "redis", haveRedis),
		maxConcurrency:  pc.Int("", "max_concurrency", 0),
		concurrencyTTL:  pc.Duration("", "concurrency_ttl", DefaultConcurrencyTTL),
		maxRcptsPerTx:   pc.Int("", "max_rcpts_per_tx", 0),
		maxErrors:       pc.Int("", "max_errors", 0),
		maxUnrecognized: pc.Int("", "max_unrecognized", 0),
		ipv6Prefix:      pc.Int("", "ipv6_prefix", DefaultIPv6Prefix),
	}
	fail := pc.String("", "fail", "open")
	connRate := pc.String("rate", "conn", "0")
	senderRate := pc.String("rate", "rcpt_sender", "0")
	if err := pc.Check(); err != nil {
		return settings{}, err
	}

	bad := func(section, key, why string) error {
		label := "[main]"
		if section != "" {
			label = "[" + section + "]"
		}
		return fmt.Errorf("config: %s: %s %s: %q %s", pc.File(), label, key, pc.String(section, key, ""), why)
	}
	if s.redis && !haveRedis {
		return settings{}, bad("", "redis", "needs "+redisx.File+" in the config directory")
	}
	switch fail {
	case "open":
	case "closed":
		s.failClosed = true
	default:
		return settings{}, bad("", "fail", "is neither open nor closed")
	}
	for _, k := range []struct {
		key string
		v   int
	}{{"max_concurrency", s.maxConcurrency}, {"max_rcpts_per_tx", s.maxRcptsPerTx}, {"max_errors", s.maxErrors}, {"max_unrecognized", s.maxUnrecognized}} {
		if k.v < 0 {
			return settings{}, bad("", k.key, "is out of range (minimum 0, which is no limit)")
		}
	}
	if s.concurrencyTTL < time.Second {
		return settings{}, bad("", "concurrency_ttl", "is out of range (minimum 1s)")
	}
	if s.ipv6Prefix < 1 || s.ipv6Prefix > 128 {
		return settings{}, bad("", "ipv6_prefix", "is out of range 1..128")
	}
	var ok bool
	if s.connRate, ok = parseRate(connRate); !ok {
		return settings{}, bad("rate", "conn", "is not N/period (like 30/1m), or 0")
	}
	if s.senderRate, ok = parseRate(senderRate); !ok {
		return settings{}, bad("rate", "rcpt_sender", "is not N/period (like 500/1h), or 0")
	}
	return s, nil
}
