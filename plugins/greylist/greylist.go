// Package greylist is the greylist plugin: the first time a client
// network, sender and recipient are seen together (a triplet), the
// recipient gets 451 4.7.1 and the client must come back after a delay; a
// real mail server does, most spam software does not. The triplets live
// in Redis, so every process and host that shares it agrees, and a retry
// that reaches another MX host of the site passes there.
//
// Clients that an earlier plugin vouched for (FCrDNS, SPF, a DNS
// allowlist; read from notes) are not greylisted, and a client whose
// retries passed auto_allow times is let through from then on.
package greylist

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"loopmx/config"
	"loopmx/internal/address"
	"loopmx/internal/redisx"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Name is the plugin's name in the plugins file; its settings are in
// greylist.ini.
const Name = "greylist"

// These are the defaults of greylist.ini.
const (
	DefaultDelay       = 5 * time.Minute
	DefaultWindow      = 48 * time.Hour
	DefaultExpire      = 35 * 24 * time.Hour
	DefaultAutoAllow   = 5
	DefaultIPv4Prefix  = 24
	DefaultIPv6Prefix  = 64
	DefaultSeparator   = "+"
	DefaultRedisPrefix = "greylist:"
)

// DefaultSkip is the default of skip: the notes that vouch for a client.
// rdns is plugins.RDNSNote, the verified (forward-confirmed) reverse DNS
// name; spf and dnswl are the notes the SPF and DNS allowlist plugins set
// (greylist reads the transaction's note first, then the connection's).
const DefaultSkip = plugins.RDNSNote + ", spf=pass, dnswl=listed"

// clock is the time the plugin judges by; tests move it.
var clock = time.Now

func init() { plugins.Register(Name, setup) }

// Greylist is the plugin.
type Greylist struct {
	delay, window, expire time.Duration
	autoAllow             int
	v4, v6                int
	separators            string
	skip                  []skipRule
	local                 address.Domains // host_list; nil when it is empty
	fail                  redisx.Fallback
	prefix                string
	client                *redisx.Client
	closed                atomic.Bool
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
	g := &Greylist{
		delay:      pc.Duration("", "delay", DefaultDelay),
		window:     pc.Duration("", "window", DefaultWindow),
		expire:     pc.Duration("", "expire", DefaultExpire),
		autoAllow:  pc.Int("", "auto_allow", DefaultAutoAllow),
		v4:         pc.Int("", "ipv4_prefix", DefaultIPv4Prefix),
		v6:         pc.Int("", "ipv6_prefix", DefaultIPv6Prefix),
		separators: pc.String("", "separator", DefaultSeparator),
		prefix:     pc.String("", "redis_prefix", DefaultRedisPrefix),
		fail:       redisx.Fallback{Plugin: Name, Down: redisx.NewDownLogger(Name)},
	}
	skip := pc.String("", "skip", DefaultSkip)
	fail := strings.ToLower(pc.String("", "fail", "open"))
	if err := pc.Check(); err != nil {
		return nil, err
	}
	bad := func(key, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", pc.File(), key, pc.String("", key, ""), why)
	}
	switch {
	case !haveRedis:
		return nil, fmt.Errorf("config: %s: greylist keeps its triplets in Redis and needs %s in the config directory", pc.File(), redisx.File)
	case g.delay <= 0:
		return nil, bad("delay", "must be more than 0")
	case g.window <= g.delay:
		return nil, bad("window", "must be longer than delay ("+g.delay.String()+"): a retry must fit between them")
	case g.expire < time.Second:
		return nil, bad("expire", "is out of range (minimum 1s)")
	case g.autoAllow < 0:
		return nil, bad("auto_allow", "is out of range (minimum 0, which never allows a client as a whole)")
	case g.v4 < 8 || g.v4 > 32:
		return nil, bad("ipv4_prefix", "is out of range 8..32")
	case g.v6 < 16 || g.v6 > 128:
		return nil, bad("ipv6_prefix", "is out of range 16..128")
	case strings.ContainsAny(g.separators, "@\" \t"):
		return nil, bad("separator", "holds '@', a quote or a space")
	case g.prefix == "":
		return nil, bad("redis_prefix", "is empty")
	}
	switch fail {
	case "open":
	case "closed":
		g.fail.Closed = true
	default:
		return nil, bad("fail", "is neither open nor closed")
	}
	if g.skip, err = parseSkip(skip); err != nil {
		return nil, bad("skip", err.Error())
	}
	if err := address.CheckOrder(cfg, Name); err != nil {
		return nil, err
	}
	if len(cfg.HostList) > 0 {
		g.local = address.NewDomains(cfg.HostList)
	}
	if g.client, _, err = redisx.Open(cfg); err != nil {
		return nil, err
	}
	return g, nil
}

