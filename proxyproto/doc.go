// Package proxyproto reads the PROXY protocol header (HAProxy's
// proxy-protocol.txt, versions 1 and 2) that a load balancer puts in front
// of a relayed connection to say who the real client is.
//
// # What it does
//
// Parse looks at the first bytes a connection sent and says one of three
// things: here is the whole header and how many bytes it took, the bytes so
// far are a valid start but the header is not whole yet (ErrNeedMore), or
// the bytes can never become a valid header (any other error). It does no
// I/O, starts no goroutines and reads no clock; the event loop calls it again
// with the grown buffer after every read, and applies its own timeout.
//
//	h, n, err := proxyproto.Parse(buf)
//	switch {
//	case errors.Is(err, proxyproto.ErrNeedMore):
//		// read more, then call Parse again with the grown buffer
//	case err != nil:
//		// log err and close the connection
//	default:
//		// h.Source is the client unless h.Local; the SMTP dialog
//		// starts at buf[n:]
//	}
//
// # Refusing early
//
// The spec (section 2.1) asks receivers to abort as soon as a header cannot
// match. Parse fails on the first byte that no valid header could contain,
// not when the line or block ends: "EHLO" fails at the "E", "PROXY TCP4
// 1.2.3.4 5.6.7.8 65536" at the "6" that makes the port too big, and a v2
// length over the cap once both its bytes are in. A client that speaks SMTP to a
// PROXY listener is therefore refused at once instead of waiting for the
// timeout. The same bytes give the same answer however they are split
// across reads, and once Parse has failed it fails with the same error for
// any longer input.
//
// # Version 1
//
// A v1 header is one line, "PROXY TCP4|TCP6 src dst sport dport\r\n" or
// "PROXY UNKNOWN ...\r\n", of at most 107 bytes with the CRLF (section 2.1).
// Parse holds it to the letter: single spaces, a bare CR or LF is an error,
// IPv4 addresses are dotted quads without leading zeros, ports are 0 to 65535
// without leading zeros, and the address family must match the protocol
// word. IPv6 addresses follow RFC 4291 2.2, including "::" and a trailing
// dotted IPv4 address (inet_ntop writes "::ffff:192.0.2.1" for mapped
// addresses); zones are refused. A line that could only be completed by
// going past 107 bytes fails as soon as that is certain. For UNKNOWN the
// rest of the line is ignored and the header is Local.
//
// # Version 2
//
// A v2 header is the 12-byte signature, a version and command byte, a family
// and transport byte, a big-endian length and that many bytes of addresses
// and TLVs (section 2.2). Parse accepts version 2 only, the commands LOCAL
// and PROXY, and the seven family bytes the spec defines; anything else is
// an error. The whole header may not exceed MaxV2Header (4096) bytes, which
// is far more than load balancers send (see MaxV2Header); a longer one
// fails with a TooLongError that says its length. For PROXY the block must
// hold the family's addresses.
//
// LOCAL means the proxy itself opened the connection (a health check): the
// header is Local and the block is skipped unread, as the spec says. PROXY
// over TCP4 or TCP6 gives Source and Dest. PROXY with AF_UNSPEC, UDP or
// AF_UNIX falls back to Local, which is what the spec asks of a receiver
// that does not support those; their TLVs are still read when the address
// size is known (all but AF_UNSPEC).
//
// TLVs are returned in order, type and raw value, without interpreting them,
// with one exception: a PP2_TYPE_CRC32C TLV (section 2.2.3) must be 4 bytes
// and match the CRC-32C of the whole header, or Parse fails. Framing errors
// (a TLV running past the block, or 1 or 2 stray bytes at its end) fail as
// soon as they are visible.
//
// IPv4-mapped IPv6 addresses are returned as given; call Unmap if wanted.
//
// The Header and its TLV values never share memory with the input, so the
// caller may reuse its buffer.
package proxyproto
