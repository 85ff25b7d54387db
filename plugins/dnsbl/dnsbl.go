// Package dnsbl is the dnsbl plugin: it looks the client's address up in
// DNS blocklists (RFC 5782) and refuses a listed client, either at connect
// or at each RCPT. The lookup runs once per connection, in the connect
// hook, on the workpool; its verdict is kept as a connection note, so the
// RCPT hook is a note lookup that runs inline, and recorded as a finding
// for the results plugin.
package dnsbl

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/throttle"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "dnsbl"

// NoteKey is the connection note the plugin sets when a client is listed
// or its lookup failed. The value prints (fmt's %v) as "listed by ZONE"
// or "lookup failed"; a client found in no zone gets no note.
const NoteKey = "dnsbl"

// Defaults of dnsbl.ini.
const (
	DefaultLookupTimeout = 2 * time.Second
	DefaultCacheTTL      = 60 * time.Second
	DefaultCacheSize     = 10000
)

func init() { plugins.Register(Name, setup) }

// DNSBL holds the zones, the resolver and the verdict cache.
type DNSBL struct {
	zones         []string
	resolver      *net.Resolver
	lookupTimeout time.Duration
	atConnect     bool // reject = connect
	tempfail      bool // on_error = tempfail
	skipPrivate   bool
	cache         *cache // nil when caching is off

	// Failed lookups are logged at most once a minute.
	failLog throttle.Throttle
}

// setup reads dnsbl.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	zones := pc.Strings("", "zones", nil)
	resolver := pc.String("", "resolver", "")
	lookupTimeout := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	reject := pc.String("", "reject", "rcpt")
	onError := pc.String("", "on_error", "pass")
	ttl := pc.Duration("", "cache_ttl", DefaultCacheTTL)
	size := pc.Int("", "cache_size", DefaultCacheSize)
	skipPrivate := pc.Bool("", "skip_private", true)
	if err := pc.Check(); err != nil {
		return nil, err
	}

	bad := func(key, value, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", pc.File(), key, value, why)
	}
	p := &DNSBL{lookupTimeout: lookupTimeout, skipPrivate: skipPrivate, failLog: throttle.Throttle{Every: time.Minute}}
	if len(zones) == 0 {
		return nil, bad("zones", pc.String("", "zones", ""), "lists no zone (give at least one, such as zen.spamhaus.org)")
	}
	for _, z := range zones {
		z = strings.ToLower(strings.TrimSuffix(z, "."))
		if !validZone(z) {
			return nil, bad("zones", z, "is not a DNS zone name")
		}
		p.zones = append(p.zones, z)
	}
	if resolver == "" {
		p.resolver = net.DefaultResolver
	} else {
		ap, err := netip.ParseAddrPort(resolver)
		if err != nil || ap.Port() == 0 {
			return nil, bad("resolver", resolver, "is not an IP address and port (such as 127.0.0.1:53 or [::1]:53)")
		}
		p.resolver = resolverAt(ap.String())
	}
	if lookupTimeout <= 0 {
		return nil, bad("lookup_timeout", pc.String("", "lookup_timeout", ""), "must be more than 0")
	}
	if lookupTimeout >= pc.Timeout() {
		return nil, bad("lookup_timeout", pc.String("", "lookup_timeout", lookupTimeout.String()),
			fmt.Sprintf("must be less than timeout (%s), the chain's limit for the whole hook", pc.Timeout()))
	}
	switch strings.ToLower(reject) {
	case "connect":
		p.atConnect = true
	case "rcpt":
	default:
		return nil, bad("reject", reject, "is not one of connect, rcpt")
	}
	switch strings.ToLower(onError) {
	case "tempfail":
		p.tempfail = true
	case "pass":
	default:
		return nil, bad("on_error", onError, "is not one of pass, tempfail")
	}
	if ttl < 0 {
		return nil, bad("cache_ttl", pc.String("", "cache_ttl", ""), "must not be negative (0 turns the cache off)")
	}
	if size < 0 {
		return nil, bad("cache_size", pc.String("", "cache_size", ""), "must not be negative (0 turns the cache off)")
	}
	if ttl > 0 && size > 0 {
		p.cache = newCache(ttl, size)
	}
	return p, nil
}

