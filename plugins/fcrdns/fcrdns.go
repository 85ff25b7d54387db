// Package fcrdns is the fcrdns plugin: it looks up the client's reverse
// DNS name (PTR) and confirms it forward (an A or AAAA record of the name
// is the client's address), notes the confirmed name for the other
// plugins and the Received header, and may refuse clients without one, or
// with a generic name of a dynamic address pool. The lookups run once per
// connection, in the connect hook: on the event loop when the shared DNS
// cache holds every answer, otherwise on the workpool.
package fcrdns

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"loopmx/config"
	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "fcrdns"

// NoteKey is the connection note holding the outcome of the check; it
// prints (fmt's %v) as the finding's message.
const NoteKey = "fcrdns"

// DefaultLookupTimeout is lookup_timeout's default.
const DefaultLookupTimeout = 2 * time.Second

// maxNames is how many PTR names are confirmed at most, as RFC 7208
// 4.6.4 bounds SPF's ptr mechanism: a client cannot make the server
// chase a thousand names.
const maxNames = 10

func init() { plugins.Register(Name, setup) }

// FCrDNS holds the settings and the resolver.
type FCrDNS struct {
	rejectNone     bool // reject_no_fcrdns
	rejectGeneric  bool // reject_generic
	atConnect      bool // reject = connect
	tempfail       bool // on_error = tempfail
	skipPrivate    bool
	patterns       []*regexp.Regexp
	genericAddress bool // generic_ip_in_name

	*dnsx.Lookups // the resolver, lookup_timeout, the failure log; Close
}

// setup reads fcrdns.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	budget := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	p := &FCrDNS{
		rejectNone:     pc.Bool("", "reject_no_fcrdns", false),
		rejectGeneric:  pc.Bool("", "reject_generic", false),
		skipPrivate:    pc.Bool("", "skip_private", true),
		genericAddress: pc.Bool("", "generic_ip_in_name", true),
		atConnect:      pc.Choice("", "reject", "rcpt", "connect", "rcpt") == "connect",
		tempfail:       pc.Choice("", "on_error", "pass", "pass", "tempfail") == "tempfail",
	}
	patternFile := pc.String("", "generic_patterns", "")
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if err := dnsx.CheckBudget(pc, budget); err != nil {
		return nil, err
	}
	if p.patterns, err = loadPatterns(cfg, patternFile); err != nil {
		return nil, err
	}
	r, err := dnsx.Open(cfg)
	if err != nil {
		return nil, err
	}
	p.Lookups = dnsx.NewLookups(r, budget, Name, "reverse DNS lookup failed")
	return p, nil
}

// defaultPatterns are the generic names of dynamic and customer address
// pools that providers commonly give: a keyword as a whole label or
// label part, next to a separator or a digit.
var defaultPatterns = []string{
	`(^|[.-])(dyn|dynamic|dhcp|pool|ppp|pppoe|dialup|dial-?in|dsl|adsl|vdsl|xdsl|cable|broadband|cpe|customers?|cust|client|subscriber|unassigned|unknown)([0-9.-]|$)`,
	`(^|[.-])(dyn|dsl|ppp|dhcp|pool|cable)[0-9]`,
}

// loadPatterns compiles the regular expressions of the generic_patterns
// file (one a line), or the default ones when the key is not set.
func loadPatterns(cfg *config.Config, file string) ([]*regexp.Regexp, error) {
	if file == "" {
		out := make([]*regexp.Regexp, len(defaultPatterns))
		for i, s := range defaultPatterns {
			out[i] = regexp.MustCompile(s)
		}
		return out, nil
	}
	items, err := cfg.ListItems(file)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("config: %s: [main] generic_patterns: %q is missing or holds no pattern (leave the key out for the built-in ones)", Name+".ini", file)
	}
	out := make([]*regexp.Regexp, 0, len(items))
	for _, it := range items {
		re, err := regexp.Compile("(?i)" + it.Text)
		if err != nil {
			return nil, fmt.Errorf("config: %s:%d: %q is not a regular expression: %v", file, it.Line, it.Text, err)
		}
		out = append(out, re)
	}
	return out, nil
}

