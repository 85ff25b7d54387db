// Package rcptvalid is the rcpt_to.valid plugin: it knows which
// recipients exist, from a file in the config directory and from Redis,
// and refuses the others at RCPT with 550 5.1.1. It never accepts: a
// recipient it knows goes on to the plugins after it (greylist, the relay
// check of rcpt_to.in_host_list), so that it refuses only and cannot make
// the server relay.
//
// The file is read when the chain is built, at start and on every reload
// (HUP); Redis is asked at the time of each RCPT. What the file answers
// runs inline on the event loop; only a recipient whose answer is in
// Redis goes to the workpool.
package rcptvalid

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"loopmx/config"
	"loopmx/internal/address"
	"loopmx/internal/redisx"
	"loopmx/internal/throttle"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file; its settings are in
// rcpt_to.valid.ini.
const Name = "rcpt_to.valid"

// These are the defaults of rcpt_to.valid.ini.
const (
	DefaultFile        = "valid_recipients"
	DefaultSeparator   = "+"
	DefaultRedisPrefix = "valid_rcpt:"
)

func init() { plugins.Register(Name, setup) }

// Valid is the plugin.
type Valid struct {
	list       *list
	separators string
	// redisDomains are the domains Redis is asked about (host_list);
	// empty without Redis.
	redisDomains address.Domains
	client       *redisx.Client // nil without Redis
	prefix       string
	fail         redisx.Fallback
	wrongType    throttle.Throttle // "wrong type" lines, at most one a minute
	closed       atomic.Bool
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	_, haveRedis, err := redisx.Load(cfg)
	if err != nil {
		return nil, err
	}
	file := pc.String("", "file", DefaultFile)
	seps := pc.String("", "separator", DefaultSeparator)
	useRedis := pc.Bool("", "redis", false)
	prefix := pc.String("", "redis_prefix", DefaultRedisPrefix)
	fail := strings.ToLower(pc.String("", "fail", "open"))
	if err := pc.Check(); err != nil {
		return nil, err
	}
	bad := func(key, value, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", pc.File(), key, value, why)
	}
	if strings.ContainsAny(seps, "@\" \t") {
		return nil, bad("separator", seps, "holds '@', a quote or a space; give the characters that start a sub-address tag, such as +")
	}
	p := &Valid{separators: seps, prefix: prefix, wrongType: throttle.Throttle{Every: time.Minute},
		fail: redisx.Fallback{Plugin: Name, Down: redisx.NewDownLogger(Name)}}
	switch fail {
	case "open":
	case "closed":
		p.fail.Closed = true
	default:
		return nil, bad("fail", fail, "is neither open nor closed")
	}
	if useRedis && !haveRedis {
		return nil, bad("redis", "true", "needs "+redisx.File+" in the config directory")
	}
	if useRedis && len(cfg.HostList) == 0 {
		return nil, bad("redis", "true", "is of no use with an empty host_list: Redis is asked only about the domains of host_list")
	}
	if useRedis && prefix == "" {
		return nil, bad("redis_prefix", prefix, "is empty; the keys would be bare domain names")
	}
	if file == "" && !useRedis {
		return nil, bad("file", file, "is empty and redis is false: there is nothing to check recipients against")
	}
	if useRedis {
		p.redisDomains = address.NewDomains(cfg.HostList)
	}
	p.list = &list{domains: map[string]*domain{}}
	if file != "" {
		path := pc.Path("", "file", DefaultFile)
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("config: %s: [main] file: %w", pc.File(), err)
		}
		if p.list, err = readList(cfg, path, file, seps); err != nil {
			return nil, err
		}
	}
	if err := p.checkAgainst(cfg, file); err != nil {
		return nil, err
	}
	if useRedis {
		if p.client, _, err = redisx.Open(cfg); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// checkAgainst holds the file to the rest of the config: the plugin must
// come before rcpt_to.in_host_list, every domain of the file must be in
// host_list when that plugin runs (it would refuse the domain's
// recipients as relaying), and a domain alias must lead to a domain that
// the file or Redis covers.
func (p *Valid) checkAgainst(cfg *config.Config, file string) error {
	if err := address.CheckOrder(cfg, Name); err != nil {
		return err
	}
	hosts := address.NewDomains(cfg.HostList)
	relayCheck := address.Listed(cfg, address.InHostList)
	for name, d := range p.list.domains {
		if relayCheck && !hosts.Has(name) {
			return fmt.Errorf("config: %s:%d: domain %s is not in host_list: %s would refuse its recipients as relaying; add it there",
				file, d.line, name, address.InHostList)
		}
		if d.alias != "" && p.list.domains[d.alias] == nil && !p.redisDomains.Has(d.alias) {
			return fmt.Errorf("config: %s:%d: @%s is an alias of %s, which no line of the file lists and Redis is not asked about",
				file, d.line, name, d.alias)
		}
	}
	return nil
}

// Name implements plugins.Plugin.
func (*Valid) Name() string { return Name }

// Blocks implements plugins.Blocker: the rcpt hook may ask Redis.
func (p *Valid) Blocks(h plugins.Hook) bool { return p.client != nil && h == plugins.HookRcpt }

// BlocksCall implements plugins.CallBlocker: only a recipient that the
// file cannot answer goes to the workpool, and only while Redis can take
// the call; everything else is answered on the event loop.
func (p *Valid) BlocksCall(c *plugins.Conn, call *plugins.Call) bool {
	if p.list.lookup(call.Arg, p.separators, p.redisDomains).verdict != askRedis {
		return false
	}
	if err := p.client.Ready(c.Log); err != nil {
		p.fail.Defer(c, err)
		return false
	}
	return true
}

// Rcpt implements plugins.RcptHook: no opinion for a recipient that
// exists or that no list covers, 550 5.1.1 for one that does not exist.
func (p *Valid) Rcpt(c *plugins.Conn, to string) plugins.Result {
	down := p.fail.Deferred(c)
	q := p.list.lookup(to, p.separators, p.redisDomains)
	if q.verdict == askRedis {
		err := down
		if err == nil {
			q.verdict, err = p.ask(c, q)
		}
		if err != nil {
			return p.unavailable(c, to, err)
		}
		p.fail.Down.Up(c.Log)
	}
	switch q.verdict {
	case known:
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: to})
	case unknown:
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: to + ": unknown"})
		return plugins.Deny(550, "5.1.1", "<"+to+">: Recipient address rejected: User unknown")
	}
	return plugins.NoOpinion()
}

