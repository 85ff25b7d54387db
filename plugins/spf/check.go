package spf

import (
	"context"
	"net"
	"net/netip"

	spflib "blitiri.com.ar/go/spf"

	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// Identities checked (RFC 7208 2.3, 2.4), as Received-SPF's identity
// names them.
const (
	identityHelo     = "helo"
	identityMailFrom = "mailfrom"
)

// Result is the outcome of one SPF check. It prints (fmt's %v) as the
// result and property of an Authentication-Results "spf" method result
// (RFC 8601 2.7.2), which that header writes after "spf=":
// "pass smtp.mailfrom=sender@example.org", "none smtp.helo=mx.example.org".
// A plugin that asks whether SPF passed compares the first word.
type Result struct {
	// Result is the SPF result (RFC 7208 2.6): pass, fail, softfail,
	// neutral, none, temperror or permerror.
	Result spflib.Result
	// Identity is "mailfrom" or "helo".
	Identity string
	// Subject is the identity checked: the sender's address (for <>,
	// postmaster@ the HELO name) or the HELO name.
	Subject string
	// Domain is the domain whose policy was evaluated.
	Domain string

	err error // why a temperror is one, for the log
}

// String is the result and property of the Authentication-Results
// method result.
func (r Result) String() string {
	property := "smtp.mailfrom="
	if r.Identity == identityHelo {
		property = "smtp.helo="
	}
	return string(r.Result) + " " + property + r.Subject
}

// finding is the result for the results plugin: "pass: mail from
// example.org", "fail (softfail): mail from example.org", "skip (none):
// helo mx.example.org", "err (temperror): mail from example.org".
func (r Result) finding() plugins.Finding {
	f := plugins.Finding{Plugin: Name, Word: string(r.Result)}
	switch r.Result {
	case spflib.Pass:
		f.Outcome = plugins.Pass
	case spflib.Fail, spflib.SoftFail:
		f.Outcome = plugins.Fail
	case spflib.Neutral, spflib.None:
		f.Outcome = plugins.Skip
	default:
		f.Outcome = plugins.Err
	}
	if r.Identity == identityHelo {
		f.Message = "helo " + r.Domain
	} else {
		f.Message = "mail from " + r.Domain
	}
	return f
}

// check evaluates the SPF policy of the domain of sender for the client
// ip (RFC 7208 4: check_host()), asking r within ctx. On the cache-only
// resolver, missed tells that an answer was not cached and the result
// means nothing. err is the library's account of the result.
func check(ctx context.Context, r *dnsx.Resolver, ip netip.Addr, helo, sender string) (res spflib.Result, missed bool, err error) {
	lr := &resolver{r: r, network: "ip6"}
	if ip.Is4() {
		lr.network = "ip4"
	}
	res, err = spflib.CheckHostWithSender(net.IP(ip.AsSlice()), helo, sender,
		spflib.WithContext(ctx), spflib.WithResolver(lr))
	return res, lr.missed, err
}

// resolver is what the SPF library asks the DNS through: the shared
// layer, whose errors it gets as the *net.DNSError it expects.
type resolver struct {
	r       *dnsx.Resolver
	network string // "ip4" or "ip6": RFC 7208 5.3 asks A or AAAA as the client's address is
	missed  bool
}

// fail turns a dnsx error into the library's; an answer missing from the
// cache is a temporary error, which ends the evaluation soon.
func (lr *resolver) fail(err error) error {
	if err == dnsx.ErrNotCached {
		lr.missed = true
		return &net.DNSError{Err: err.Error(), IsTemporary: true}
	}
	return dnsx.NetError(err)
}

func (lr *resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txts, err := lr.r.LookupTXT(ctx, name)
	if err != nil {
		return nil, lr.fail(err)
	}
	return txts, nil
}

func (lr *resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mxs, err := lr.r.LookupMX(ctx, name)
	if err != nil {
		return nil, lr.fail(err)
	}
	out := make([]*net.MX, len(mxs))
	for i, mx := range mxs {
		out[i] = &net.MX{Host: mx.Host + ".", Pref: mx.Pref}
	}
	return out, nil
}

func (lr *resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	addrs, err := lr.r.LookupIP(ctx, lr.network, host)
	if err != nil {
		return nil, lr.fail(err)
	}
	out := make([]net.IPAddr, len(addrs))
	for i, a := range addrs {
		out[i] = net.IPAddr{IP: net.IP(a.AsSlice())}
	}
	return out, nil
}

func (lr *resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "not an IP address", Name: addr, IsNotFound: true}
	}
	names, err := lr.r.LookupAddr(ctx, ip)
	if err != nil {
		return nil, lr.fail(err)
	}
	return names, nil
}

var _ spflib.DNSResolver = (*resolver)(nil)