// validZone reports whether z, lower-cased and without a trailing dot,
// looks like a zone name: dot-separated labels of 1 to 63 letters,
// digits, '-' or '_'.
func validZone(z string) bool {
	if z == "" || len(z) > 253 {
		return false
	}
	for label := range strings.SplitSeq(z, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Name implements plugins.Plugin.
func (*DNSBL) Name() string { return Name }

// Blocks implements plugins.Blocker: the connect hook waits for DNS; the
// RCPT hook reads a note.
func (*DNSBL) Blocks(h plugins.Hook) bool { return h == plugins.HookConnect }

// BlocksConn implements plugins.ConnBlocker: a skipped address or a
// cached verdict is answered on the event loop; only a real lookup goes to
// the workpool (a round trip through the pool costs about as much CPU as
// the rest of a whole session).
func (p *DNSBL) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	if h != plugins.HookConnect {
		return false
	}
	ip := c.RemoteIP.Unmap()
	if !ip.IsValid() || p.skipPrivate && private(ip) {
		return false
	}
	v, cached := p.cache.get(ip, time.Now())
	if cached {
		// Hand the verdict to Connect: the entry could expire in between,
		// and Connect must then not look up DNS on the event loop.
		c.SetNote(inlineKey, v)
	}
	return !cached
}

// inlineKey carries a cached verdict from BlocksConn to Connect.
const inlineKey = "dnsbl.inline"

// Connect implements plugins.ConnectHook. It runs on the workpool: it
// looks the client up (or finds it in the cache), notes a listing or a
// failed lookup, and with reject = connect answers at once.
func (p *DNSBL) Connect(c *plugins.Conn) plugins.Result {
	ip := c.RemoteIP.Unmap()
	if !ip.IsValid() || p.skipPrivate && private(ip) {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Message: "private address"})
		return plugins.NoOpinion()
	}
	v, inline := c.Note(inlineKey).(verdict)
	if inline {
		c.SetNote(inlineKey, nil)
	} else {
		v = p.check(ip, c.Log)
	}
	c.Record(v.finding())
	if v.clean() {
		return plugins.NoOpinion()
	}
	c.SetNote(NoteKey, v)
	if !p.atConnect {
		return plugins.NoOpinion()
	}
	return p.answer(plugins.HookConnect, ip, v)
}

// Rcpt implements plugins.RcptHook. With reject = rcpt it refuses every
// recipient of a listed client, so that the log shows whom the client
// tried to send mail from and to. It runs inline.
func (p *DNSBL) Rcpt(c *plugins.Conn, _ string) plugins.Result {
	if p.atConnect {
		return plugins.NoOpinion()
	}
	v, ok := c.Note(NoteKey).(verdict)
	if !ok {
		return plugins.NoOpinion()
	}
	return p.answer(plugins.HookRcpt, c.RemoteIP.Unmap(), v)
}

// answer turns a listing or a failed lookup into the client's reply.
func (p *DNSBL) answer(h plugins.Hook, ip netip.Addr, v verdict) plugins.Result {
	switch {
	case v.zone != "":
		// RFC 5321 3.1: 554 at the greeting refuses the session; 550 at
		// RCPT refuses the recipient.
		code := 550
		if h == plugins.HookConnect {
			code = 554
		}
		return plugins.Deny(code, "5.7.1", "Service unavailable; client ["+ip.String()+"] listed by "+v.zone)
	case v.failed && p.tempfail:
		// RFC 3463 X.4.3: directory (here: DNS) server failure.
		code := 451
		if h == plugins.HookConnect {
			code = 421
		}
		return plugins.DenySoft(code, "4.4.3", "DNSBL lookup failed, try again later")
	}
	return plugins.NoOpinion()
}

// check returns the verdict for ip from the cache or from DNS. Only
// definite answers are cached; a failed lookup is tried again by the
// next connection.
func (p *DNSBL) check(ip netip.Addr, log *zerolog.Logger) verdict {
	if v, ok := p.cache.get(ip, time.Now()); ok {
		return v
	}
	v, err := p.lookup(ip)
	if err != nil {
		p.logFailure(log, ip, err)
		return verdict{failed: true}
	}
	p.cache.put(ip, v, time.Now())
	return v
}

// logFailure logs a failed lookup, at most once a minute, with the number
// of failures left out since the last line: when the resolver is down,
// every connection fails the same way.
func (p *DNSBL) logFailure(log *zerolog.Logger, ip netip.Addr, err error) {
	if log == nil {
		return
	}
	if ok, held := p.failLog.Allow(time.Now()); ok {
		log.Warn().Str("plugin", Name).Str("ip", ip.String()).Int64("suppressed", held).
			Err(err).Msg("DNSBL lookup failed")
	}
}

// private reports whether ip is one that no public DNSBL lists: loopback,
// RFC 1918 and RFC 4193 private, link-local or unspecified.
func private(ip netip.Addr) bool {
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
}

// verdict is the outcome of looking one address up in every zone.
type verdict struct {
	zone   string // the zone that lists the address, "" for none
	failed bool   // no zone listed it and at least one lookup failed
}

func (v verdict) clean() bool { return v.zone == "" && !v.failed }

// finding is the verdict for the results plugin: pass, fail naming the
// zone, or err.
func (v verdict) finding() plugins.Finding {
	f := plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: v.String()}
	switch {
	case v.zone != "":
		f.Outcome = plugins.Fail
	case v.failed:
		f.Outcome = plugins.Err
	}
	return f
}

// String is how the note reads in logs.
func (v verdict) String() string {
	switch {
	case v.zone != "":
		return "listed by " + v.zone
	case v.failed:
		return "lookup failed"
	}
	return "not listed"
}

var (
	_ plugins.ConnectHook = (*DNSBL)(nil)
	_ plugins.RcptHook    = (*DNSBL)(nil)
	_ plugins.Blocker     = (*DNSBL)(nil)
	_ fmt.Stringer        = verdict{}
)