// Name implements plugins.Plugin.
func (*FCrDNS) Name() string { return Name }

// Blocks implements plugins.Blocker: the connect hook waits for DNS; the
// RCPT hook reads a note.
func (*FCrDNS) Blocks(h plugins.Hook) bool { return h == plugins.HookConnect }

// BlocksConn implements plugins.ConnBlocker: a skipped address, or one
// whose answers are all cached, is checked on the event loop.
func (p *FCrDNS) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	ip := c.RemoteIP.Unmap()
	if h != plugins.HookConnect || p.skip(ip) {
		return false
	}
	return dnsx.Inline(p.Lookups, c, func(r *dnsx.Resolver) (outcome, error) { return p.check(context.Background(), r, ip) })
}

func (p *FCrDNS) skip(ip netip.Addr) bool {
	return !ip.IsValid() || p.skipPrivate && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified())
}

// Connect implements plugins.ConnectHook: it checks the client, notes
// the confirmed name, records the outcome and, with reject = connect,
// answers.
func (p *FCrDNS) Connect(c *plugins.Conn) plugins.Result {
	ip := c.RemoteIP.Unmap()
	if p.skip(ip) {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Message: "private address"})
		return plugins.NoOpinion()
	}
	o, inline := dnsx.Handed[outcome](p.Lookups, c)
	if !inline {
		ctx, cancel := p.Context()
		o, _ = p.check(ctx, p.DNS, ip)
		cancel()
		if o.err != nil {
			p.LogFailure(c.Log, "ip", ip.String(), o.err)
		}
	}
	if o.verified != "" {
		c.SetNote(plugins.RDNSNote, o.verified)
	}
	c.SetNote(NoteKey, o)
	c.Record(o.finding())
	if o.generic != "" {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Word: "generic", Message: o.generic})
	}
	if !p.atConnect {
		return plugins.NoOpinion()
	}
	return p.answer(plugins.HookConnect, ip, o)
}

// Rcpt implements plugins.RcptHook: with reject = rcpt it refuses every
// recipient of a client the settings refuse. It runs inline.
func (p *FCrDNS) Rcpt(c *plugins.Conn, _ string) plugins.Result {
	o, ok := c.Note(NoteKey).(outcome)
	if p.atConnect || !ok {
		return plugins.NoOpinion()
	}
	return p.answer(plugins.HookRcpt, c.RemoteIP.Unmap(), o)
}

// answer is the reply the settings give the outcome: RFC 7372's X.7.25
// (reverse DNS validation failed) for a missing FCrDNS, 5.7.1 for a
// generic name.
func (p *FCrDNS) answer(h plugins.Hook, ip netip.Addr, o outcome) plugins.Result {
	atConnect := h == plugins.HookConnect
	switch {
	case p.rejectNone && o.verified == "" && o.err == nil:
		return plugins.Deny(pick(atConnect, 554, 550), "5.7.25", "Client ["+ip.String()+"] has no forward-confirmed reverse DNS name")
	case p.rejectNone && o.verified == "" && p.tempfail:
		return plugins.DenySoft(pick(atConnect, 421, 450), "4.7.25", "Reverse DNS lookup failed, try again later")
	case p.rejectGeneric && o.generic != "":
		return plugins.Deny(pick(atConnect, 554, 550), "5.7.1", "Client host name "+o.name()+" looks like a dynamic address; send through your provider's mail server")
	}
	return plugins.NoOpinion()
}

// pick returns a at connect, b at RCPT.
func pick(atConnect bool, a, b int) int {
	if atConnect {
		return a
	}
	return b
}

var (
	_ plugins.ConnectHook = (*FCrDNS)(nil)
	_ plugins.RcptHook    = (*FCrDNS)(nil)
	_ plugins.ConnBlocker = (*FCrDNS)(nil)
	_ plugins.Closer      = (*FCrDNS)(nil)
)