// Name implements plugins.Plugin.
func (*Greylist) Name() string { return Name }

// Blocks implements plugins.Blocker: the rcpt hook asks Redis.
func (*Greylist) Blocks(h plugins.Hook) bool { return h == plugins.HookRcpt }

// skippedNote marks a transaction whose client an earlier plugin vouched
// for; its value is the rule that matched, recorded once.
const skippedNote = "greylist.skipped"

// BlocksCall implements plugins.CallBlocker: a recipient that is not
// greylisted (a client vouched for, a domain not ours) and every
// recipient while Redis is down or busy are answered on the event loop.
func (g *Greylist) BlocksCall(c *plugins.Conn, call *plugins.Call) bool {
	if !g.applies(c, call.Arg) {
		return false
	}
	if err := g.client.Ready(c.Log); err != nil {
		g.fail.Defer(c, err)
		return false
	}
	return true
}

// applies reports whether to is to be greylisted: inside a transaction,
// a domain of host_list (a relay attempt is left to the relay check), a
// client no earlier plugin vouched for.
func (g *Greylist) applies(c *plugins.Conn, to string) bool {
	if c.Tx == nil {
		return false
	}
	if _, dom, ok := address.Split(to); !ok || g.local != nil && !g.local.Has(dom) {
		return false
	}
	return g.vouched(c) == ""
}

// Rcpt implements plugins.RcptHook: no opinion for a triplet whose delay
// has passed (or a client allowed as a whole), 451 4.7.1 otherwise.
func (g *Greylist) Rcpt(c *plugins.Conn, to string) plugins.Result {
	down := g.fail.Deferred(c)
	if !g.applies(c, to) {
		g.recordSkip(c)
		return plugins.NoOpinion()
	}
	if down != nil {
		return g.fail.Answer(c, to, down)
	}
	v, err := g.check(c, to)
	if err != nil {
		return g.fail.Answer(c, to, err)
	}
	g.fail.Down.Up(c.Log)
	switch v.state {
	case stateWait:
		secs := int64((v.n + 999) / 1000) // ms, rounded up
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Word: "greylisted", Message: to + ": retry in " + strconv.FormatInt(secs, 10) + "s"})
		return plugins.Result{Action: plugins.TempFail, Reply: smtpproto.Reply{Code: 451, Enhanced: "4.7.1",
			Text: "Greylisted, please try again in " + strconv.FormatInt(max(secs, 1), 10) + " seconds"}}
	case stateFirstPass:
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: to + ": retried after the delay"})
	case stateClient:
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: "client allowed after " + strconv.FormatInt(v.n, 10) + " retries"})
	default:
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: to + ": known"})
	}
	return plugins.NoOpinion()
}

// recordSkip records, once per transaction, that a vouched-for client was
// not greylisted.
func (g *Greylist) recordSkip(c *plugins.Conn) {
	if c.Tx == nil || c.Tx.Note(skippedNote) != nil {
		return
	}
	if rule := g.vouched(c); rule != "" {
		c.Tx.SetNote(skippedNote, rule)
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Message: "client passed " + rule})
	}
}

