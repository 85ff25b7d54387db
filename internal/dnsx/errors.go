package dnsx

import (
	"errors"
	"net"

	"github.com/miekg/dns"
)

// Kind is why a lookup gave no records.
type Kind uint8

// The kinds of failed lookups. NXDomain, NoData and BadName are answers
// (the name or the records do not exist); ServFail, Refused and Timeout
// are temporary: asking again later may give an answer.
const (
	// NXDomain: the name does not exist (RCODE 3).
	NXDomain Kind = iota + 1
	// NoData: the name exists but has no records of the type asked
	// (RFC 2308 2.2).
	NoData
	// BadName: the name cannot exist in the DNS (an empty label, a label
	// over 63 octets, a name over 255); nothing was asked.
	BadName
	// ServFail: every server answered SERVFAIL (RCODE 2).
	ServFail
	// Refused: every server refused the query or answered with another
	// error code (REFUSED, NOTIMP, FORMERR) or a malformed message.
	Refused
	// Timeout: no server answered in time, or the lookup's budget ran
	// out first.
	Timeout
)

// String returns the kind as the counters and logs name it.
func (k Kind) String() string {
	switch k {
	case NXDomain:
		return "nxdomain"
	case NoData:
		return "nodata"
	case BadName:
		return "bad name"
	case ServFail:
		return "servfail"
	case Refused:
		return "refused"
	case Timeout:
		return "timeout"
	}
	return "unknown"
}

// Error is a lookup that gave no records.
type Error struct {
	// Name is the name asked, as a fully qualified name in lower case.
	Name string
	// Type is the record type asked (dns.TypeA, ...).
	Type uint16
	// Kind is why no records came.
	Kind Kind
}

// Error reads "dns: example.org. MX: nxdomain".
func (e *Error) Error() string {
	return "dns: " + e.Name + " " + dns.TypeToString[e.Type] + ": " + e.Kind.String()
}

// NotFound reports whether the DNS answered that there is nothing: the
// name does not exist, it has no records of the type, or it cannot exist.
func (e *Error) NotFound() bool { return e.Kind == NXDomain || e.Kind == NoData || e.Kind == BadName }

// Temporary reports whether the lookup failed for now (SERVFAIL, a
// refusal, a timeout), so that the question has no answer yet.
func (e *Error) Temporary() bool { return !e.NotFound() }

// IsNotFound reports whether err is an Error saying that nothing exists.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.NotFound()
}

// IsTemporary reports whether err is an Error that may go away if asked
// again later. ErrNotCached is not temporary: it is no DNS answer at all.
func IsTemporary(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Temporary()
}

// ErrNotCached is what a cache-only Resolver (Resolver.CacheOnly) answers
// when a lookup would need to ask the network.
var ErrNotCached = errors.New("dns: not in the cache")

// NetError turns err into the *net.DNSError that code written for
// net.Resolver expects (IsNotFound, IsTimeout, IsTemporary); it returns
// other errors, ErrNotCached among them, as they are.
func NetError(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	name := e.Name
	if len(name) > 1 {
		name = name[:len(name)-1]
	}
	return &net.DNSError{
		Err:         e.Kind.String(),
		Name:        name,
		IsNotFound:  e.NotFound(),
		IsTimeout:   e.Kind == Timeout,
		IsTemporary: e.Temporary(),
	}
}
