// Package spf is the spf plugin: it checks the client against the SPF
// policies (RFC 7208) of the HELO name and of the sender's domain at each
// MAIL, records the results for the results plugin and as notes that an
// Authentication-Results header can be made from, acts on each result as
// spf.ini says (by default it only records), and adds a Received-SPF
// field to the message. The evaluation is
// blitiri.com.ar/go/spf's, asking the DNS through the shared layer
// (internal/dnsx): on the event loop when every answer is cached,
// otherwise on the workpool.
package spf

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	spflib "blitiri.com.ar/go/spf"

	"loopmx/config"
	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "spf"

// Notes the plugin sets, each a Result (it prints as an
// Authentication-Results method result).
const (
	// NoteMailFrom is the transaction's note: the MAIL FROM identity's
	// result.
	NoteMailFrom = "spf"
	// NoteHelo is the connection's note: the HELO identity's result, for
	// the HELO name the client gave last.
	NoteHelo = "spf.helo"
)

// DefaultLookupTimeout is lookup_timeout's default: one MAIL's checks may
// take ten lookups and more (RFC 7208 4.6.4).
const DefaultLookupTimeout = 5 * time.Second

func init() { plugins.Register(Name, setup) }

// action is what a result leads to.
type action uint8

const (
	record   action = iota // record it, refuse nothing
	reject                 // 550
	tempfail               // 451
)

// results are the SPF results in the order spf.ini's keys list them.
var results = []spflib.Result{spflib.Pass, spflib.Fail, spflib.SoftFail, spflib.Neutral, spflib.None, spflib.TempError, spflib.PermError}

// SPF holds the settings and the resolver.
type SPF struct {
	checkHelo bool
	header    bool                     // received_spf
	mailFrom  map[spflib.Result]action // [mail_from]
	helo      map[spflib.Result]action // [helo]

	*dnsx.Lookups // the resolver, lookup_timeout, the failure log; Close
}

// setup reads spf.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	budget := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	p := &SPF{
		checkHelo: pc.Bool("", "check_helo", true),
		header:    pc.Bool("", "received_spf", true),
	}
	p.mailFrom = actions(pc, "mail_from")
	p.helo = actions(pc, "helo")
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
	p.Lookups = dnsx.NewLookups(r, budget, Name, "SPF lookup failed")
	return p, nil
}

// actions reads the actions of one section: record, reject or tempfail;
// a pass is never refused, and a temperror never refused for good.
func actions(pc *config.PluginConfig, section string) map[spflib.Result]action {
	out := map[spflib.Result]action{}
	for _, r := range results {
		choices := []string{"record", "reject", "tempfail"}
		switch r {
		case spflib.Pass:
			choices = choices[:1]
		case spflib.TempError:
			choices = []string{"record", "tempfail"}
		}
		switch pc.Choice(section, string(r), "record", choices...) {
		case "reject":
			out[r] = reject
		case "tempfail":
			out[r] = tempfail
		}
	}
	return out
}

// Name implements plugins.Plugin.
func (*SPF) Name() string { return Name }

// Blocks implements plugins.Blocker: the mail hook waits for DNS; the
// data_post hook only writes a header field.
func (*SPF) Blocks(h plugins.Hook) bool { return h == plugins.HookMail }

// BlocksConn implements plugins.ConnBlocker: a MAIL whose checks find
// every answer in the DNS cache is judged on the event loop.
func (p *SPF) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	if h != plugins.HookMail {
		return false
	}
	if c.Tx == nil {
		return true // not as the server calls it: ask on the workpool
	}
	return dnsx.Inline(p.Lookups, c, func(r *dnsx.Resolver) (outcome, error) {
		if o, missed := p.evaluate(context.Background(), r, c, c.Tx.From); !missed {
			return o, nil
		}
		return outcome{}, dnsx.ErrNotCached
	})
}

// outcome is what one MAIL's checks found.
type outcome struct {
	helo     Result
	heloNew  bool // helo was checked for this MAIL (not taken from the connection's note)
	hasHelo  bool
	mailFrom Result
}

