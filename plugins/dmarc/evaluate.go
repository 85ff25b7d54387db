package dmarc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"strings"

	msgdmarc "github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// DMARC results (RFC 7489 11.2, as Authentication-Results writes them).
const (
	ResultPass      = "pass"
	ResultFail      = "fail"
	ResultNone      = "none" // the domain publishes no policy
	ResultTempError = "temperror"
	ResultPermError = "permerror"
)

// Policies, in the order of their strictness.
const (
	policyNone       = "none"
	policyQuarantine = "quarantine"
	policyReject     = "reject"
)

// Result is the outcome of one message's check. It prints (%v) as the
// result and property of an Authentication-Results dmarc method result.
type Result struct {
	Result string
	// Domain is the RFC5322.From domain (the first one failing, when the
	// From field names several).
	Domain string
	// Published is the policy the domain asks for (p=, or sp= for a
	// subdomain of the domain that publishes it); Applied is what
	// remains of it after pct=.
	Published, Applied string

	badFrom bool // no From domain, or several From fields
	reason  string
	err     error // why a temperror is one, for the log
}

// String is "pass header.from=example.org".
func (r Result) String() string {
	if r.Domain == "" {
		return r.Result
	}
	return r.Result + " header.from=" + r.Domain
}

// finding is the result for the results plugin.
func (r Result) finding(enforce bool) plugins.Finding {
	f := plugins.Finding{Plugin: Name, Message: r.Domain}
	switch r.Result {
	case ResultPass:
		f.Outcome = plugins.Pass
	case ResultFail:
		f.Outcome = plugins.Fail
		f.Message += " (p=" + r.Published
		if r.Applied != r.Published {
			f.Message += ", pct: " + r.Applied
		}
		if r.Applied == policyReject && !enforce {
			f.Message += ", not enforced"
		}
		f.Message += ")"
	case ResultNone:
		f.Outcome, f.Word, f.Message = plugins.Skip, ResultNone, r.Domain+" publishes no policy"
	default:
		f.Outcome, f.Word = plugins.Err, r.Result
		switch {
		case r.Domain == "":
			f.Message = r.reason
		case r.reason != "":
			f.Message += " (" + r.reason + ")"
		}
	}
	return f
}

// evaluate checks m against the policy of each of its From domains. On
// the cache-only resolver it returns dnsx.ErrNotCached when an answer was
// missing.
func (p *DMARC) evaluate(ctx context.Context, r *dnsx.Resolver, c *plugins.Conn, m *plugins.Message) (Result, error) {
	domains, why := fromDomains(m)
	if why != "" {
		return Result{Result: ResultPermError, badFrom: true, reason: why}, nil
	}
	spfDomain, dkimDomains := identities(c.Tx)
	var out Result
	for i, d := range domains {
		res, err := check(ctx, r, d, spfDomain, dkimDomains)
		if err != nil {
			return Result{}, err
		}
		if i == 0 || worse(res, out) {
			out = res
		}
	}
	return out, nil
}

// worse tells whether a is the result to keep over b: a failure over
// anything else, a stricter applied policy over a laxer one, then a
// temperror, a permerror, none, pass.
func worse(a, b Result) bool {
	return rank(a) > rank(b)
}

func rank(r Result) int {
	switch r.Result {
	case ResultFail:
		return 10 + strictness(r.Applied)
	case ResultTempError:
		return 4
	case ResultPermError:
		return 3
	case ResultNone:
		return 2
	}
	return 1
}

func strictness(policy string) int {
	switch policy {
	case policyReject:
		return 2
	case policyQuarantine:
		return 1
	}
	return 0
}

