// Package dmarc is the dmarc plugin (RFC 7489): at the end of each
// message it looks up the DMARC policy of the RFC5322.From domain (with
// github.com/emersion/go-msgauth/dmarc, through the shared DNS layer),
// checks whether SPF or DKIM passed for an identity aligned with that
// domain (relaxed or strict, organizational domains from the public
// suffix list), records the result and notes it for auth_results, and
// applies the policy: quarantine adds a header field the mailbox side can
// file on, reject refuses only when the operator enables enforcement. It
// reads the spf and dkim plugins' notes and sends no reports.
package dmarc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"loopmx/config"
	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "dmarc"

// NoteKey is the transaction note the plugin sets, a Result: it prints
// (%v) as an Authentication-Results "dmarc" method result without the
// "dmarc=": "pass header.from=example.org".
const NoteKey = "dmarc"

// Defaults.
const (
	DefaultLookupTimeout    = 2 * time.Second
	DefaultQuarantineHeader = "X-DMARC-Quarantine"
)

func init() { plugins.Register(Name, setup) }

// DMARC holds the settings and the resolver.
type DMARC struct {
	enforce          bool   // reject = enforce
	quarantineHeader string // quarantine_header; "" adds none
	tempfail         bool   // temperror = tempfail
	rejectBadFrom    bool   // bad_from = reject

	*dnsx.Lookups
}

// setup reads dmarc.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	budget := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	p := &DMARC{
		enforce:          pc.Choice("", "reject", "record", "record", "enforce") == "enforce",
		quarantineHeader: pc.String("", "quarantine_header", DefaultQuarantineHeader),
		tempfail:         pc.Choice("", "temperror", "record", "record", "tempfail") == "tempfail",
		rejectBadFrom:    pc.Choice("", "bad_from", "record", "record", "reject") == "reject",
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if h := p.quarantineHeader; h != "" && plugins.NewMessage(nil, "").AddHeader(h, "x") != nil {
		return nil, fmt.Errorf("config: %s: [main] quarantine_header: %q is not a header field name", pc.File(), h)
	}
	if err := dnsx.CheckBudget(pc, budget); err != nil {
		return nil, err
	}
	r, err := dnsx.Open(cfg)
	if err != nil {
		return nil, err
	}
	p.Lookups = dnsx.NewLookups(r, budget, Name, "DMARC policy lookup failed")
	return p, nil
}

// Name implements plugins.Plugin.
func (*DMARC) Name() string { return Name }

// Blocks implements plugins.Blocker: data_post may look up a policy.
func (*DMARC) Blocks(h plugins.Hook) bool { return h == plugins.HookDataPost }

// BlocksCall implements plugins.CallBlocker: a message in memory whose
// policies are all in the DNS cache is judged on the event loop.
func (p *DMARC) BlocksCall(c *plugins.Conn, call *plugins.Call) bool {
	if call.Hook != plugins.HookDataPost || call.Msg == nil || call.Msg.Spooled() || c.Tx == nil {
		return true
	}
	return dnsx.Inline(p.Lookups, c, func(r *dnsx.Resolver) (Result, error) {
		return p.evaluate(context.Background(), r, c, call.Msg)
	})
}

// DataPost implements plugins.DataPostHook.
func (p *DMARC) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	if c.Tx == nil {
		return plugins.NoOpinion()
	}
	res, inline := dnsx.Handed[Result](p.Lookups, c)
	if !inline {
		ctx, cancel := p.Context()
		res, _ = p.evaluate(ctx, p.DNS, c, m)
		cancel()
	}
	if res.err != nil {
		p.LogFailure(c.Log, "domain", res.Domain, res.err)
	}
	c.Tx.SetNote(NoteKey, res)
	if p.quarantineHeader != "" {
		// Only this server says what to quarantine.
		m.RemoveHeaders(func(name, _ string) bool { return strings.EqualFold(name, p.quarantineHeader) })
	}
	c.Record(res.finding(p.enforce))
	switch res.Result {
	case ResultFail:
		switch {
		case res.Applied == policyReject && p.enforce:
			return plugins.Deny(550, "5.7.1", "Message rejected by the DMARC policy of "+res.Domain)
		case res.Applied != policyNone && p.quarantineHeader != "":
			p.addHeader(c, m, res)
		}
	case ResultTempError:
		if p.tempfail {
			return plugins.DenySoft(451, "4.4.3", "DMARC policy lookup failed, try again later")
		}
	case ResultPermError:
		if res.badFrom && p.rejectBadFrom {
			return plugins.Deny(550, "5.7.1", "Message must have one From field naming its author's domain")
		}
	}
	return plugins.NoOpinion()
}

// addHeader adds the quarantine field: "example.org (p=quarantine)".
func (p *DMARC) addHeader(c *plugins.Conn, m *plugins.Message, res Result) {
	if err := m.AddHeader(p.quarantineHeader, res.Domain+" (p="+res.Applied+")"); err != nil && c.Log != nil {
		c.Log.Error().Str("plugin", Name).Str("tx", c.Tx.ID).Err(err).Msg("quarantine field not added")
	}
}

// pick is pct's coin (RFC 7489 6.6.4): true for a share of pct of the
// calls. A variable for tests.
var pick = func(pct int) bool { return rand.IntN(100) < pct }

var (
	_ plugins.DataPostHook = (*DMARC)(nil)
	_ plugins.CallBlocker  = (*DMARC)(nil)
	_ plugins.Closer       = (*DMARC)(nil)
)