// evaluate checks the HELO identity (once per HELO name; also when the
// sender is <>, whose identity it gives) and the MAIL FROM identity.
func (p *SPF) evaluate(ctx context.Context, r *dnsx.Resolver, c *plugins.Conn, from string) (outcome, bool) {
	var o outcome
	ip := c.RemoteIP.Unmap()
	helo := c.Helo
	missed := false
	if p.checkHelo || from == "" {
		if prev, ok := c.Note(NoteHelo).(Result); ok && strings.EqualFold(prev.Subject, helo) {
			o.helo = prev
		} else {
			// RFC 7208 2.3: <sender> is postmaster@ the HELO name.
			o.helo, missed = checkDomain(ctx, r, ip, helo, identityHelo, helo, "postmaster@"+helo)
			o.heloNew = p.checkHelo
		}
		o.hasHelo = p.checkHelo
	}
	if from == "" {
		// RFC 7208 2.4: the MAIL FROM identity of the null sender is
		// postmaster@ the HELO name; its check is the HELO check.
		o.mailFrom = o.helo
		o.mailFrom.Identity, o.mailFrom.Subject = identityMailFrom, "postmaster@"+helo
		return o, missed
	}
	var m bool
	o.mailFrom, m = checkDomain(ctx, r, ip, helo, identityMailFrom, from, from)
	return o, missed || m
}

// checkDomain checks the policy of the domain of sender for identity
// (subject names it in the Result). A domain that is an address literal
// or a single label has no SPF policy: none (RFC 7208 2.3, 4.3).
func checkDomain(ctx context.Context, r *dnsx.Resolver, ip netip.Addr, helo, identity, subject, sender string) (Result, bool) {
	domain := strings.ToLower(sender[strings.LastIndexByte(sender, '@')+1:])
	res := Result{Result: spflib.None, Identity: identity, Subject: subject, Domain: domain}
	if strings.HasPrefix(domain, "[") || !strings.Contains(strings.Trim(domain, "."), ".") {
		return res, false
	}
	var missed bool
	var err error
	res.Result, missed, err = check(ctx, r, ip, helo, sender)
	if res.Result == spflib.TempError {
		res.err = err
	}
	return res, missed
}

// Mail implements plugins.MailHook: it checks, notes and records the
// results, then acts on the HELO identity's result, then on the MAIL
// FROM identity's.
func (p *SPF) Mail(c *plugins.Conn, from string) plugins.Result {
	o, inline := dnsx.Handed[outcome](p.Lookups, c)
	if !inline {
		ctx, cancel := p.Context()
		o, _ = p.evaluate(ctx, p.DNS, c, from)
		cancel()
	}
	if o.heloNew {
		c.SetNote(NoteHelo, o.helo)
		c.Record(o.helo.finding())
	}
	c.Record(o.mailFrom.finding())
	switch {
	case o.mailFrom.err != nil:
		p.LogFailure(c.Log, "domain", o.mailFrom.Domain, o.mailFrom.err)
	case o.heloNew && o.helo.err != nil:
		p.LogFailure(c.Log, "domain", o.helo.Domain, o.helo.err)
	}
	if c.Tx != nil {
		c.Tx.SetNote(NoteMailFrom, o.mailFrom)
	}
	ip := c.RemoteIP.Unmap()
	if o.hasHelo {
		if res := refusal(p.helo[o.helo.Result], o.helo, ip); res.Action != plugins.Continue {
			return res
		}
	}
	return refusal(p.mailFrom[o.mailFrom.Result], o.mailFrom, ip)
}

// refusal is the reply an action gives a result: RFC 7372's X.7.23 (SPF
// validation failed) for a policy's verdict, X.7.24 (SPF validation
// error) for a record that is broken or could not be read.
func refusal(a action, r Result, ip netip.Addr) plugins.Result {
	if a == record {
		return plugins.NoOpinion()
	}
	detail := "23"
	if r.Result == spflib.TempError || r.Result == spflib.PermError {
		detail = "24"
	}
	text := "SPF " + string(r.Result) + ": " + describe(r, ip)
	if a == reject {
		return plugins.Deny(550, "5.7."+detail, text)
	}
	return plugins.DenySoft(451, "4.7."+detail, text+", try again later")
}

// describe says in words what a result means for the client, as the
// reply and the Received-SPF comment give it.
func describe(r Result, ip netip.Addr) string {
	switch r.Result {
	case spflib.Pass:
		return r.Domain + " designates " + ip.String() + " as permitted sender"
	case spflib.Fail:
		return r.Domain + " does not designate " + ip.String() + " as permitted sender"
	case spflib.SoftFail:
		return r.Domain + " does not designate " + ip.String() + " as permitted sender (softfail)"
	case spflib.Neutral:
		return ip.String() + " is neither permitted nor denied by " + r.Domain
	case spflib.None:
		return r.Domain + " publishes no SPF record"
	case spflib.TempError:
		return "the SPF record of " + r.Domain + " could not be looked up"
	}
	return "the SPF record of " + r.Domain + " is broken"
}

var (
	_ plugins.MailHook    = (*SPF)(nil)
	_ plugins.ConnBlocker = (*SPF)(nil)
	_ plugins.Closer      = (*SPF)(nil)
	_ fmt.Stringer        = Result{}
)
