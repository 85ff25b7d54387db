package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// smtp is what a client says after the header; Parse must leave it alone.
const smtp = "EHLO client.example\r\n"

// v2 builds a v2 header from its command byte, family byte and block.
func v2(verCmd, fam byte, block ...[]byte) []byte {
	body := bytes.Join(block, nil)
	b := append([]byte(v2Sig), verCmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// tlv frames one TLV.
func tlv(typ byte, value string) []byte {
	b := binary.BigEndian.AppendUint16([]byte{typ}, uint16(len(value)))
	return append(b, value...)
}

// ip4Block and ip6Block are address blocks (spec 2.2, union proxy_addr).
func ip4Block(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func ip6Block(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

// withCRC fills in the value of the CRC32C TLV of hdr, which must be the
// last TLV and hold zeros (spec 2.2.3).
func withCRC(hdr []byte) []byte {
	sum := crc32.Checksum(hdr, crc32.MakeTable(crc32.Castagnoli))
	binary.BigEndian.PutUint32(hdr[len(hdr)-4:], sum)
	return hdr
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func tcp(v int, src, dst string, tlvs ...TLV) *Header {
	return &Header{Version: v, Source: ap(src), Dest: ap(dst), TLVs: tlvs}
}

func local(v int, tlvs ...TLV) *Header {
	return &Header{Version: v, Local: true, TLVs: tlvs}
}

// Addresses of the documentation ranges, in the widest text forms.
const (
	v6Full = "2001:0db8:ffff:ffff:ffff:ffff:ffff:ffff"       // 39 bytes
	v6Tail = "0000:0000:0000:0000:0000:ffff:255.255.255.255" // 45 bytes
	v6At36 = "2001:0db8:ffff:ffff:ffff:ffff:fff:ff"          // 36 bytes
)

var valid = []struct {
	name string
	in   string
	want *Header
}{
	{"v1 TCP4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
		tcp(1, "192.0.2.1:56324", "198.51.100.2:25")},
	{"v1 TCP4 widest", "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
		tcp(1, "255.255.255.255:65535", "255.255.255.255:65535")},
	{"v1 TCP4 zeros", "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
		tcp(1, "0.0.0.0:0", "0.0.0.0:0")},
	{"v1 TCP6", "PROXY TCP6 2001:db8::1 2001:db8::2 1234 25\r\n",
		tcp(1, "[2001:db8::1]:1234", "[2001:db8::2]:25")},
	{"v1 TCP6 full form, upper case", "PROXY TCP6 " + v6Full + " 2001:DB8:0:0:0:0:0:ABCD 65535 587\r\n",
		tcp(1, "["+v6Full+"]:65535", "[2001:db8::abcd]:587")},
	{"v1 TCP6 shortest", "PROXY TCP6 :: ::1 0 0\r\n",
		tcp(1, "[::]:0", "[::1]:0")},
	{"v1 TCP6 ellipsis for one group", "PROXY TCP6 1:2:3:4:5:6:7:: ::2:3:4:5:6:7:8 1 2\r\n",
		tcp(1, "[1:2:3:4:5:6:7:0]:1", "[0:2:3:4:5:6:7:8]:2")},
	{"v1 TCP6 mapped IPv4 as inet_ntop writes it", "PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.2 4000 25\r\n",
		tcp(1, "[::ffff:192.0.2.1]:4000", "[::ffff:198.51.100.2]:25")},
	{"v1 TCP6 107 bytes", "PROXY TCP6 " + v6Tail + " " + v6At36 + " 65535 65535\r\n",
		tcp(1, "["+v6Tail+"]:65535", "["+v6At36+"]:65535")},
	{"v1 UNKNOWN short form", "PROXY UNKNOWN\r\n", local(1)},
	{"v1 UNKNOWN with addresses", "PROXY UNKNOWN 2001:db8::1 2001:db8::2 1234 25\r\n", local(1)},
	{"v1 UNKNOWN with anything", "PROXY UNKNOWN  \t\x00\xff not:addresses \r\n", local(1)},
	{"v1 UNKNOWN 107 bytes", "PROXY UNKNOWN " + strings.Repeat("x", 91) + "\r\n", local(1)},

	{"v2 PROXY TCP4", string(v2(0x21, famTCP4, ip4Block("192.0.2.1", "198.51.100.2", 56324, 25))),
		tcp(2, "192.0.2.1:56324", "198.51.100.2:25")},
	{"v2 PROXY TCP4 with TLVs", string(v2(0x21, famTCP4, ip4Block("192.0.2.1", "198.51.100.2", 1, 25),
		tlv(0x02, "mx.example"), tlv(0x04, ""), tlv(0xe0, "\x00\r\n"))),
		tcp(2, "192.0.2.1:1", "198.51.100.2:25",
			TLV{0x02, []byte("mx.example")}, TLV{0x04, []byte{}}, TLV{0xe0, []byte("\x00\r\n")})},
	{"v2 PROXY TCP6", string(v2(0x21, famTCP6, ip6Block("2001:db8::1", "2001:db8::2", 1234, 25))),
		tcp(2, "[2001:db8::1]:1234", "[2001:db8::2]:25")},
	{"v2 PROXY TCP6 with TLVs and CRC32C", string(withCRC(v2(0x21, famTCP6, ip6Block("::ffff:192.0.2.1", "2001:db8::2", 65535, 465),
		tlv(0x05, "conn-42"), tlv(tlvCRC32C, "\x00\x00\x00\x00")))),
		tcp(2, "[::ffff:192.0.2.1]:65535", "[2001:db8::2]:465",
			TLV{0x05, []byte("conn-42")}, TLV{tlvCRC32C, crcOf(v2(0x21, famTCP6, ip6Block("::ffff:192.0.2.1", "2001:db8::2", 65535, 465),
				tlv(0x05, "conn-42"), tlv(tlvCRC32C, "\x00\x00\x00\x00")))})},
	// The limit was 2264 bytes, which refused HAProxy headers with
	// custom TLVs.
	{"v2 PROXY TCP4 largest header", string(v2(0x21, famTCP4, ip4Block("192.0.2.1", "192.0.2.2", 1, 2),
		tlv(0x04, strings.Repeat("n", v2MaxBody-12-3)))),
		tcp(2, "192.0.2.1:1", "192.0.2.2:2", TLV{0x04, []byte(strings.Repeat("n", v2MaxBody-12-3))})},
	{"v2 AWS NLB with its VPC endpoint id", string(awsNLB), tcp(2, "192.0.2.1:40000", "198.51.100.2:25", awsTLV)},
	{"v2 GCP Private Service Connect id", string(gcpPSC), tcp(2, "[2001:db8::1]:40000", "[2001:db8::2]:25", gcpTLV)},
	{"v2 HAProxy with every TLV it sends", string(haproxyFull), haproxyFullHeader},
	{"v2 LOCAL", string(v2(0x20, famUnspec)), local(2)},
	{"v2 LOCAL skips its block unread", string(v2(0x20, famTCP4, ip4Block("192.0.2.1", "192.0.2.2", 1, 2), []byte{0xff})),
		local(2)},
	{"v2 LOCAL ignores a short block", string(v2(0x20, famTCP6, []byte{1, 2, 3})), local(2)},
	{"v2 PROXY UNSPEC", string(v2(0x21, famUnspec)), local(2)},
	{"v2 PROXY UNSPEC ignores its block", string(v2(0x21, famUnspec, []byte("anything"))), local(2)},
	{"v2 PROXY UDP4 falls back to local", string(v2(0x21, 0x12, ip4Block("192.0.2.1", "192.0.2.2", 53, 53), tlv(0x01, "dns"))),
		local(2, TLV{0x01, []byte("dns")})},
	{"v2 PROXY UDP6 falls back to local", string(v2(0x21, 0x22, ip6Block("::1", "::2", 53, 53))), local(2)},
	{"v2 PROXY UNIX stream falls back to local", string(v2(0x21, 0x31, make([]byte, 216))), local(2)},
	{"v2 PROXY UNIX datagram falls back to local", string(v2(0x21, 0x32, make([]byte, 216), tlv(0x30, "ns1"))),
		local(2, TLV{0x30, []byte("ns1")})},
}

// Headers as load balancers send them: an AWS Network Load Balancer
// behind a VPC endpoint service (PP2_TYPE_AWS 0xEA, subtype 0x01 and the
// endpoint id), a GCP Private Service Connect attachment (0xE0 and the
// 8-byte connection id), and HAProxy with send-proxy-v2 and every option
// that adds a TLV (ALPN, authority, unique id of the 128 bytes it allows,
// SSL with its sub-TLVs, network namespace, CRC32C).
var (
	awsTLV = TLV{0xea, []byte("\x01vpce-08d2bf15fac5001c9")}
	awsNLB = v2(0x21, famTCP4, ip4Block("192.0.2.1", "198.51.100.2", 40000, 25), tlv(awsTLV.Type, string(awsTLV.Value)))

	gcpTLV = TLV{0xe0, []byte("\x00\x00\x01\x8c\x2f\x6a\x00\x07")}
	gcpPSC = v2(0x21, famTCP6, ip6Block("2001:db8::1", "2001:db8::2", 40000, 25), tlv(gcpTLV.Type, string(gcpTLV.Value)))

	haproxyTLVs = []TLV{
		{0x01, []byte("smtp")},
		{0x02, []byte("mx." + strings.Repeat("long-label.", 20) + "example.com")},
		{0x05, bytes.Repeat([]byte{'u'}, 128)},
		{0x20, slices.Concat([]byte{0x07, 0, 0, 0, 0},
			tlv(0x21, "TLSv1.3"), tlv(0x22, "client."+strings.Repeat("x", 50)+".example.org"),
			tlv(0x23, "TLS_AES_256_GCM_SHA384"), tlv(0x24, "RSA-SHA256"), tlv(0x25, "RSA4096"))},
		{0x30, []byte("blue")},
	}
	haproxyFull = withCRC(v2(0x21, famTCP6, ip6Block("2001:db8::1", "2001:db8::2", 40000, 25),
		tlv(0x01, "smtp"), tlv(0x02, string(haproxyTLVs[1].Value)), tlv(0x05, string(haproxyTLVs[2].Value)),
		tlv(0x20, string(haproxyTLVs[3].Value)), tlv(0x30, "blue"), tlv(tlvCRC32C, "\x00\x00\x00\x00")))
	haproxyFullHeader = tcp(2, "[2001:db8::1]:40000", "[2001:db8::2]:25",
		append(slices.Clone(haproxyTLVs), TLV{tlvCRC32C, haproxyFull[len(haproxyFull)-4:]})...)
)

// TestLoadBalancerHeadersFit checks that what load balancers send is well
// within MaxV2Header.
func TestLoadBalancerHeadersFit(t *testing.T) {
	for name, h := range map[string][]byte{"AWS": awsNLB, "GCP": gcpPSC, "HAProxy": haproxyFull} {
		if len(h) > MaxV2Header/4 {
			t.Errorf("%s header of %d bytes is over a quarter of the %d-byte limit", name, len(h), MaxV2Header)
		}
	}
}

// TestTooLongErrorSaysWhy checks that the error of a header over the limit,
// which the event loop logs, names the length and the limit.
func TestTooLongErrorSaysWhy(t *testing.T) {
	_, _, err := Parse(v2(0x21, famTCP4, make([]byte, 5000)))
	var tl TooLongError
	if !errors.As(err, &tl) || tl.Len != 5016 {
		t.Fatalf("Parse of a 5016-byte header: %v, want a TooLongError of 5016 bytes", err)
	}
	if want := "proxyproto: v2: header of 5016 bytes is longer than the 4096 accepted"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// crcOf returns the CRC32C TLV value that withCRC puts in hdr.
func crcOf(hdr []byte) []byte {
	h := withCRC(bytes.Clone(hdr))
	return h[len(h)-4:]
}

func TestParseValid(t *testing.T) {
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.name, "v1") && len(tc.in) > v1MaxLen {
				t.Fatalf("test line is %d bytes", len(tc.in))
			}
			checkStream(t, []byte(tc.in), tc.want, len(tc.in), nil)
			// The SMTP dialog after the header is left for the caller.
			checkStream(t, []byte(tc.in+smtp), tc.want, len(tc.in), nil)
		})
	}
}

var malformed = []struct {
	name string
	in   string
	at   int // the shortest prefix that fails
	err  error
}{
	{"SMTP instead of a header", smtp, 1, ErrNotProxy},
	{"HTTP instead of a header", "GET / HTTP/1.1\r\n", 1, ErrNotProxy},
	{"TLS instead of a header", "\x16\x03\x01\x02\x00", 1, ErrNotProxy},
	{"lower case", "proxy tcp4 ", 1, ErrNotProxy},
	{"bad v1 signature", "PROXX TCP4", 5, ErrNotProxy},
	{"no space after PROXY", "PROXY\r\n", 6, ErrNotProxy},
	{"bad v2 signature", "\r\n\r\n\x00\r\nQUIX\n\x21\x11", 11, ErrNotProxy},
	{"v2 signature cut by CRLF", "\r\n\r\nEHLO", 5, ErrNotProxy},

	{"v1 double space", "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 7, errV1Proto},
	{"v1 TCP5", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 10, errV1Proto},
	{"v1 UDP4", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 8, errV1Proto},
	{"v1 lower case protocol", "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 7, errV1Proto},
	{"v1 UNKNOWN glued", "PROXY UNKNOWNX\r\n", 14, errV1Proto},
	{"v1 TCP4 cut short", "PROXY TCP\r\n", 10, errV1Proto},
	{"v1 no protocol", "PROXY \r\n", 7, errV1Proto},
	{"v1 TCP4 without addresses", "PROXY TCP4\r\n", 11, errV1Fields},
	{"v1 missing destination port", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 29, errV1Fields},
	{"v1 missing ports", "PROXY TCP4 1.2.3.4 5.6.7.8\r\n", 27, errV1Fields},
	{"v1 extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 31, errV1Fields},
	{"v1 trailing space", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 31, errV1Fields},
	{"v1 bare LF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31, errV1BareLF},
	{"v1 bare LF in UNKNOWN", "PROXY UNKNOWN x\ny\r\n", 16, errV1BareLF},
	{"v1 bare CR", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rEHLO", 32, errV1BareCR},
	{"v1 CR CR LF", "PROXY UNKNOWN\r\r\n", 15, errV1BareCR},

	{"v1 TCP4 octet over 255", "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", 20, errV1Src},
	{"v1 TCP4 leading zero", "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", 19, errV1Src},
	{"v1 TCP4 three octets", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", 17, errV1Src},
	{"v1 TCP4 five octets", "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", 19, errV1Src},
	{"v1 TCP4 empty octet", "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", 14, errV1Src},
	{"v1 TCP4 with IPv6", "PROXY TCP4 ::1 ::1 1 2\r\n", 12, errV1Src},
	{"v1 TCP4 with IPv6 destination", "PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n", 23, errV1Dst},
	{"v1 TCP4 with host name", "PROXY TCP4 localhost 5.6.7.8 1 2\r\n", 12, errV1Src},
	{"v1 TCP6 with IPv4", "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 13, errV1Src},
	{"v1 TCP6 with zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", 19, errV1Src},
	{"v1 TCP6 nine groups", "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", 27, errV1Src},
	{"v1 TCP6 eight groups and ellipsis", "PROXY TCP6 1:2:3:4:5:6:7::8 ::1 1 2\r\n", 27, errV1Src},
	{"v1 TCP6 two ellipses", "PROXY TCP6 1::2::3 ::1 1 2\r\n", 17, errV1Src},
	{"v1 TCP6 triple colon", "PROXY TCP6 1:::2 ::1 1 2\r\n", 15, errV1Src},
	{"v1 TCP6 five hex digits", "PROXY TCP6 12345::1 ::1 1 2\r\n", 16, errV1Src},
	{"v1 TCP6 single leading colon", "PROXY TCP6 :1::2 ::1 1 2\r\n", 13, errV1Src},
	{"v1 TCP6 trailing colon", "PROXY TCP6 1:2:3:4:5:6:7: ::1 1 2\r\n", 26, errV1Src},
	{"v1 TCP6 too few groups", "PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", 25, errV1Src},
	{"v1 TCP6 IPv4 too early", "PROXY TCP6 1:2:3:4:5:1.2.3.4 ::1 1 2\r\n", 23, errV1Src},
	{"v1 TCP6 IPv4 with hex", "PROXY TCP6 ::a.2.3.4 ::1 1 2\r\n", 15, errV1Src},
	{"v1 TCP6 IPv4 with leading zero", "PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n", 21, errV1Src},
	{"v1 TCP6 not hex", "PROXY TCP6 ::g ::1 1 2\r\n", 14, errV1Src},
	{"v1 TCP6 bad destination", "PROXY TCP6 ::1 ::x 1 2\r\n", 18, errV1Dst},
	{"v1 port over 65535", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n", 32, errV1SrcPort},
	{"v1 port of five nines", "PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n", 32, errV1SrcPort},
	{"v1 port with leading zero", "PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n", 29, errV1SrcPort},
	{"v1 empty port", "PROXY TCP4 1.2.3.4 5.6.7.8  25\r\n", 28, errV1SrcPort},
	{"v1 signed port", "PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", 30, errV1DstPort},
	{"v1 destination port over 65535", "PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n", 34, errV1DstPort},
	{"v1 UNKNOWN over 107 bytes", "PROXY UNKNOWN " + strings.Repeat("x", 92) + "\r\n", 106, errV1TooLong},
	{"v1 TCP6 that cannot fit", "PROXY TCP6 " + v6Tail + " " + v6Tail + " 1 2\r\n", 102, errV1TooLong},
	{"v1 TCP6 107 bytes but a bad port", "PROXY TCP6 " + v6Tail + " " + v6At36 + " 65535 655350\r\n",
		106, errV1DstPort},
	{"v1 TCP6 108 bytes", "PROXY TCP6 " + v6Tail + " " + v6At36 + "f 65535 65535\r\n",
		106, errV1TooLong},

	{"v2 version 1", string(v2(0x11, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 13, errV2Version},
	{"v2 version 3", string(v2(0x31, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 13, errV2Version},
	{"v2 command 2", string(v2(0x22, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 13, errV2Command},
	{"v2 command 15", string(v2(0x2f, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 13, errV2Command},
	{"v2 family 0x13", string(v2(0x21, 0x13, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 14, errV2Family},
	{"v2 family 0x41", string(v2(0x21, 0x41, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 14, errV2Family},
	{"v2 family 0x10", string(v2(0x21, 0x10, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 14, errV2Family},
	{"v2 LOCAL with an unknown family", string(v2(0x20, 0x01)), 14, errV2Family},
	// (The bytes after the length do not matter; 40 of them will do.)
	{"v2 length high byte over the cap", string(v2(0x21, famTCP4, make([]byte, 0x1000))[:40]), 16, TooLongError{16 + 0x1000}},
	{"v2 length one over the cap", string(v2(0x21, famTCP4, make([]byte, v2MaxBody+1))[:40]), 16, TooLongError{MaxV2Header + 1}},
	{"v2 LOCAL length over the cap", v2Sig + "\x20\x00\xff\xff\x00\x00", 16, TooLongError{16 + 65535}},
	{"v2 TCP4 block too short", string(v2(0x21, famTCP4, make([]byte, 11))), 16, errV2Short},
	{"v2 TCP6 block too short", string(v2(0x21, famTCP6, make([]byte, 35))), 16, errV2Short},
	{"v2 TCP6 with TCP4 block", string(v2(0x21, famTCP6, ip4Block("1.2.3.4", "5.6.7.8", 1, 2))), 16, errV2Short},
	{"v2 UDP4 without addresses", string(v2(0x21, 0x12)), 16, errV2Short},
	{"v2 UNIX block too short", string(v2(0x21, 0x31, make([]byte, 215))), 16, errV2Short},
	{"v2 stray bytes after addresses", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), []byte{4, 0})), 16, errV2TLV},
	{"v2 TLV past the block", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), []byte{4, 0, 1})), 31, errV2TLV},
	{"v2 TLV high length byte past the block", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), []byte{4, 1, 0}, make([]byte, 200))),
		30, errV2TLV},
	{"v2 stray bytes after TLVs", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), tlv(2, "mx"), []byte{4, 0})),
		31, errV2TLV},
	{"v2 CRC32C of 5 bytes", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), tlv(tlvCRC32C, "12345"))),
		31, errV2CRCForm},
	{"v2 two CRC32C", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), tlv(tlvCRC32C, "1234"), tlv(tlvCRC32C, "1234"))),
		38, errV2CRCForm},
	{"v2 CRC32C mismatch", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), tlv(tlvCRC32C, "1234"))),
		35, errV2CRC},
	{"v2 CRC32C of another header", string(v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 3), crcTLVOf(
		v2(0x21, famTCP4, ip4Block("1.2.3.4", "5.6.7.8", 1, 2), tlv(tlvCRC32C, "\x00\x00\x00\x00"))))),
		35, errV2CRC},
}

// crcTLVOf returns the CRC32C TLV of hdr, whose last TLV is a zeroed one.
func crcTLVOf(hdr []byte) []byte {
	return tlv(tlvCRC32C, string(crcOf(hdr)))
}

func TestParseMalformed(t *testing.T) {
	for _, tc := range malformed {
		t.Run(tc.name, func(t *testing.T) {
			if tc.at > len(tc.in) {
				t.Fatalf("at %d is past the %d-byte input", tc.at, len(tc.in))
			}
			checkStream(t, []byte(tc.in), nil, tc.at, tc.err)
			checkStream(t, []byte(tc.in+smtp), nil, tc.at, tc.err)
		})
	}
}

// nextPrefix steps k by step, never over the two lengths that matter: at
// (where the answer changes) and the whole input.
func nextPrefix(k, step, at, n int) int {
	next := k + step
	for _, must := range []int{at - 1, at, n} {
		if k < must && must < next {
			return must
		}
	}
	return next
}

// checkStream feeds in whole, byte by byte and split in two at every point,
// the way the event loop does: each read is appended to a buffer that
// Parse then sees whole. With want set, the header must be complete after
// exactly at bytes and use them; with wantErr set, Parse must fail with it
// once the buffer holds at bytes. Before that it must ask for more.
func checkStream(t *testing.T, in []byte, want *Header, at int, wantErr error) {
	t.Helper()
	step := 1
	if testing.Short() {
		step = max(1, len(in)/16) // every prefix only without -short
	}
	for k := 0; k <= len(in); k = nextPrefix(k, step, at, len(in)) {
		h, n, err := Parse(in[:k])
		if k < at {
			if h != nil || n != 0 || err != ErrNeedMore {
				t.Fatalf("first %d bytes %q: got %v, %d, %v; want ErrNeedMore", k, in[:k], h, n, err)
			}
			continue
		}
		if wantErr != nil {
			if h != nil || n != 0 || err != wantErr {
				t.Fatalf("first %d bytes %q: got %v, %d, %v; want %v", k, in[:k], h, n, err, wantErr)
			}
			continue
		}
		if err != nil || n != at || !sameHeader(h, want) {
			t.Fatalf("first %d bytes %q: got %s, %d, %v; want %s, %d", k, in[:k], show(h), n, err, show(want), at)
		}
	}

	wh, wn, werr := stream(in, nil)
	same := func(h *Header, n int, err error) bool { return sameHeader(h, wh) && n == wn && err == werr }
	if h, n, err := stream(in, everyByte(len(in))); !same(h, n, err) {
		t.Fatalf("byte by byte: %s; whole: %s", describe(h, n, err), describe(wh, wn, werr))
	}
	for k := 1; k < len(in); k++ {
		if h, n, err := stream(in, []int{k}); !same(h, n, err) {
			t.Fatalf("split at %d: %s; whole: %s", k, describe(h, n, err), describe(wh, wn, werr))
		}
	}
}

func everyByte(n int) []int {
	cuts := make([]int, 0, n)
	for i := 1; i < n; i++ {
		cuts = append(cuts, i)
	}
	return cuts
}

// stream appends in to one reused buffer in reads that end at the cuts,
// calls Parse after each read until it stops asking for more, then
// scribbles over the buffer, which the Header must not share.
func stream(in []byte, cuts []int) (*Header, int, error) {
	buf := make([]byte, 0, len(in))
	ends := append(slices.Clone(cuts), len(in))
	from := 0
	for _, to := range ends {
		buf = append(buf, in[from:to]...)
		from = to
		h, n, err := Parse(buf)
		if err == ErrNeedMore {
			continue
		}
		for i := range buf {
			buf[i] = 0xee
		}
		return h, n, err
	}
	return nil, 0, ErrNeedMore
}

func describe(h *Header, n int, err error) string {
	return fmt.Sprintf("%s, %d, %v", show(h), n, err)
}

func show(h *Header) string {
	if h == nil {
		return "<nil>"
	}
	s := fmt.Sprintf("v%d local=%v %v -> %v", h.Version, h.Local, h.Source, h.Dest)
	for _, x := range h.TLVs {
		s += fmt.Sprintf(" [%#02x %q]", x.Type, x.Value)
	}
	return s
}

func sameHeader(a, b *Header) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Version != b.Version || a.Local != b.Local || a.Source != b.Source || a.Dest != b.Dest ||
		len(a.TLVs) != len(b.TLVs) || (a.TLVs == nil) != (b.TLVs == nil) {
		return false
	}
	for i := range a.TLVs {
		if a.TLVs[i].Type != b.TLVs[i].Type || !bytes.Equal(a.TLVs[i].Value, b.TLVs[i].Value) {
			return false
		}
	}
	return true
}

