// Package isresolvable is the mail_from.is_resolvable plugin: it refuses
// a sender whose domain cannot receive mail, so that no bounce could ever
// reach it: a domain with neither MX nor address records (RFC 5321 5.1),
// or one that says it takes no mail with a null MX (RFC 7505). The null
// sender <> is always allowed. The lookups run in the mail hook: on the
// event loop when the shared DNS cache holds every answer, otherwise on
// the workpool.
package isresolvable

import (
	"context"
	"errors"
	"strings"
	"time"

	"loopmx/config"
	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "mail_from.is_resolvable"

// DefaultLookupTimeout is lookup_timeout's default.
const DefaultLookupTimeout = 2 * time.Second

// maxHosts is how many of a domain's mail exchangers are looked up at
// most, most preferred first.
const maxHosts = 10

func init() { plugins.Register(Name, setup) }

// IsResolvable holds the settings and the resolver.
type IsResolvable struct {
	checkHosts bool // check_mx_hosts
	failOpen   bool // on_error = pass

	*dnsx.Lookups // the resolver, lookup_timeout, the failure log; Close
}

// setup reads mail_from.is_resolvable.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	budget := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	p := &IsResolvable{
		checkHosts: pc.Bool("", "check_mx_hosts", true),
		failOpen:   pc.Choice("", "on_error", "tempfail", "pass", "tempfail") == "pass",
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if err := dnsx.CheckBudget(pc, budget); err != nil {
		return nil, err
	}
	r, err := dnsx.Open(cfg)
	if err != nil {
		return nil, err
	}
	p.Lookups = dnsx.NewLookups(r, budget, Name, "sender domain lookup failed")
	return p, nil
}

// Name implements plugins.Plugin.
func (*IsResolvable) Name() string { return Name }

// Blocks implements plugins.Blocker: the mail hook waits for DNS.
func (*IsResolvable) Blocks(h plugins.Hook) bool { return h == plugins.HookMail }

// BlocksConn implements plugins.ConnBlocker: the null sender, an address
// literal, and a domain whose answers are all cached are judged on the
// event loop.
func (p *IsResolvable) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	if h != plugins.HookMail {
		return false
	}
	if c.Tx == nil {
		return true // not as the server calls it: ask on the workpool
	}
	domain, ok := senderDomain(c.Tx.From)
	if !ok {
		return false
	}
	return dnsx.Inline(p.Lookups, c, func(r *dnsx.Resolver) (verdict, error) { return p.check(context.Background(), r, domain) })
}

// senderDomain returns the domain of a reverse path, lower case, and
// whether there is one to look up: not for the null sender, an address
// without a domain, or an address literal.
func senderDomain(from string) (string, bool) {
	at := strings.LastIndexByte(from, '@')
	if at < 0 {
		return "", false
	}
	domain := strings.ToLower(from[at+1:])
	return domain, domain != "" && !strings.HasPrefix(domain, "[")
}

// Mail implements plugins.MailHook.
func (p *IsResolvable) Mail(c *plugins.Conn, from string) plugins.Result {
	domain, ok := senderDomain(from)
	if !ok {
		why := "null sender"
		if from != "" {
			why = "no domain to look up"
		}
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Message: why})
		return plugins.NoOpinion()
	}
	v, inline := dnsx.Handed[verdict](p.Lookups, c)
	if !inline {
		ctx, cancel := p.Context()
		v, _ = p.check(ctx, p.DNS, domain)
		cancel()
		if v.err != nil {
			p.LogFailure(c.Log, "domain", domain, v.err)
		}
	}
	c.Record(v.finding(domain))
	switch {
	case v.state == nullMX:
		// RFC 7505 4.2: 550 5.7.27, "sender address has null MX".
		return plugins.Deny(550, "5.7.27", "Sender address rejected: "+domain+" accepts no mail (null MX)")
	case v.state == unresolvable:
		// RFC 3463 X.1.8: bad sender's system address.
		return plugins.Deny(550, "5.1.8", "Sender address rejected: "+domain+" "+v.why)
	case v.state == failed && !p.failOpen:
		return plugins.DenySoft(450, "4.1.8", "Sender address rejected: cannot resolve "+domain+" now, try again later")
	}
	return plugins.NoOpinion()
}

