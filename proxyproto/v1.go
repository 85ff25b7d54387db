package proxyproto

import (
	"errors"
	"net/netip"
)

// v1Sig starts every v1 line (spec 2.1).
const v1Sig = "PROXY "

// v1MaxLen is the longest v1 line, CRLF included (spec 2.1: "PROXY
// UNKNOWN" with two full IPv6 addresses and ports is 107 bytes).
const v1MaxLen = 107

var (
	errV1Proto   = errors.New("proxyproto: v1: protocol is not TCP4, TCP6 or UNKNOWN")
	errV1Src     = errors.New("proxyproto: v1: bad source address")
	errV1Dst     = errors.New("proxyproto: v1: bad destination address")
	errV1SrcPort = errors.New("proxyproto: v1: bad source port")
	errV1DstPort = errors.New("proxyproto: v1: bad destination port")
	errV1Fields  = errors.New("proxyproto: v1: wrong number of fields")
	errV1TooLong = errors.New("proxyproto: v1: line longer than 107 bytes")
	errV1BareLF  = errors.New("proxyproto: v1: LF without CR")
	errV1BareCR  = errors.New("proxyproto: v1: CR without LF")
)

// The parts of a v1 line, in order.
const (
	partSig     = iota // "PROXY "
	partProto          // TCP4, TCP6 or UNKNOWN
	partSrc            // source address
	partDst            // destination address
	partSrcPort        // source port
	partDstPort        // destination port
	partIgnored        // the rest of an UNKNOWN line
	partLF             // the LF after the CR
)

// The protocol words of a v1 line.
const (
	protoTCP4    = "TCP4"
	protoTCP6    = "TCP6"
	protoUnknown = "UNKNOWN"
)

// protoWords pairs each protocol word with the fewest bytes that can follow
// it: the other fields at their shortest and the CRLF.
var protoWords = [...]struct {
	word string
	rest int
}{
	{protoTCP4, len(" 0.0.0.0 0.0.0.0 0 0\r\n")},
	{protoTCP6, len(" :: :: 0 0\r\n")},
	{protoUnknown, len("\r\n")},
}

// v1Parser reads a v1 line one byte at a time, so that the first byte no
// valid line could hold is the one that fails, however the line was split
// across reads.
type v1Parser struct {
	part  int       // the part the next byte belongs to
	start int       // offset of the current part in the line
	proto string    // the protocol word, once read
	addr  [2][2]int // start and end offsets of the two addresses
	v4    dotQuad   // the address being read, for TCP4
	v6    colonHex  // the address being read, for TCP6
	port  decPort   // the port being read
	ports [2]uint16 // the ports read
}

// parseV1 is Parse for input that starts like a v1 line. After each byte it
// also fails the line if even its shortest completion would pass 107 bytes.
func parseV1(in []byte) (*Header, int, error) {
	var p v1Parser
	for i := range in {
		if err := p.step(in, i); err != nil {
			return nil, 0, err
		}
		if p.part > partLF { // the LF was read
			h, err := p.header(in)
			if err != nil {
				return nil, 0, err
			}
			return h, i + 1, nil
		}
		if i+1+p.need(in[:i+1]) > v1MaxLen {
			return nil, 0, errV1TooLong
		}
	}
	return nil, 0, ErrNeedMore
}

// step reads line[i], the next byte.
func (p *v1Parser) step(line []byte, i int) error {
	c := line[i]
	if c == '\n' && p.part != partLF {
		return errV1BareLF
	}
	switch p.part {
	case partSig:
		if c != v1Sig[i] {
			return ErrNotProxy
		}
		if i == len(v1Sig)-1 {
			p.next(i)
		}
	case partProto:
		if c != ' ' && c != '\r' {
			if _, ok := protoNeed(line[p.start : i+1]); !ok {
				return errV1Proto
			}
			return nil
		}
		switch p.proto = protoWord(line[p.start:i]); {
		case p.proto == protoUnknown && c == ' ':
			p.part = partIgnored
		case p.proto == protoUnknown:
			p.part = partLF
		case p.proto == "":
			return errV1Proto
		case c == '\r':
			return errV1Fields
		default:
			p.next(i)
		}
	case partSrc, partDst:
		if c != ' ' && c != '\r' {
			if !p.addrStep(c) {
				return p.partErr()
			}
			return nil
		}
		if p.addrNeed() != 0 {
			return p.partErr()
		}
		if c == '\r' {
			return errV1Fields
		}
		p.addr[p.part-partSrc] = [2]int{p.start, i}
		p.next(i)
	case partSrcPort, partDstPort:
		if c != ' ' && c != '\r' {
			if !p.port.step(c) {
				return p.partErr()
			}
			return nil
		}
		if p.port.need() != 0 {
			return p.partErr()
		}
		if (c == '\r') != (p.part == partDstPort) {
			return errV1Fields
		}
		p.ports[p.part-partSrcPort] = uint16(p.port.value)
		if c == '\r' {
			p.part = partLF
		} else {
			p.next(i)
		}
	case partIgnored:
		if c == '\r' {
			p.part = partLF
		}
	case partLF:
		if c != '\n' {
			return errV1BareCR
		}
		p.part++
	}
	return nil
}

