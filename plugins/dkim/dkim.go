// Package dkim is the dkim plugin: at the end of each message it verifies
// the message's DKIM signatures (RFC 6376; RSA-SHA256 and Ed25519-SHA256 of
// RFC 8463) with github.com/emersion/go-msgauth/dkim, reading the body as
// a stream (it may be on disk) and asking for the keys through the shared
// DNS layer (internal/dnsx). It records each signature's result for the
// results plugin and notes them on the transaction for dmarc and
// auth_results. By default it refuses nothing.
package dkim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"loopmx/config"
	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "dkim"

// NoteKey is the transaction note the plugin sets: a []fmt.Stringer, one
// entry per signature checked, in the order of the header (a message
// without a signature gets one entry, "none"). Each entry prints (%v) as
// the result and properties of an Authentication-Results "dkim" method
// result (RFC 8601 2.7.1): "pass header.d=example.org header.i=@example.org".
// A plugin reads the first word and header.d=, and needs no import of
// this package.
const NoteKey = "dkim"

// Defaults.
const (
	DefaultLookupTimeout = 5 * time.Second
	DefaultMaxSignatures = 5
)

func init() { plugins.Register(Name, setup) }

// DKIM holds the settings and the resolver.
type DKIM struct {
	maxSignatures int
	tempfail      bool // temperror = tempfail

	*dnsx.Lookups // the resolver, lookup_timeout, the failure log; Close
}

// setup reads dkim.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	budget := pc.Duration("", "lookup_timeout", DefaultLookupTimeout)
	p := &DKIM{
		maxSignatures: pc.Int("", "max_signatures", DefaultMaxSignatures),
		tempfail:      pc.Choice("", "temperror", "record", "record", "tempfail") == "tempfail",
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if p.maxSignatures < 1 {
		return nil, fmt.Errorf("config: %s: [main] max_signatures: %q must be at least 1", pc.File(), strconv.Itoa(p.maxSignatures))
	}
	if err := dnsx.CheckBudget(pc, budget); err != nil {
		return nil, err
	}
	r, err := dnsx.Open(cfg)
	if err != nil {
		return nil, err
	}
	p.Lookups = dnsx.NewLookups(r, budget, Name, "DKIM key lookup failed")
	return p, nil
}

// Name implements plugins.Plugin.
func (*DKIM) Name() string { return Name }

// Blocks implements plugins.Blocker: data_post reads the body and asks
// the DNS for keys.
func (*DKIM) Blocks(h plugins.Hook) bool { return h == plugins.HookDataPost }

// BlocksCall implements plugins.CallBlocker: a message in memory without
// a DKIM-Signature field is judged on the event loop (it needs no key and
// no body hash); every other message goes to the workpool, a spooled one
// also because its header is on disk.
func (*DKIM) BlocksCall(c *plugins.Conn, call *plugins.Call) bool {
	if call.Hook != plugins.HookDataPost || call.Msg == nil || call.Msg.Spooled() {
		return true
	}
	return hasSignature(call.Msg.HeaderBytes())
}

// hasSignature reports whether a header block holds a DKIM-Signature
// field (a line that starts with its name; a folded line cannot).
func hasSignature(head []byte) bool {
	const field = "dkim-signature"
	for len(head) > 0 {
		line := head
		if nl := bytes.IndexByte(head, '\n'); nl >= 0 {
			line, head = head[:nl], head[nl+1:]
		} else {
			head = nil
		}
		if len(line) > len(field) && bytes.EqualFold(line[:len(field)], []byte(field)) &&
			bytes.HasPrefix(bytes.TrimLeft(line[len(field):], " \t"), []byte(":")) {
			return true
		}
	}
	return false
}

// DataPost implements plugins.DataPostHook: it verifies the signatures,
// notes and records the results, and with temperror = tempfail defers a
// message whose only result that could pass could not be checked for a
// DNS failure.
func (p *DKIM) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	if c.Tx == nil {
		return plugins.NoOpinion()
	}
	var sigs []Result
	var skipped bool
	var failure error
	if !m.Spooled() && !hasSignature(m.HeaderBytes()) {
		sigs = []Result{{Result: None}}
	} else {
		ctx, cancel := p.Context()
		sigs, skipped, failure = p.verify(ctx, m)
		cancel()
	}
	note := make([]fmt.Stringer, len(sigs))
	temp, pass := false, false
	for i, s := range sigs {
		note[i] = s
		c.Record(s.finding())
		switch s.Result {
		case Pass:
			pass = true
		case TempError:
			temp = true
			p.LogFailure(c.Log, "domain", s.Domain, s.err)
		}
	}
	if skipped {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip, Word: "max_signatures",
			Message: "signatures after the first " + strconv.Itoa(p.maxSignatures) + " not checked"})
	}
	if failure != nil && c.Log != nil {
		c.Log.Warn().Str("plugin", Name).Str("tx", c.Tx.ID).Err(failure).Msg("DKIM verification failed")
	}
	c.Tx.SetNote(NoteKey, note)
	if p.tempfail && temp && !pass {
		return plugins.DenySoft(451, "4.7.5", "DKIM key lookup failed, try again later")
	}
	return plugins.NoOpinion()
}

// verify checks the first max_signatures signatures of m, streaming its
// body, with the keys looked up within ctx. skipped tells that there were
// more; failure is an error that is no signature's (the body could not be
// read, a header that does not parse): the message then gets one
// permerror (temperror for a read error).
func (p *DKIM) verify(ctx context.Context, m *plugins.Message) (sigs []Result, skipped bool, failure error) {
	lookup := func(name string) ([]string, error) {
		txts, err := p.DNS.LookupTXT(ctx, name)
		if err != nil {
			return nil, dnsx.NetError(err)
		}
		return txts, nil
	}
	verifs, err := msgdkim.VerifyWithOptions(m.Reader(), &msgdkim.VerifyOptions{LookupTXT: lookup, MaxVerifications: p.maxSignatures})
	if errors.Is(err, msgdkim.ErrTooManySignatures) {
		skipped, err = true, nil
	}
	for _, v := range verifs {
		if v != nil {
			sigs = append(sigs, fromVerification(v))
		}
	}
	switch {
	case err != nil && len(sigs) == 0:
		return []Result{{Result: PermError, Reason: "message could not be verified"}}, skipped, err
	case len(sigs) == 0:
		return []Result{{Result: None}}, skipped, nil
	}
	return sigs, skipped, err
}

var (
	_ plugins.DataPostHook = (*DKIM)(nil)
	_ plugins.CallBlocker  = (*DKIM)(nil)
	_ plugins.Closer       = (*DKIM)(nil)
)
