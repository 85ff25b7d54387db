// Package rcptverify is the rcpt_to.verify plugin: it asks the next hop
// (the backend of queue/smtp_forward or queue/lmtp) at RCPT time whether
// it would take mail for the recipient, with MAIL, RCPT and RSET over the
// forwarder's pooled sessions, and refuses the recipients it refuses
// (Postfix's reject_unverified_recipient, Haraka's call-ahead). Answers
// are cached, positive and negative for their own times, in memory and,
// when Redis is configured, in Redis for every process and host.
//
// Like rcpt_to.valid it never accepts: a verified recipient goes on to
// the plugins after it, and rcpt_to.in_host_list keeps the last word on
// relaying.
package rcptverify

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"loopmx/config"
	"loopmx/internal/address"
	"loopmx/internal/nexthop"
	"loopmx/internal/redisx"
	"loopmx/internal/throttle"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file; its settings are in
// rcpt_to.verify.ini.
const Name = "rcpt_to.verify"

// These are the defaults of rcpt_to.verify.ini.
const (
	DefaultNextHop     = "queue/smtp_forward"
	DefaultPositiveTTL = 24 * time.Hour
	DefaultNegativeTTL = time.Hour
	DefaultCacheSize   = 100000
	DefaultBudget      = 5 * time.Second
	DefaultRedisPrefix = "verify:"
)

// nextHops are the plugins whose next hop can be probed, and how they
// speak to it.
var nextHops = map[string]nexthop.Protocol{"queue/smtp_forward": nexthop.SMTP, "queue/lmtp": nexthop.LMTP}

func init() { plugins.Register(Name, setup) }

// Verify is the plugin.
type Verify struct {
	prober         *nexthop.Prober
	domains        address.Domains
	sender         string
	posTTL, negTTL time.Duration
	budget         time.Duration
	failOpen       bool
	mem            *memCache
	client         *redisx.Client // nil without Redis
	prefix         string
	down           *redisx.DownLogger
	probeLog       throttle.Throttle // "could not verify" lines
	closed         atomic.Bool
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
	hop := pc.String("", "next_hop", DefaultNextHop)
	domains := pc.Strings("", "domains", nil)
	v := &Verify{
		sender:   pc.String("", "sender", ""),
		posTTL:   pc.Duration("", "positive_ttl", DefaultPositiveTTL),
		negTTL:   pc.Duration("", "negative_ttl", DefaultNegativeTTL),
		budget:   pc.Duration("", "budget", DefaultBudget),
		prefix:   pc.String("", "redis_prefix", DefaultRedisPrefix),
		down:     redisx.NewDownLogger(Name),
		probeLog: throttle.Throttle{Every: time.Minute},
	}
	size := pc.Int("", "cache_size", DefaultCacheSize)
	useRedis := pc.Bool("", "redis", haveRedis)
	fail := strings.ToLower(pc.String("", "fail", "closed"))
	if err := pc.Check(); err != nil {
		return nil, err
	}
	bad := func(key, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", pc.File(), key, pc.String("", key, ""), why)
	}
	proto, ok := nextHops[hop]
	switch {
	case !ok:
		return nil, bad("next_hop", "is not a plugin with a next hop (queue/smtp_forward, queue/lmtp)")
	case v.sender != "" && (!strings.Contains(v.sender, "@") || strings.ContainsAny(v.sender, "<> \t")):
		return nil, bad("sender", "is not an address (leave it empty for the null sender <>)")
	case v.posTTL < 0:
		return nil, bad("positive_ttl", "must not be negative (0 caches no positive answer)")
	case v.negTTL < 0:
		return nil, bad("negative_ttl", "must not be negative (0 caches no negative answer)")
	case size < 0:
		return nil, bad("cache_size", "must not be negative (0 keeps no answer in memory)")
	case v.budget <= 0:
		return nil, bad("budget", "must be more than 0")
	case v.budget >= pc.Timeout():
		return nil, bad("budget", fmt.Sprintf("must be less than timeout (%s), the chain's limit for the whole hook", pc.Timeout()))
	case useRedis && !haveRedis:
		return nil, bad("redis", "needs "+redisx.File+" in the config directory")
	case useRedis && v.prefix == "":
		return nil, bad("redis_prefix", "is empty")
	}
	switch fail {
	case "closed":
	case "open":
		v.failOpen = true
	default:
		return nil, bad("fail", "is neither open nor closed")
	}
	if len(domains) == 0 {
		domains = cfg.HostList
	}
	if len(domains) == 0 {
		return nil, bad("domains", "is empty and so is host_list: there is no domain whose recipients to verify")
	}
	v.domains = address.NewDomains(domains)
	if err := address.CheckOrder(cfg, Name); err != nil {
		return nil, err
	}
	s, err := nexthop.LoadSettings(cfg, hop)
	if err != nil {
		return nil, fmt.Errorf("config: %s: [main] next_hop: %q: %w", pc.File(), hop, err)
	}
	v.mem = newMemCache(size)
	if useRedis {
		if v.client, _, err = redisx.Open(cfg); err != nil {
			return nil, err
		}
	}
	v.prober = nexthop.NewProber(hop, proto, s)
	return v, nil
}

// Name implements plugins.Plugin.
func (*Verify) Name() string { return Name }

// Blocks implements plugins.Blocker: the rcpt hook may probe the next
// hop or ask Redis.
func (*Verify) Blocks(h plugins.Hook) bool { return h == plugins.HookRcpt }

// inlineNote carries, from BlocksCall to Rcpt, an answer found in memory
// (an answer), or the verdict that nobody can be asked (undecided).
const inlineNote = "rcpt_to.verify.inline"

