package proxyproto

import (
	"errors"
	"net/netip"
)

// Header is a parsed PROXY header.
type Header struct {
	// Version is 1 or 2.
	Version int
	// Local is set for a v2 LOCAL command, a v1 UNKNOWN line and a v2
	// PROXY command over a family other than TCP4 or TCP6: the connection
	// carries no client address, so use the socket's own addresses.
	Local bool
	// Source and Dest are the client's and the proxy's listening address
	// and port; they are valid unless Local.
	Source, Dest netip.AddrPort
	// TLVs are the v2 type-length-value fields in header order; nil when
	// there are none.
	TLVs []TLV
}

// TLV is one v2 type-length-value field (spec 2.2).
type TLV struct {
	Type  byte
	Value []byte
}

// ErrNeedMore means the input is a valid start of a header but not a whole
// one: call Parse again when more bytes have arrived.
var ErrNeedMore = errors.New("proxyproto: incomplete header")

// ErrNotProxy means the input does not start with either version's
// signature, such as a client that speaks SMTP to a PROXY listener.
var ErrNotProxy = errors.New("proxyproto: not a PROXY protocol header")

// Parse reads a PROXY header at the start of in, a connection's first bytes.
// It returns the header and the number of bytes it used when in holds a whole
// header (the connection's own data starts at in[n:]), ErrNeedMore when in is
// a valid but incomplete start, and another error as soon as in cannot be the
// start of a valid header. The result depends only on in, not on how it was
// split across reads, so the caller passes the whole buffer each time.
func Parse(in []byte) (*Header, int, error) {
	if len(in) == 0 {
		return nil, 0, ErrNeedMore
	}
	switch in[0] {
	case v1Sig[0]:
		return parseV1(in)
	case v2Sig[0]:
		return parseV2(in)
	}
	return nil, 0, ErrNotProxy
}
