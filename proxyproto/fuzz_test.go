package proxyproto

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// FuzzParse checks, for any input, that Parse does not panic, never claims
// more bytes than it was given, gives the same answer for every prefix
// once it has decided, and agrees with slow reference parsers written from
// the spec whenever the input is whole. The seeds in testdata/fuzz/FuzzParse
// are the headers of the table tests and their near misses.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > MaxV2Header+64 {
			return // longer than any header; the prefix loop is quadratic
		}
		h, n, err := Parse(in)
		if (h == nil) == (err == nil) || n < 0 || n > len(in) || (err == nil) != (n > 0) {
			t.Fatalf("Parse(%q) = %s, %d, %v", in, show(h), n, err)
		}

		// Prefixes: ErrNeedMore, then the final answer from the byte that
		// decided it on.
		decided := -1
		for k := 0; k <= len(in); k++ {
			hk, nk, errk := Parse(in[:k])
			if errk == ErrNeedMore && decided < 0 {
				continue
			}
			if decided < 0 {
				decided = k
			}
			if errk != err || nk != n || !sameHeader(hk, h) {
				t.Fatalf("first %d bytes: %s, %d, %v; all %d: %s, %d, %v (decided at %d)",
					k, show(hk), nk, errk, len(in), show(h), n, err, decided)
			}
		}
		if err == nil && decided != n {
			t.Fatalf("header of %d bytes decided at %d", n, decided)
		}

		// The header keeps its values when the input changes.
		if h != nil {
			before := show(h)
			scratch := bytes.Clone(in)
			h2, _, _ := Parse(scratch)
			for i := range scratch {
				scratch[i] ^= 0xff
			}
			if show(h2) != before {
				t.Fatalf("header changed with its input: %s, was %s", show(h2), before)
			}
		}

		var ref *Header
		var refN int
		var known bool
		switch {
		case len(in) > 0 && in[0] == 'P':
			ref, refN, known = refV1(in)
		case len(in) > 0 && in[0] == '\r':
			ref, refN, known = refV2(in)
		}
		if known && (refN != n || !sameHeader(ref, h) || (ref == nil) != (err != nil) || err == ErrNeedMore) {
			t.Fatalf("Parse(%q) = %s, %d, %v; reference says %s, %d", in, show(h), n, err, show(ref), refN)
		}
	})
}

// refV1 decides a v1 input once its line has ended, by splitting the line
// on spaces and asking the standard library about each field. known is
// false while the input does not yet say; ref is nil for a bad header.
func refV1(in []byte) (ref *Header, n int, known bool) {
	end := bytes.IndexAny(in, "\r\n")
	switch {
	case end < 0:
		return nil, 0, len(in) >= v1MaxLen
	case in[end] == '\n' || end+2 > v1MaxLen:
		return nil, 0, true
	case end+1 == len(in):
		return nil, 0, false
	case in[end+1] != '\n':
		return nil, 0, true
	}
	f := strings.Split(string(in[:end]), " ")
	if len(f) < 2 || f[0] != "PROXY" {
		return nil, 0, true
	}
	if f[1] == "UNKNOWN" {
		return &Header{Version: 1, Local: true}, end + 2, true
	}
	if len(f) != 6 || f[1] != "TCP4" && f[1] != "TCP6" {
		return nil, 0, true
	}
	var addrs [2]netip.AddrPort
	for i := range addrs {
		a, err := netip.ParseAddr(f[2+i])
		if err != nil || a.Zone() != "" || a.Is4() != (f[1] == "TCP4") || !validPort(f[4+i]) {
			return nil, 0, true
		}
		p, _ := strconv.ParseUint(f[4+i], 10, 16)
		addrs[i] = netip.AddrPortFrom(a, uint16(p))
	}
	return &Header{Version: 1, Source: addrs[0], Dest: addrs[1]}, end + 2, true
}

// refV2 decides a v2 input once the whole header is in, reading the block
// in one go as the spec lays it out.
func refV2(in []byte) (ref *Header, n int, known bool) {
	if !bytes.HasPrefix(in, []byte(v2Sig)) {
		return nil, 0, !strings.HasPrefix(v2Sig, string(in))
	}
	if len(in) < v2FixedLen {
		return nil, 0, false
	}
	ver, cmd, fam := in[12]>>4, in[12]&0xf, in[13]
	body := int(binary.BigEndian.Uint16(in[14:]))
	alen := map[byte]int{0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
	if _, ok := alen[fam]; !ok || ver != 2 || cmd > 1 || 16+body > MaxV2Header {
		return nil, 0, true
	}
	total := 16 + body
	if len(in) < total {
		return nil, 0, false
	}
	h := &Header{Version: 2, Local: true}
	if cmd == 0 || fam == 0 {
		return h, total, true
	}
	if body < alen[fam] {
		return nil, 0, true
	}
	crcs := 0
	for rest := in[16+alen[fam] : total]; len(rest) > 0; {
		if len(rest) < 3 || 3+int(binary.BigEndian.Uint16(rest[1:])) > len(rest) {
			return nil, 0, true
		}
		l := int(binary.BigEndian.Uint16(rest[1:]))
		x := TLV{Type: rest[0], Value: rest[3 : 3+l]}
		if x.Type == 0x03 {
			zeroed := bytes.Clone(in[:total])
			at := total - len(rest) + 3
			copy(zeroed[at:], "\x00\x00\x00\x00")
			if crcs++; crcs > 1 || l != 4 ||
				crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli)) != binary.BigEndian.Uint32(x.Value) {
				return nil, 0, true
			}
		}
		h.TLVs = append(h.TLVs, x)
		rest = rest[3+l:]
	}
	a := in[16:]
	switch fam {
	case 0x11:
		h.Local = false
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), binary.BigEndian.Uint16(a[8:]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:])), binary.BigEndian.Uint16(a[10:]))
	case 0x21:
		h.Local = false
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[:16])), binary.BigEndian.Uint16(a[32:]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:])), binary.BigEndian.Uint16(a[34:]))
	}
	return h, total, true
}