// lookupScript asks a domain's key about the recipient's local parts in
// one round trip. The key is a set of local parts, or a hash whose
// fields are the local parts (the values, alias targets say, are not
// read); a member or field "@" makes it a catch-all.
//
// KEYS[1] the domain's key; ARGV the local part, the local part without
// its tag, "@". It returns 1 when one is there, 0 when none is, -1 when
// the key does not exist, -2 when it is of another type.
var lookupScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return -1 end
if t ~= 'set' and t ~= 'hash' then return -2 end
for _, m in ipairs(ARGV) do
  local hit
  if t == 'set' then hit = redis.call('SISMEMBER', KEYS[1], m) else hit = redis.call('HEXISTS', KEYS[1], m) end
  if hit == 1 then return 1 end
end
return 0
`)

// errWrongType is a domain key that is neither a set nor a hash.
var errWrongType = errors.New("the key is neither a set nor a hash")

// ask looks q up in Redis. A domain without a key is one Redis does not
// cover: unmanaged, unless the file lists the domain.
func (p *Valid) ask(c *plugins.Conn, q query) (verdict, error) {
	key := p.prefix + q.domain
	args := []any{q.local, "@"}
	if q.base != q.local {
		args = []any{q.local, q.base, "@"}
	}
	var n int64
	err := p.client.Do(c.Log, func(ctx context.Context) (err error) {
		n, err = lookupScript.Run(ctx, p.client, []string{key}, args...).Int64()
		return err
	})
	switch {
	case err != nil:
		return 0, err // after ErrSlow, n belongs to the call still running
	case n == 1:
		return known, nil
	case n == -2:
		return 0, fmt.Errorf("%s: %w", key, errWrongType)
	case n == -1 && !q.listed:
		return unmanaged, nil
	}
	return unknown, nil
}

// unavailable answers a recipient that only Redis could judge while
// Redis failed, is down or busy: no opinion with fail = open, 451 4.3.0
// with fail = closed. A key of the wrong type is the operator's mistake,
// logged as an error at most once a minute and answered the same way.
func (p *Valid) unavailable(c *plugins.Conn, to string, err error) plugins.Result {
	if !errors.Is(err, errWrongType) {
		return p.fail.Answer(c, to, err)
	}
	if ok, held := p.wrongType.Allow(time.Now()); ok && c.Log != nil {
		c.Log.Error().Str("plugin", Name).Err(err).Int64("held", held).Msg("a recipient key in redis is neither a set nor a hash")
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Err, Message: to + ": redis key of the wrong type"})
	return p.fail.Result()
}

// Close implements plugins.Closer: the Redis client is handed back once.
func (p *Valid) Close() error {
	return redisx.ReleaseOnce(p.client, &p.closed)
}

var (
	_ plugins.RcptHook    = (*Valid)(nil)
	_ plugins.Blocker     = (*Valid)(nil)
	_ plugins.CallBlocker = (*Valid)(nil)
	_ plugins.Closer      = (*Valid)(nil)
)
