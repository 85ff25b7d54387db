package proxyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
)

// v2Sig starts every v2 header (spec 2.2).
const v2Sig = "\r\n\r\n\x00\r\nQUIT\n"

const (
	// v2FixedLen is the signature, the version and command byte, the
	// family byte and the length (spec 2.2).
	v2FixedLen = len(v2Sig) + 4
	// v2MaxBody caps the length field so that a whole header is at most
	// MaxV2Header bytes.
	v2MaxBody = MaxV2Header - v2FixedLen

	cmdLocal = 0x0
	cmdProxy = 0x1

	famUnspec = 0x00
	famTCP4   = 0x11
	famTCP6   = 0x21

	tlvCRC32C = 0x03 // PP2_TYPE_CRC32C (spec 2.2.3)
)

var (
	errV2Version = errors.New("proxyproto: v2: version is not 2")
	errV2Command = errors.New("proxyproto: v2: command is not LOCAL or PROXY")
	errV2Family  = errors.New("proxyproto: v2: unknown address family or transport")
	errV2Short   = errors.New("proxyproto: v2: address block shorter than its family needs")
	errV2TLV     = errors.New("proxyproto: v2: TLV runs past the header")
	errV2CRCForm = errors.New("proxyproto: v2: CRC32C TLV is not 4 bytes or appears twice")
	errV2CRC     = errors.New("proxyproto: v2: CRC32C mismatch")
)

// MaxV2Header is the largest v2 header Parse accepts, its 16 fixed bytes
// included. The spec allows 16+65535 bytes, but what load balancers send
// is far smaller: addresses of 12 or 36 bytes (216 for AF_UNIX) and a few
// TLVs (an AWS NLB's VPC endpoint id, a GCP Private Service Connect id, an
// Azure Private Link id, HAProxy's ALPN, authority, unique id of up to 128
// bytes, SSL fields and CRC32C): about 60 bytes from AWS or GCP, about 600
// from HAProxy with every option (see the tests). 4 KiB leaves room for
// several times that, and it is the smallest max_pipeline_buffer, so
// the whole header always fits in what the event loop keeps of a
// connection's unread input.
const MaxV2Header = 4096

// TooLongError is the error of a v2 header whose length field makes it
// longer than MaxV2Header. Len is that length, the 16 fixed bytes
// included.
type TooLongError struct{ Len int }

func (e TooLongError) Error() string {
	return fmt.Sprintf("proxyproto: v2: header of %d bytes is longer than the %d accepted", e.Len, MaxV2Header)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// addrLen is the size of the address block of each family and transport
// byte the spec defines (spec 2.2: "In practice, the following protocol
// bytes are expected"); other bytes must be refused.
func addrLen(fam byte) (int, bool) {
	switch fam {
	case famUnspec:
		return 0, true
	case famTCP4, 0x12: // TCP and UDP over IPv4
		return 4 + 4 + 2 + 2, true
	case famTCP6, 0x22: // TCP and UDP over IPv6
		return 16 + 16 + 2 + 2, true
	case 0x31, 0x32: // UNIX stream and datagram
		return 108 + 108, true
	}
	return 0, false
}

// parseV2 checks each byte as soon as it is in, so that a bad header fails
// on the first byte that makes it bad.
func parseV2(in []byte) (*Header, int, error) {
	for i := 0; i < len(in) && i < len(v2Sig); i++ {
		if in[i] != v2Sig[i] {
			return nil, 0, ErrNotProxy
		}
	}
	if len(in) <= len(v2Sig) {
		return nil, 0, ErrNeedMore
	}
	verCmd := in[len(v2Sig)]
	if verCmd>>4 != 2 {
		return nil, 0, errV2Version
	}
	cmd := verCmd & 0x0f
	if cmd != cmdLocal && cmd != cmdProxy {
		return nil, 0, errV2Command
	}
	if len(in) == len(v2Sig)+1 {
		return nil, 0, ErrNeedMore
	}
	fam := in[len(v2Sig)+1]
	alen, ok := addrLen(fam)
	if !ok {
		return nil, 0, errV2Family
	}
	if len(in) < v2FixedLen {
		return nil, 0, ErrNeedMore
	}
	// The length is judged when both its bytes are in, so that the error
	// can say how long the header would be.
	body := int(binary.BigEndian.Uint16(in[len(v2Sig)+2:]))
	if body > v2MaxBody {
		return nil, 0, TooLongError{Len: v2FixedLen + body}
	}
	total := v2FixedLen + body
	h := &Header{Version: 2, Local: true}
	if cmd == cmdLocal || fam == famUnspec {
		// LOCAL: "discard the protocol block including the family";
		// UNSPEC: "the receiver should ignore address information".
		if len(in) < total {
			return nil, 0, ErrNeedMore
		}
		return h, total, nil
	}
	if body < alen {
		return nil, 0, errV2Short
	}
	seen := in[:min(len(in), total)]
	crcAt, err := checkTLVs(seen, v2FixedLen+alen, total)
	if err != nil {
		return nil, 0, err
	}
	if len(in) < total {
		return nil, 0, ErrNeedMore
	}
	if crcAt > 0 && !crcMatches(seen, crcAt) {
		return nil, 0, errV2CRC
	}
	a := in[v2FixedLen:]
	switch fam {
	case famTCP4:
		h.Local = false
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:]))
	case famTCP6:
		h.Local = false
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:]))
	}
	h.TLVs = copyTLVs(seen[v2FixedLen+alen:])
	return h, total, nil
}

// checkTLVs checks the framing of the TLVs in b[start:end] as far as b
// reaches, which may be short of end: each TLV is a type byte, a big-endian
// length and that many bytes, and together they fill the block exactly.
// It returns the offset of the CRC32C value, or 0 if none was seen.
func checkTLVs(b []byte, start, end int) (crcAt int, err error) {
	for p := start; p < end; {
		if end-p < 3 {
			return 0, errV2TLV // too short for a type and a length
		}
		if p+1 >= len(b) {
			return crcAt, nil
		}
		n := int(b[p+1]) << 8 // the high byte alone is a lower bound
		if p+2 < len(b) {
			n |= int(b[p+2])
		}
		if p+3+n > end {
			return 0, errV2TLV
		}
		if p+2 >= len(b) {
			return crcAt, nil
		}
		if b[p] == tlvCRC32C {
			if n != 4 || crcAt > 0 {
				return 0, errV2CRCForm
			}
			crcAt = p + 3
		}
		p += 3 + n
	}
	return crcAt, nil
}

// crcMatches reports whether the CRC32C value at hdr[at:at+4] is the
// checksum of hdr with those 4 bytes zeroed (spec 2.2.3).
func crcMatches(hdr []byte, at int) bool {
	sum := crc32.Update(0, castagnoli, hdr[:at])
	sum = crc32.Update(sum, castagnoli, []byte{0, 0, 0, 0})
	sum = crc32.Update(sum, castagnoli, hdr[at+4:])
	return sum == binary.BigEndian.Uint32(hdr[at:])
}

// copyTLVs splits b, whose framing checkTLVs accepted, into TLVs whose
// values share one copy of b, each capped so that appending to one cannot
// overwrite the next.
func copyTLVs(b []byte) []TLV {
	if len(b) == 0 {
		return nil
	}
	b = append([]byte(nil), b...)
	var out []TLV
	for len(b) > 0 {
		n := 3 + int(binary.BigEndian.Uint16(b[1:]))
		out = append(out, TLV{Type: b[0], Value: b[3:n:n]})
		b = b[n:]
	}
	return out
}