// undecided is inlineNote's value when neither Redis nor the next hop
// can be asked now.
type undecided struct{}

// BlocksCall implements plugins.CallBlocker: a recipient outside the
// verified domains, one whose answer is in memory, and every one while
// the next hop's breakers are open and Redis cannot be asked are answered
// on the event loop.
func (v *Verify) BlocksCall(c *plugins.Conn, call *plugins.Call) bool {
	if !v.applies(c, call.Arg) {
		return false
	}
	if a, ok := v.mem.get(strings.ToLower(call.Arg), time.Now()); ok {
		c.SetNote(inlineNote, a)
		return false
	}
	if !v.prober.Ready() && (v.client == nil || v.client.Ready(c.Log) != nil) {
		c.SetNote(inlineNote, undecided{})
		return false
	}
	return true
}

// applies reports whether to is to be verified: inside a transaction,
// in one of the domains.
func (v *Verify) applies(c *plugins.Conn, to string) bool {
	_, dom, ok := address.Split(to)
	return ok && c.Tx != nil && v.domains.Has(dom)
}

// Rcpt implements plugins.RcptHook: no opinion for a recipient the next
// hop takes, 550 5.1.1 for one it refuses, 450 4.1.1 when it cannot be
// asked (with fail = open, no opinion).
func (v *Verify) Rcpt(c *plugins.Conn, to string) plugins.Result {
	inline := c.Note(inlineNote)
	if inline != nil {
		c.SetNote(inlineNote, nil) // BlocksCall's verdict is for this call only
	}
	if !v.applies(c, to) {
		return plugins.NoOpinion()
	}
	key := strings.ToLower(to)
	now := time.Now()
	switch a := inline.(type) {
	case answer:
		return v.answer(c, to, a.ok, "cached")
	case undecided:
		return v.undecided(c, to, "next hop down")
	}
	if a, ok := v.mem.get(key, now); ok {
		return v.answer(c, to, a.ok, "cached")
	}
	if v.client != nil {
		if a, ok := v.redisGet(c, key, now); ok {
			v.mem.put(key, a, now)
			return v.answer(c, to, a.ok, "cached in redis")
		}
	}
	if !v.prober.Ready() {
		return v.undecided(c, to, "next hop down")
	}
	smtputf8 := c.Tx.SMTPUTF8 && !ascii(to)
	res, err := v.prober.Probe(c.Log, v.sender, to, smtputf8, now.Add(v.budget))
	switch {
	case errors.Is(err, nexthop.ErrNoSMTPUTF8):
		// The next hop cannot take this recipient's mail at all; the
		// queue plugin says so after the message (550 5.6.7).
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Message: to + ": the next hop lacks SMTPUTF8"})
		return plugins.NoOpinion()
	case err != nil:
		v.logProbe(c, to, "the next hop could not be asked about a recipient", err.Error())
		return v.undecided(c, to, "next hop unreachable")
	case res.Mail.Class() != 2:
		v.logProbe(c, to, "the next hop refused the probe's sender (sender in rcpt_to.verify.ini)", res.Mail.Error())
		return v.undecided(c, to, "next hop refused the sender")
	case res.Rcpt.Class() == 2:
		v.store(c, key, true, v.posTTL, now)
		return v.answer(c, to, true, "verified")
	case res.Rcpt.Class() == 5:
		v.store(c, key, false, v.negTTL, now)
		return v.answer(c, to, false, "refused by the next hop: "+res.Rcpt.Error())
	}
	return v.undecided(c, to, "next hop said "+res.Rcpt.Error())
}

// store keeps an answer for ttl, in memory and in Redis.
func (v *Verify) store(c *plugins.Conn, key string, ok bool, ttl time.Duration, now time.Time) {
	if ttl <= 0 {
		return
	}
	a := answer{ok: ok, expires: now.Add(ttl).UnixMilli()}
	v.mem.put(key, a, now)
	if v.client != nil {
		v.redisPut(c, key, a, ttl)
	}
}

// answer turns a known answer into the client's reply.
func (v *Verify) answer(c *plugins.Conn, to string, ok bool, how string) plugins.Result {
	if ok {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: to + ": " + how})
		return plugins.NoOpinion()
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: to + ": " + how})
	return plugins.Deny(550, "5.1.1", "<"+to+">: Recipient address rejected: undeliverable address")
}

// undecided answers a recipient nobody could judge: 450 4.1.1 (RFC 3463
// X.1.1, the address could not be confirmed), or no opinion with
// fail = open. Nothing is cached.
func (v *Verify) undecided(c *plugins.Conn, to, why string) plugins.Result {
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Err, Message: to + ": " + why})
	if v.failOpen {
		return plugins.NoOpinion()
	}
	return plugins.DenySoft(450, "4.1.1", "<"+to+">: Recipient address not verified, try again later")
}

// logProbe logs a probe that gave no answer, at most once a minute.
func (v *Verify) logProbe(c *plugins.Conn, to, msg, detail string) {
	if c.Log == nil {
		return
	}
	if ok, held := v.probeLog.Allow(time.Now()); ok {
		c.Log.Warn().Str("plugin", Name).Str("rcpt", to).Str("error", detail).Int64("held", held).Msg(msg)
	}
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// Close implements plugins.Closer: the pool and the Redis client are
// handed back, once.
func (v *Verify) Close() error {
	if v.closed.Swap(true) {
		return nil
	}
	v.prober.Close()
	return redisx.Release(v.client)
}

var (
	_ plugins.RcptHook    = (*Verify)(nil)
	_ plugins.Blocker     = (*Verify)(nil)
	_ plugins.CallBlocker = (*Verify)(nil)
	_ plugins.Closer      = (*Verify)(nil)
)
