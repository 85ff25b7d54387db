// Package redisx gives loopmx plugins one Redis client per process. The
// client is configured by redis.ini in the config directory; every plugin
// that opens it gets the same *Client, so the process holds one bounded
// pool of Redis connections, one circuit breaker and one in-flight budget
// however many plugins and client connections use it. When redis.ini does not exist, Redis is not
// configured and plugins fall back to their in-memory mode.
//
// redisx is a library for plugins, not a plugin: it registers nothing and
// is never named in the plugins file.
package redisx

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"loopmx/config"
	"loopmx/internal/breaker"
)

// File is the name of the Redis settings file in the config directory.
const File = "redis.ini"

// These are the defaults of the redis.ini keys.
const (
	DefaultServer       = "127.0.0.1:6379"
	DefaultPoolSize     = 10
	DefaultDialTimeout  = time.Second
	DefaultReadTimeout  = 500 * time.Millisecond
	DefaultWriteTimeout = 500 * time.Millisecond
	// DefaultMaxInflight is the default in-flight budget, unless half of
	// threadpool_size is less (see Settings.MaxInflight).
	DefaultMaxInflight       = 2
	DefaultBreakerFailures   = breaker.DefaultFailures
	DefaultBreakerBackoff    = breaker.DefaultBackoff
	DefaultBreakerBackoffMax = breaker.DefaultMaxBackoff
)

// Settings are the values of redis.ini.
type Settings struct {
	// Server is the Redis address, host:port, when one server serves.
	Server string
	// Sentinels are the addresses of a Redis Sentinel set that names the
	// master MasterName; the client follows a failover by itself.
	Sentinels  []string
	MasterName string
	// SentinelPassword authenticates to the sentinels when not empty.
	SentinelPassword string
	// Cluster are seed addresses of a Redis Cluster; the client learns
	// the rest of the cluster from them and follows its changes.
	Cluster []string
	// DB is the database number selected after connecting.
	DB int
	// Password authenticates to the server when not empty.
	Password string
	// PoolSize is the number of connections the process keeps to Redis.
	PoolSize int
	// DialTimeout, ReadTimeout and WriteTimeout bound each dial, each
	// reply and each request.
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
	// MaxInflight is the number of hooks' calls, across every plugin
	// using the client, that may wait longer than SlowCall for Redis at a
	// time; while that many do, the next one is answered ErrBusy at
	// once. Its default is DefaultMaxInflight or half of
	// threadpool_size, whichever is less, and at least 1: a slow Redis
	// then never takes every workpool worker.
	MaxInflight int
	// SlowCall is the longest a hook waits for Redis: a call still
	// unanswered then is left to finish by itself (the hook answers as
	// its fail setting says) and counts toward MaxInflight until it
	// does; calls that Redis answers sooner never count. It defaults to
	// ReadTimeout: a hook waits at most for one reply, never for
	// go-redis' retry after a timeout.
	SlowCall time.Duration
	// BreakerFailures is the number of failed calls in a row that opens
	// the circuit breaker; a timeout opens it at once.
	BreakerFailures int
	// BreakerBackoff is how long the breaker first stays open; each
	// failed probe doubles it, up to BreakerBackoffMax.
	BreakerBackoff, BreakerBackoffMax time.Duration
}

// defaultMaxInflight is max_inflight when redis.ini does not set it:
// below the workpool's size, so that queue plugins keep workers of their
// own while Redis is slow.
func defaultMaxInflight(threadpool int) int {
	return max(1, min(DefaultMaxInflight, threadpool/2))
}