// TestParseCopies checks that the Header does not share the caller's
// buffer and that appending to one TLV value cannot change the next.
func TestParseCopies(t *testing.T) {
	in := v2(0x21, famTCP4, ip4Block("192.0.2.1", "192.0.2.2", 1, 2), tlv(1, "ab"), tlv(2, "cd"))
	h, _, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 0
	}
	_ = append(h.TLVs[0].Value, 'X')
	if got := show(h); got != `v2 local=false 192.0.2.1:1 -> 192.0.2.2:2 [0x01 "ab"] [0x02 "cd"]` {
		t.Fatalf("header changed with the buffer: %s", got)
	}
}

// TestErrorMessages checks that every error names the package and fits on
// one line, as the log expects.
func TestErrorMessages(t *testing.T) {
	errs := []error{ErrNeedMore, ErrNotProxy}
	for _, tc := range malformed {
		errs = append(errs, tc.err)
	}
	for _, err := range errs {
		if msg := err.Error(); !strings.HasPrefix(msg, "proxyproto: ") || strings.ContainsAny(msg, "\r\n") {
			t.Errorf("error %q", msg)
		}
		if errors.Is(err, ErrNeedMore) && err != ErrNeedMore {
			t.Errorf("%v wraps ErrNeedMore", err)
		}
	}
}