// The states the script answers.
const (
	stateWait      = 0 // greylisted: n is the wait in ms
	stateKnown     = 1 // a triplet that passed before
	stateClient    = 2 // the client is allowed as a whole: n is its passes
	stateFirstPass = 3 // the retry came after the delay: n is the client's passes
)

// checkScript judges one triplet in one round trip.
//
// A new triplet is stored with the time it was first seen, for window
// (one whose window has passed by the caller's clock starts again); a
// retry before delay has passed is answered with the time left; the
// first one after it turns the triplet into "pass", kept for expire
// after its last use, and counts one pass for the client network. A
// client with auto_allow passes is let through for any triplet; its
// count, too, lives expire after its last use.
//
// KEYS[1] the triplet, KEYS[2] the client network. ARGV[1] now (Unix
// ms), ARGV[2] delay, ARGV[3] window, ARGV[4] expire (all ms), ARGV[5]
// auto_allow (0: never). It returns {state, n}.
var checkScript = redis.NewScript(`
local allow = tonumber(ARGV[5])
if allow > 0 then
  local passes = tonumber(redis.call('GET', KEYS[2]) or '0')
  if passes >= allow then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
    return {2, passes}
  end
end
local now = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[1])
if v == 'pass' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, 0}
end
if not v or now - tonumber(v) > tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return {0, tonumber(ARGV[2])}
end
local wait = tonumber(v) + tonumber(ARGV[2]) - now
if wait > 0 then
  return {0, wait}
end
redis.call('SET', KEYS[1], 'pass', 'PX', ARGV[4])
local passes = 0
if allow > 0 then
  passes = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {3, passes}
`)

// verdict is the script's answer.
type verdict struct {
	state int64
	n     int64
}

// check asks Redis about the triplet of c's client, sender and to.
func (g *Greylist) check(c *plugins.Conn, to string) (verdict, error) {
	network := g.network(c.RemoteIP)
	sender := address.Sender(c.Tx.From, g.separators)
	if sender == "" {
		sender = "<>"
	}
	local, dom, _ := address.Split(strings.ToLower(to))
	rcpt := address.Base(local, g.separators) + "@" + dom
	// The braces are a Redis Cluster hash tag: both keys of the script
	// hash by the network alone, so they live on one node.
	tag := "{" + network + "}"
	keys := []string{g.prefix + "t:" + tag + "|" + sender + "|" + rcpt, g.prefix + "c:" + tag}
	var v verdict
	err := g.client.Do(c.Log, func(ctx context.Context) error {
		res, err := checkScript.Run(ctx, g.client, keys, clock().UnixMilli(),
			g.delay.Milliseconds(), g.window.Milliseconds(), g.expire.Milliseconds(), g.autoAllow).Int64Slice()
		if err == nil && len(res) != 2 {
			err = fmt.Errorf("greylist script returned %v", res)
		}
		if err == nil {
			v = verdict{state: res[0], n: res[1]}
		}
		return err
	})
	if err != nil {
		return verdict{}, err // after ErrSlow, v belongs to the call still running
	}
	return v, nil
}

// network is the client's address cut to its network: the /24 of an
// IPv4 address (a pool of outgoing servers retries from another address
// of the same network), the /64 of an IPv6 one, as the prefixes say.
func (g *Greylist) network(ip netip.Addr) string {
	ip = ip.Unmap()
	bits := g.v6
	if ip.Is4() {
		bits = g.v4
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return "unknown"
	}
	return p.String()
}

// Close implements plugins.Closer: the Redis client is handed back once.
func (g *Greylist) Close() error {
	return redisx.ReleaseOnce(g.client, &g.closed)
}

var (
	_ plugins.RcptHook    = (*Greylist)(nil)
	_ plugins.Blocker     = (*Greylist)(nil)
	_ plugins.CallBlocker = (*Greylist)(nil)
	_ plugins.Closer      = (*Greylist)(nil)
)