// Load reads redis.ini from the config directory. It reports ok=false,
// with no error, when the file does not exist: Redis is not configured.
// A bad value or an unknown key is an error that names file, key and
// value.
func Load(cfg *config.Config) (s Settings, ok bool, err error) {
	exists, err := fileExists(cfg)
	if err != nil || !exists {
		return Settings{}, false, err
	}
	pc, err := cfg.Plugin("redis")
	if err != nil {
		return Settings{}, false, err
	}
	if cfg.Embedded && len(pc.Sections()) == 0 {
		return Settings{}, false, nil
	}
	s = Settings{
		Server:           pc.String("", "server", DefaultServer),
		Sentinels:        addrList(pc.String("", "sentinels", "")),
		MasterName:       pc.String("", "master_name", ""),
		SentinelPassword: pc.String("", "sentinel_password", ""),
		Cluster:          addrList(pc.String("", "cluster", "")),
		DB:               pc.Int("", "db", 0),
		Password:         pc.String("", "password", ""),
		PoolSize:         pc.Int("", "pool_size", DefaultPoolSize),
		DialTimeout:      pc.Duration("", "dial_timeout", DefaultDialTimeout),
		ReadTimeout:      pc.Duration("", "read_timeout", DefaultReadTimeout),
		WriteTimeout:     pc.Duration("", "write_timeout", DefaultWriteTimeout),

		MaxInflight:       pc.Int("", "max_inflight", defaultMaxInflight(cfg.Main.ThreadpoolSize)),
		BreakerFailures:   pc.Int("", "breaker_failures", DefaultBreakerFailures),
		BreakerBackoff:    pc.Duration("", "breaker_backoff", DefaultBreakerBackoff),
		BreakerBackoffMax: pc.Duration("", "breaker_backoff_max", DefaultBreakerBackoffMax),
	}
	s.SlowCall = pc.Duration("", "slow_call", s.ReadTimeout)
	if err := pc.Check(); err != nil {
		return Settings{}, false, err
	}
	if pc.String("", "breaker_backoff_max", "") == "" {
		s.BreakerBackoffMax = max(s.BreakerBackoffMax, s.BreakerBackoff)
	}
	// config.Plugin accepts a "timeout" key in every file, for the chain;
	// redis.ini belongs to no plugin, so the key would be silently ignored.
	if v := pc.String("", "timeout", ""); v != "" {
		return Settings{}, false, fmt.Errorf("config: %s: [main] unknown key %q (use dial_timeout, read_timeout, write_timeout)", File, "timeout")
	}
	if err := s.validate(pc); err != nil {
		return Settings{}, false, err
	}
	return s, true, nil
}

// fileExists tells whether the config directory holds redis.ini. The
// built-in default directory is not on disk; Load looks at its content
// instead.
func fileExists(cfg *config.Config) (bool, error) {
	if cfg.Embedded {
		return true, nil
	}
	_, err := os.Stat(filepath.Join(cfg.Dir, File))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("config: %s: %w", File, err)
	}
	return true, nil
}

// validate checks the ranges the typed getters cannot; pc gives the values
// as written, for the error.
func (s *Settings) validate(pc *config.PluginConfig) error {
	bad := func(key, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", File, key, pc.String("", key, ""), why)
	}
	set := func(key string) bool { return pc.String("", key, "") != "" }
	switch {
	case set("cluster") && (set("sentinels") || set("server")):
		return bad("cluster", "cannot be set with server or sentinels (one kind of Redis at a time)")
	case set("sentinels") && set("server"):
		return bad("sentinels", "cannot be set with server (one kind of Redis at a time)")
	case set("sentinels") != set("master_name"):
		return fmt.Errorf("config: %s: [main] sentinels and master_name go together (the master the sentinels watch, and where they are)", File)
	case len(s.Cluster) > 0 && s.DB != 0:
		return bad("db", "must be 0 with cluster (Redis Cluster has one database)")
	}
	addrs, key := []string{s.Server}, "server"
	switch {
	case len(s.Sentinels) > 0:
		addrs, key = s.Sentinels, "sentinels"
	case len(s.Cluster) > 0:
		addrs, key = s.Cluster, "cluster"
	}
	for _, a := range addrs {
		what := "" // a list names the address at fault
		if key != "server" {
			what = "holds " + strconv.Quote(a) + ", which "
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return bad(key, what+"is not host:port")
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return bad(key, what+"has no valid port")
		}
	}
	if s.DB < 0 {
		return bad("db", "is out of range (minimum 0)")
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"pool_size", s.PoolSize}, {"max_inflight", s.MaxInflight}, {"breaker_failures", s.BreakerFailures}} {
		if n.v < 1 {
			return bad(n.key, "is out of range (minimum 1)")
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"dial_timeout", s.DialTimeout}, {"read_timeout", s.ReadTimeout}, {"write_timeout", s.WriteTimeout},
		{"slow_call", s.SlowCall}, {"breaker_backoff", s.BreakerBackoff}, {"breaker_backoff_max", s.BreakerBackoffMax}} {
		if d.v <= 0 {
			return bad(d.key, "must be more than 0")
		}
	}
	if s.BreakerBackoffMax < s.BreakerBackoff {
		return bad("breaker_backoff_max", "is less than breaker_backoff")
	}
	return nil
}

