package fcrdns

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"loopmx/internal/dnsx"
	"loopmx/plugins"
)

// outcome is what the check found about one client.
type outcome struct {
	names    []string // the PTR names, at most maxNames
	verified string   // the first name whose addresses hold the client's
	generic  string   // why the client's name looks generic; "" when it does not
	err      error    // a temporary failure that left the question open
}

// check looks up the PTR names of ip and confirms each forward, in order,
// until one resolves to ip (RFC 8601's iprev, Postfix's
// reject_unknown_client_hostname). A temporary failure matters only when
// no name was confirmed. On the cache-only resolver it returns
// dnsx.ErrNotCached as soon as an answer is missing.
func (p *FCrDNS) check(ctx context.Context, r *dnsx.Resolver, ip netip.Addr) (outcome, error) {
	var o outcome
	names, err := r.LookupAddr(ctx, ip)
	switch {
	case err == dnsx.ErrNotCached:
		return o, err
	case dnsx.IsNotFound(err):
		return o, nil
	case err != nil:
		o.err = err
		return o, nil
	}
	o.names = names[:min(len(names), maxNames)]
	network := "ip6"
	if ip.Is4() {
		network = "ip4"
	}
	for _, name := range o.names {
		addrs, err := r.LookupIP(ctx, network, name)
		if err == dnsx.ErrNotCached {
			return o, err
		}
		if err != nil {
			if dnsx.IsTemporary(err) && o.err == nil {
				o.err = err
			}
			continue
		}
		if slices.Contains(addrs, ip) {
			o.verified = name
			o.err = nil
			break
		}
	}
	o.generic = p.genericWhy(o.name(), ip)
	return o, nil
}

// name is the client's name as far as the check knows it: the confirmed
// one, else the first PTR name.
func (o outcome) name() string {
	if o.verified != "" || len(o.names) == 0 {
		return o.verified
	}
	return o.names[0]
}

// genericWhy says why name looks like the generic name of a dynamic or
// customer address ("" when it does not): it holds the client's IPv4
// address (192-0-2-1.example.net, 1.2.0.192.example.net,
// c0000201.example.net), or it matches a generic pattern.
func (p *FCrDNS) genericWhy(name string, ip netip.Addr) string {
	if name == "" {
		return ""
	}
	if p.genericAddress && ip.Is4() && holdsAddress(name, ip) {
		return name + " holds the client's address"
	}
	for _, re := range p.patterns {
		if m := re.FindString(name); m != "" {
			return name + " looks generic (" + strconv.Quote(m) + ")"
		}
	}
	return ""
}

// holdsAddress reports whether name holds ip's four octets as numbers in
// a row, in order or reversed, whatever separates them, or ip as eight
// hex digits.
func holdsAddress(name string, ip netip.Addr) bool {
	b := ip.As4()
	if strings.Contains(name, hex.EncodeToString(b[:])) {
		return true
	}
	var numbers []int
	for field := range strings.FieldsFuncSeq(name, func(r rune) bool { return r < '0' || r > '9' }) {
		n, err := strconv.Atoi(field)
		if err != nil || len(field) > 3 {
			n = -1
		}
		numbers = append(numbers, n)
	}
	for i := 0; i+4 <= len(numbers); i++ {
		w := numbers[i : i+4]
		forward := w[0] == int(b[0]) && w[1] == int(b[1]) && w[2] == int(b[2]) && w[3] == int(b[3])
		backward := w[0] == int(b[3]) && w[1] == int(b[2]) && w[2] == int(b[1]) && w[3] == int(b[0])
		if forward || backward {
			return true
		}
	}
	return false
}

// finding is the outcome for the results plugin: pass with the confirmed
// name; fail without a PTR or with names that do not resolve back; err
// when a lookup failed.
func (o outcome) finding() plugins.Finding {
	f := plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: o.String()}
	switch {
	case o.verified != "":
		f.Outcome = plugins.Pass
	case o.err != nil:
		f.Outcome = plugins.Err
	}
	return f
}

// String is how the note and the finding read.
func (o outcome) String() string {
	switch {
	case o.verified != "":
		return o.verified
	case o.err != nil:
		return "lookup failed"
	case len(o.names) == 0:
		return "no PTR record"
	}
	return strings.Join(o.names, ", ") + " " + pluralDo(len(o.names)) + " not resolve to the client's address"
}

func pluralDo(n int) string {
	if n == 1 {
		return "does"
	}
	return "do"
}

var _ fmt.Stringer = outcome{}