// next starts the part after the one that line[i] ended.
func (p *v1Parser) next(i int) {
	p.part++
	p.start = i + 1
	p.v4, p.v6, p.port = dotQuad{}, colonHex{}, decPort{}
}

// need is the fewest bytes, CRLF included, that could still complete a line
// that starts with the given bytes.
func (p *v1Parser) need(line []byte) int {
	const port, crlf = 1, 2 // "0", "\r\n"
	switch p.part {
	case partSig:
		return len(v1Sig) - len(line) + len(protoUnknown) + crlf
	case partProto:
		n, _ := protoNeed(line[p.start:])
		return n
	case partSrc:
		minAddr := len("::")
		if p.proto == protoTCP4 {
			minAddr = len("0.0.0.0")
		}
		return p.addrNeed() + 1 + minAddr + 1 + port + 1 + port + crlf
	case partDst:
		return p.addrNeed() + 1 + port + 1 + port + crlf
	case partSrcPort:
		return p.port.need() + 1 + port + crlf
	case partDstPort:
		return p.port.need() + crlf
	case partIgnored:
		return crlf
	}
	return 1 // the LF
}

func (p *v1Parser) addrStep(c byte) bool {
	if p.proto == protoTCP4 {
		return p.v4.step(c)
	}
	return p.v6.step(c)
}

func (p *v1Parser) addrNeed() int {
	if p.proto == protoTCP4 {
		return p.v4.need()
	}
	return p.v6.need()
}

// partErr is the error for a bad byte in the current field.
func (p *v1Parser) partErr() error {
	switch p.part {
	case partSrc:
		return errV1Src
	case partDst:
		return errV1Dst
	case partSrcPort:
		return errV1SrcPort
	}
	return errV1DstPort
}

// protoNeed reports whether w starts a protocol word and, if so, the
// fewest bytes that complete the line: the rest of the word and what must
// follow it.
func protoNeed(w []byte) (int, bool) {
	n, ok := 0, false
	for _, p := range protoWords {
		if len(w) <= len(p.word) && p.word[:len(w)] == string(w) {
			rest := len(p.word) - len(w) + p.rest
			if !ok || rest < n {
				n = rest
			}
			ok = true
		}
	}
	return n, ok
}

// protoWord returns the protocol word w spells, or "".
func protoWord(w []byte) string {
	for _, p := range protoWords {
		if p.word == string(w) {
			return p.word
		}
	}
	return ""
}

// header builds the Header of the whole line, which step has checked.
func (p *v1Parser) header(line []byte) (*Header, error) {
	h := &Header{Version: 1}
	if p.proto == protoUnknown {
		h.Local = true
		return h, nil
	}
	var addrs [2]netip.Addr
	for i, a := range p.addr {
		ip, err := netip.ParseAddr(string(line[a[0]:a[1]]))
		if err != nil || ip.Is4() != (p.proto == protoTCP4) || ip.Zone() != "" {
			// step checked the field already; this only guards the
			// two grammars against drifting apart.
			return nil, [2]error{errV1Src, errV1Dst}[i]
		}
		addrs[i] = ip
	}
	h.Source = netip.AddrPortFrom(addrs[0], p.ports[0])
	h.Dest = netip.AddrPortFrom(addrs[1], p.ports[1])
	return h, nil
}