// fromDomains returns the domains of the RFC5322.From field, or why the
// message has none to check (RFC 7489 6.6.1): no From field, or more
// than one (RFC 5322 3.6 allows one), or one that does not parse. A
// field naming several authors gives each distinct domain.
func fromDomains(m *plugins.Message) ([]string, string) {
	fields := m.Header()["From"]
	switch {
	case len(fields) == 0:
		return nil, "no From field"
	case len(fields) > 1:
		return nil, "several From fields"
	}
	addrs, err := mail.ParseAddressList(fields[0])
	if err != nil || len(addrs) == 0 {
		return nil, "From field does not parse"
	}
	var out []string
	for _, a := range addrs {
		at := strings.LastIndexByte(a.Address, '@')
		d := strings.TrimSuffix(strings.ToLower(a.Address[at+1:]), ".")
		if at < 0 || d == "" {
			return nil, "From address without a domain"
		}
		if !contains(out, d) {
			out = append(out, d)
		}
	}
	return out, ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// identities reads the identities that passed from the notes of the spf
// plugin ("pass smtp.mailfrom=a@example.org") and the dkim plugin (one
// "pass header.d=example.org ..." per signature), as they print.
func identities(tx *plugins.Transaction) (spfDomain string, dkimDomains []string) {
	if v := tx.Note("spf"); v != nil {
		if s := fmt.Sprint(v); strings.HasPrefix(s, "pass ") {
			if mf := property(s, "smtp.mailfrom"); mf != "" {
				spfDomain = strings.ToLower(mf[strings.LastIndexByte(mf, '@')+1:])
			}
		}
	}
	if sigs, ok := tx.Note("dkim").([]fmt.Stringer); ok {
		for _, sig := range sigs {
			if s := sig.String(); strings.HasPrefix(s, "pass ") {
				if d := property(s, "header.d"); d != "" {
					dkimDomains = append(dkimDomains, strings.ToLower(d))
				}
			}
		}
	}
	return spfDomain, dkimDomains
}

// property returns the value of "name=value" in a method result.
func property(result, name string) string {
	for _, f := range strings.Fields(result) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return ""
}

// check looks up the policy of domain and checks the identities against
// it (RFC 7489 6.6.2, 6.6.3).
func check(ctx context.Context, r *dnsx.Resolver, domain, spfDomain string, dkimDomains []string) (Result, error) {
	res := Result{Domain: domain}
	rec, sub, err := lookup(ctx, r, domain)
	switch {
	case errors.Is(err, dnsx.ErrNotCached):
		return Result{}, err
	case errors.Is(err, msgdmarc.ErrNoPolicy):
		res.Result = ResultNone
		return res, nil
	case msgdmarc.IsTempFail(err):
		res.Result, res.reason, res.err = ResultTempError, "policy lookup failed", err
		return res, nil
	case err != nil:
		res.Result, res.reason = ResultPermError, strings.TrimPrefix(err.Error(), "dmarc: ")
		return res, nil
	}
	res.Published = string(rec.Policy)
	if sub && rec.SubdomainPolicy != "" {
		res.Published = string(rec.SubdomainPolicy)
	}
	if aligned(spfDomain, domain, rec.SPFAlignment) {
		res.Result = ResultPass
		return res, nil
	}
	for _, d := range dkimDomains {
		if aligned(d, domain, rec.DKIMAlignment) {
			res.Result = ResultPass
			return res, nil
		}
	}
	res.Result, res.Applied = ResultFail, res.Published
	if rec.Percent != nil && *rec.Percent < 100 && !pick(*rec.Percent) {
		// RFC 7489 6.6.4: outside the sampled share, the next policy down.
		switch res.Applied {
		case policyReject:
			res.Applied = policyQuarantine
		case policyQuarantine:
			res.Applied = policyNone
		}
	}
	return res, nil
}

// lookup finds the policy of domain, or failing that of its
// organizational domain (RFC 7489 6.6.3); sub tells that it is the
// latter's, so that sp= applies.
func lookup(ctx context.Context, r *dnsx.Resolver, domain string) (rec *msgdmarc.Record, sub bool, err error) {
	var missed bool
	opts := &msgdmarc.LookupOptions{LookupTXT: func(name string) ([]string, error) {
		txts, err := r.LookupTXT(ctx, name)
		if err == dnsx.ErrNotCached {
			missed = true
			return nil, &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true}
		}
		if err != nil {
			return nil, dnsx.NetError(err)
		}
		return txts, nil
	}}
	rec, err = msgdmarc.LookupWithOptions(domain, opts)
	if org := orgDomain(domain); errors.Is(err, msgdmarc.ErrNoPolicy) && org != domain {
		rec, err = msgdmarc.LookupWithOptions(org, opts)
		sub = true
	}
	if missed {
		return nil, false, dnsx.ErrNotCached
	}
	return rec, sub, err
}

// orgDomain is the organizational domain (RFC 7489 3.2): the public
// suffix and one label more; a name that is a public suffix is its own.
func orgDomain(d string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

// aligned tells whether identity is aligned with the From domain: the
// same name (strict), or the same organizational domain (relaxed).
func aligned(identity, from string, mode msgdmarc.AlignmentMode) bool {
	if identity == "" {
		return false
	}
	if identity == from {
		return true
	}
	return mode != msgdmarc.AlignmentStrict && orgDomain(identity) == orgDomain(from)
}
