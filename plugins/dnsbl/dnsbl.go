// Package dnsbl is the dnsbl plugin: it looks the client's address up in
// DNS blocklists and allowlists (RFC 5782), adds up the weights of the
// listings it finds, and refuses a client whose score reaches the
// threshold, either at connect or at each RCPT. The lookup runs once per
// connection, in the connect hook: on the event loop when the shared DNS
// cache (internal/dnsx) holds every zone's answer, otherwise on the
// workpool. Its verdict is kept as a connection note, so the RCPT hook is
// a note lookup that runs inline, and recorded as a finding for the
// results plugin.
package dnsbl

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"loopmx/config"
	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "dnsbl"

// NoteKey is the connection note the plugin sets when a zone lists the
// client or its lookup failed. The value prints (fmt's %v) as "listed by
// ZONE", "lookup failed" or, with weights, the score; a client found in
// no zone gets no note.
const NoteKey = "dnsbl"

// DNSWLNote is the connection note the plugin sets when zones with a
// negative weight (allowlists) list the client: "listed by ZONE, ...".
// Other plugins read it as a client vouched for (greylist's default skip
// rule dnswl=listed).
const DNSWLNote = "dnswl"

// DefaultLookupTimeout is lookup_timeout's default.
const DefaultLookupTimeout = 2 * time.Second

func init() { plugins.Register(Name, setup) }

// DNSBL holds the zones and the resolver.
type DNSBL struct {
	zones       []*zone
	threshold   int
	negative    int  // the sum of every negative weight
	weighted    bool // a weight or the threshold is not 1: messages show the score
	atConnect   bool // reject = connect
	tempfail    bool // on_error = tempfail
	skipPrivate bool

	*dnsx.Lookups // the resolver, lookup_timeout, the failure log; Close
}

// setup reads dnsbl.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	items := pc.Strings("", "zones", nil)
	threshold := pc.Int("", "threshold", 1)
	resolver := pc.String("", "resolver", "")
	lookupTimeout := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	atConnect := pc.Choice("", "reject", "rcpt", "connect", "rcpt") == "connect"
	tempfail := pc.Choice("", "on_error", "pass", "pass", "tempfail") == "tempfail"
	skipPrivate := pc.Bool("", "skip_private", true)
	bad := func(key, value, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", pc.File(), key, value, why)
	}
	// The verdict cache of old is the shared DNS cache now.
	const unset = "\x00"
	for _, key := range []string{"cache_ttl", "cache_size"} {
		if v := pc.String("", key, unset); v != unset {
			return nil, bad(key, v, "is no longer a dnsbl setting: answers are cached by the shared DNS layer for their TTL (dns.ini: min_ttl, max_ttl, cache_size)")
		}
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}

	p := &DNSBL{threshold: threshold, skipPrivate: skipPrivate, atConnect: atConnect, tempfail: tempfail}
	if len(items) == 0 {
		return nil, bad("zones", pc.String("", "zones", ""), "lists no zone (give at least one, such as zen.spamhaus.org)")
	}
	if p.zones, err = parseZones(items); err != nil {
		return nil, fmt.Errorf("config: %s: [main] zones: %w", pc.File(), err)
	}
	if threshold < 1 {
		return nil, bad("threshold", pc.String("", "threshold", ""), "must be 1 or more (a threshold of 0 would refuse every client)")
	}
	p.weighted = threshold != 1
	for _, z := range p.zones {
		p.negative += z.negative
		for _, e := range z.entries {
			p.weighted = p.weighted || e.weight != 1
		}
	}
	var servers []string
	if resolver != "" {
		addr, ok := dnsx.ParseServer(resolver)
		if !ok {
			return nil, bad("resolver", resolver, "is not an IP address with an optional port (such as 127.0.0.1, 127.0.0.1:5353 or [::1]:53)")
		}
		servers = []string{addr}
	}
	if err := dnsx.CheckBudget(pc, lookupTimeout); err != nil {
		return nil, err
	}
	s, err := dnsx.Load(cfg)
	if err != nil {
		return nil, err
	}
	if servers != nil {
		s.Servers = servers
	}
	p.Lookups = dnsx.NewLookups(dnsx.Shared(cfg.Dir, s), lookupTimeout, Name, "DNSBL lookup failed")
	return p, nil
}

// Name implements plugins.Plugin.
func (*DNSBL) Name() string { return Name }

// Blocks implements plugins.Blocker: the connect hook waits for DNS; the
// RCPT hook reads a note.
func (*DNSBL) Blocks(h plugins.Hook) bool { return h == plugins.HookConnect }