// Options turns the settings into go-redis options, for a server, a
// Sentinel set (the master name with the Sentinels' addresses) or a
// Cluster (its seeds): redis.NewUniversalClient picks the client from
// them. Beyond redis.ini, a command is retried once (which covers a
// pooled connection that died with a Redis restart) and a dial is tried
// once: while Redis is down a hook fails within about dial_timeout
// instead of sleeping through go-redis' default retries.
func (s Settings) Options() *redis.UniversalOptions {
	o := &redis.UniversalOptions{
		Addrs:            []string{s.Server},
		DB:               s.DB,
		Password:         s.Password,
		SentinelPassword: s.SentinelPassword,
		PoolSize:         s.PoolSize,
		DialTimeout:      s.DialTimeout,
		ReadTimeout:      s.ReadTimeout,
		WriteTimeout:     s.WriteTimeout,
		MaxRetries:       1,
		DialerRetries:    1,
		ClientName:       "loopmx",
		DisableIdentity:  true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
	switch s.Kind() {
	case "sentinel":
		o.Addrs, o.MasterName = s.Sentinels, s.MasterName
	case "cluster":
		o.Addrs, o.IsClusterMode = s.Cluster, true
	}
	return o
}

// Kind says which Redis the settings name: "server", "sentinel" or
// "cluster".
func (s Settings) Kind() string {
	switch {
	case len(s.Sentinels) > 0:
		return "sentinel"
	case len(s.Cluster) > 0:
		return "cluster"
	}
	return "server"
}

// Where names the Redis for log lines: the server, the master name and
// its sentinels, or the cluster's seeds.
func (s Settings) Where() string {
	switch s.Kind() {
	case "sentinel":
		return s.MasterName + " via sentinels " + strings.Join(s.Sentinels, ",")
	case "cluster":
		return "cluster " + strings.Join(s.Cluster, ",")
	}
	return s.Server
}

// newUniversal makes the go-redis client for the kind of Redis the
// settings name, with the options of Options. With sentinels the client
// asks them for the master and follows a failover; with a cluster it
// routes each key to its node (the keys of one script share a hash tag,
// so they are on one node) and follows slot moves.
func (s Settings) newUniversal() redis.UniversalClient {
	return redis.NewUniversalClient(s.Options())
}

// addrList splits a comma- or space-separated list of addresses.
func addrList(v string) []string {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

// shared is one process-wide client and the number of plugins using it.
type shared struct {
	key    string
	client *Client
	refs   int
}

var (
	mu      sync.Mutex
	clients = map[string]*shared{}
)

// Open returns the process's Redis client for the config directory of
// cfg, creating it on first use. ok is false, with a nil client and no
// error, when redis.ini does not exist. Every call for the same directory
// and settings returns the same client; each caller hands it back with
// Release when it closes.
//
// Creating the client does not contact Redis: go-redis dials lazily and
// reconnects by itself, so a server that is down at start, or goes away
// later, makes commands fail with an error but never panics.
func Open(cfg *config.Config) (*Client, bool, error) {
	s, ok, err := Load(cfg)
	if err != nil || !ok {
		return nil, false, err
	}
	quietLibrary()
	key := cfg.Dir + "\x00" + fmt.Sprintf("%+v", s)
	mu.Lock()
	defer mu.Unlock()
	sh := clients[key]
	if sh == nil {
		sh = &shared{key: key, client: newClient(s)}
		clients[key] = sh
	}
	sh.refs++
	return sh.client, true, nil
}

// ReleaseOnce is Release for a holder whose Close may run more than
// once: done records that this holder has released, so a second call
// leaves the count of the other holders of the shared client alone.
func ReleaseOnce(c *Client, done *atomic.Bool) error {
	if c == nil || done.Swap(true) {
		return nil
	}
	return Release(c)
}

// Release hands back a client obtained from Open. The last Release of
// a client closes it. Releasing a client redisx did not make, or one that
// is already closed, does nothing.
func Release(c *Client) error {
	if c == nil {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	for key, sh := range clients {
		if sh.client != c {
			continue
		}
		sh.refs--
		if sh.refs > 0 {
			return nil
		}
		delete(clients, key)
		c.addTo(&released)
		if err := c.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			return fmt.Errorf("redis: close: %w", err)
		}
		return nil
	}
	return nil
}
