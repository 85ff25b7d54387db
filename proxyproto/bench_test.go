package proxyproto

import "testing"

// BenchmarkParse parses whole headers, as the loop does when the header
// arrives in one read.
func BenchmarkParse(b *testing.B) {
	cases := []struct {
		name string
		in   []byte
	}{
		{"v1 TCP4", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n" + smtp)},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::1 2001:db8:ffff::2 56324 25\r\n" + smtp)},
		{"v2 TCP6 with TLVs", append(withCRC(v2(0x21, famTCP6, ip6Block("2001:db8::1", "2001:db8::2", 56324, 25),
			tlv(0x05, "conn-42"), tlv(tlvCRC32C, "\x00\x00\x00\x00"))), smtp...)},
		{"not PROXY", []byte(smtp)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.in)))
			for b.Loop() {
				if _, _, err := Parse(c.in); err != nil && c.name != "not PROXY" {
					b.Fatal(err)
				}
			}
		})
	}
}