// state is what the check concluded.
type state uint8

const (
	resolvable   state = iota // an MX with an address, or an address
	unresolvable              // neither
	nullMX                    // RFC 7505
	failed                    // a temporary failure left the question open
)

// verdict is the outcome of the check of one domain.
type verdict struct {
	state state
	why   string // for people: "mx", "no MX or address record", ...
	err   error  // the failure, for the log
}

// check looks the domain up: its MX records (RFC 5321 5.1), and with
// check_mx_hosts the addresses of up to maxHosts of them until one has
// one; without MX records, its own addresses (the implicit MX). On the
// cache-only resolver it returns dnsx.ErrNotCached as soon as an answer
// is missing.
func (p *IsResolvable) check(ctx context.Context, r *dnsx.Resolver, domain string) (verdict, error) {
	mxs, err := r.LookupMX(ctx, domain)
	switch {
	case err == dnsx.ErrNotCached:
		return verdict{}, err
	case err == nil:
		return p.exchangers(ctx, r, mxs)
	case dnsx.IsTemporary(err):
		return verdict{state: failed, why: "lookup failed", err: err}, nil
	}
	var e *dnsx.Error
	if !errors.As(err, &e) || e.Kind != dnsx.NoData {
		return verdict{state: unresolvable, why: "does not exist"}, nil
	}
	// No MX records: the domain itself is the implicit MX (RFC 5321 5.1).
	_, err = r.LookupIP(ctx, "ip", domain)
	switch {
	case err == dnsx.ErrNotCached:
		return verdict{}, err
	case err == nil:
		return verdict{state: resolvable, why: "address record"}, nil
	case dnsx.IsTemporary(err):
		return verdict{state: failed, why: "lookup failed", err: err}, nil
	}
	return verdict{state: unresolvable, why: "has no MX or address record"}, nil
}

// exchangers judges a domain by its MX records: a null MX takes no mail;
// otherwise, with check_mx_hosts, one of the first maxHosts exchangers
// must have an address.
func (p *IsResolvable) exchangers(ctx context.Context, r *dnsx.Resolver, mxs []dnsx.MX) (verdict, error) {
	// RFC 7505 3: a null MX is the domain's only MX record, naming the
	// root.
	if len(mxs) == 1 && mxs[0].Host == "" {
		return verdict{state: nullMX, why: "null MX"}, nil
	}
	if !p.checkHosts {
		return verdict{state: resolvable, why: "mx"}, nil
	}
	var tempErr error
	n := 0
	for _, mx := range mxs {
		if mx.Host == "" {
			continue
		}
		if n++; n > maxHosts {
			break
		}
		_, err := r.LookupIP(ctx, "ip", mx.Host)
		switch {
		case err == dnsx.ErrNotCached:
			return verdict{}, err
		case err == nil:
			return verdict{state: resolvable, why: "mx " + mx.Host}, nil
		case dnsx.IsTemporary(err) && tempErr == nil:
			tempErr = err
		}
	}
	if tempErr != nil {
		return verdict{state: failed, why: "lookup failed", err: tempErr}, nil
	}
	return verdict{state: unresolvable, why: "has no mail exchanger with an address"}, nil
}

// finding is the verdict for the results plugin: "pass: example.org: mx
// mx1.example.org", "fail: example.invalid does not exist", "fail:
// example.org: null MX", "err: example.org: lookup failed".
func (v verdict) finding(domain string) plugins.Finding {
	f := plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: domain + ": " + v.why}
	switch v.state {
	case unresolvable:
		f.Outcome, f.Message = plugins.Fail, domain+" "+v.why
	case nullMX:
		f.Outcome = plugins.Fail
	case failed:
		f.Outcome = plugins.Err
	}
	return f
}

var (
	_ plugins.MailHook    = (*IsResolvable)(nil)
	_ plugins.ConnBlocker = (*IsResolvable)(nil)
	_ plugins.Closer      = (*IsResolvable)(nil)
)