// BlocksConn implements plugins.ConnBlocker: a skipped address, or one
// whose answers the DNS cache holds for every zone, is judged on the
// event loop; only a lookup that needs the network goes to the workpool
// (a round trip through the pool costs about as much CPU as the rest of
// a whole session).
func (p *DNSBL) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	if h != plugins.HookConnect {
		return false
	}
	ip := c.RemoteIP.Unmap()
	if !ip.IsValid() || p.skipPrivate && private(ip) {
		return false
	}
	return dnsx.Inline(p.Lookups, c, func(r *dnsx.Resolver) (verdict, error) { return p.cached(r, ip) })
}

// Connect implements plugins.ConnectHook. It runs on the workpool, or
// inline with the verdict BlocksConn found in the cache: it looks the
// client up, notes a listing or a failed lookup, and with reject =
// connect answers at once.
func (p *DNSBL) Connect(c *plugins.Conn) plugins.Result {
	ip := c.RemoteIP.Unmap()
	if !ip.IsValid() || p.skipPrivate && private(ip) {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Message: "private address"})
		return plugins.NoOpinion()
	}
	v, inline := dnsx.Handed[verdict](p.Lookups, c)
	if !inline {
		v = p.lookup(p.DNS, ip)
		if v.err != nil {
			p.LogFailure(c.Log, "ip", ip.String(), v.err)
		}
	}
	c.Record(v.finding())
	if len(v.allowedBy) > 0 {
		c.SetNote(DNSWLNote, "listed by "+strings.Join(v.allowedBy, ", "))
	}
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
// recipient of a client whose score reached the threshold, so that the
// log shows whom the client tried to send mail from and to. It runs
// inline.
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
	case v.listed:
		// RFC 5321 3.1: 554 at the greeting refuses the session; 550 at
		// RCPT refuses the recipient.
		code := 550
		if h == plugins.HookConnect {
			code = 554
		}
		return plugins.Deny(code, "5.7.1", "Service unavailable; client ["+ip.String()+"] listed by "+strings.Join(v.listedBy, ", "))
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

// private reports whether ip is one that no public DNSBL lists: loopback,
// RFC 1918 and RFC 4193 private, link-local or unspecified.
func private(ip netip.Addr) bool {
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
}

// verdict is the outcome of looking one address up in every zone.
type verdict struct {
	score     int
	listedBy  []string // the zones whose listings added to the score, in zones order
	allowedBy []string // the zones whose listings took from it
	listed    bool     // the score reached the threshold
	failed    bool     // not listed, and a zone that could have listed the client failed
	err       error    // the first failure, for the log

	// threshold is shown with the score when weights are in use; 0 when
	// they are not, and the messages read as without weights.
	threshold int
}

// clean reports that no zone listed the client and no lookup failed.
func (v verdict) clean() bool {
	return !v.listed && !v.failed && len(v.listedBy) == 0 && len(v.allowedBy) == 0
}

// finding is the verdict for the results plugin: fail when the score
// reached the threshold, err when a lookup failed, pass otherwise.
func (v verdict) finding() plugins.Finding {
	f := plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: v.String()}
	switch {
	case v.listed:
		f.Outcome = plugins.Fail
	case v.failed:
		f.Outcome = plugins.Err
	}
	return f
}

// String is how the note and the finding read: "listed by ZONE", "lookup
// failed" or "not listed"; with weights in use, with the score:
// "listed by a.example, b.example (score 4, threshold 3)", "score 2
// below threshold 3: listed by a.example; allowed by wl.example".
func (v verdict) String() string {
	var head string
	switch {
	case v.listed:
		head = "listed by " + strings.Join(v.listedBy, ", ")
	case v.failed:
		head = "lookup failed"
	case v.clean():
		return "not listed"
	}
	if v.threshold == 0 {
		// Without weights any listing reaches the threshold of 1.
		return head
	}
	score := "score " + strconv.Itoa(v.score)
	threshold := "threshold " + strconv.Itoa(v.threshold)
	if head != "" {
		return head + " (" + score + ", " + threshold + ")"
	}
	var parts []string
	if len(v.listedBy) > 0 {
		parts = append(parts, "listed by "+strings.Join(v.listedBy, ", "))
	}
	if len(v.allowedBy) > 0 {
		parts = append(parts, "allowed by "+strings.Join(v.allowedBy, ", "))
	}
	return score + " below " + threshold + ": " + strings.Join(parts, "; ")
}

var (
	_ plugins.ConnectHook = (*DNSBL)(nil)
	_ plugins.RcptHook    = (*DNSBL)(nil)
	_ plugins.Blocker     = (*DNSBL)(nil)
	_ plugins.ConnBlocker = (*DNSBL)(nil)
	_ plugins.Closer      = (*DNSBL)(nil)
	_ fmt.Stringer        = verdict{}
)
