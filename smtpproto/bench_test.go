package smtpproto

import (
	"strings"
	"testing"
)

// benchConfig is a Config with loopmx's default limits (docs/config.md)
// rather than the small ones of the tests.
func benchConfig() *Config {
	return newConfig(func(c *Config) {
		c.Hostname = "mx.bench"
		c.MaxMessageSize, c.MaxRecipients, c.MaxErrors = 25<<20, 100, 10
	})
}

// pump feeds one client write, which must end on a command or chunk
// boundary, accepting every decision. It returns the reply octets written
// and the messages delivered.
func pump(b *testing.B, s *Session, w []byte) (out, msgs int) {
	for {
		n, ev := s.Next(w)
		w = w[n:]
		out += len(ev.Reply)
		switch ev.Kind {
		case KindMessage:
			msgs++
			fallthrough
		case KindHelo, KindMail, KindRcpt, KindData:
			out += len(s.Resolve(Reply{}))
		}
		if ev.Close || ev.Kind == KindNeedMore {
			break
		}
	}
	if len(w) != 0 {
		b.Fatalf("%d octets of a write left unread", len(w))
	}
	return out, msgs
}

// BenchmarkSession runs one whole session per iteration: EHLO, then MAIL,
// RCPT and DATA in one pipelined write, then a 1 KiB body with the
// terminator and QUIT.
func BenchmarkSession(b *testing.B) {
	cfg := benchConfig()
	line := strings.Repeat("0123456789abcdef", 4)[:62] + "\r\n"
	writes := [][]byte{
		[]byte("EHLO client.bench\r\n"),
		[]byte("MAIL FROM:<sender@client.bench>\r\nRCPT TO:<rcpt@mx.bench>\r\nDATA\r\n"),
		[]byte(strings.Repeat(line, 16) + ".\r\nQUIT\r\n"),
	}
	b.ReportAllocs()
	for b.Loop() {
		s := NewSession(cfg)
		msgs := 0
		for _, w := range writes {
			_, m := pump(b, s, w)
			msgs += m
		}
		if msgs != 1 || !s.Closed() {
			b.Fatalf("%d messages, closed %v", msgs, s.Closed())
		}
	}
}

// BenchmarkData1MiB measures the DATA machine on a 1 MiB body of 64-octet
// lines, one in eight dot-stuffed, read in 64 KiB pieces.
func BenchmarkData1MiB(b *testing.B) {
	// The buffer grows by doubling either way: a declared SIZE=n
	// (RFC 1870) reserves nothing, it only trims the last doubling.
	b.Run("nosize", func(b *testing.B) { benchData1MiB(b, "") })
	b.Run("size", func(b *testing.B) { benchData1MiB(b, " SIZE=1048576") })
}

func benchData1MiB(b *testing.B, sizeParam string) {
	cfg := benchConfig()
	var body strings.Builder
	for i := 0; body.Len() < 1<<20; i++ {
		if i%8 == 0 {
			body.WriteString("..")
			body.WriteString(strings.Repeat("s", 60))
		} else {
			body.WriteString(strings.Repeat("b", 62))
		}
		body.WriteString("\r\n")
	}
	in := []byte(body.String() + ".\r\n")
	head := []byte("EHLO client.bench\r\nMAIL FROM:<sender@client.bench>" + sizeParam + "\r\nRCPT TO:<rcpt@mx.bench>\r\nDATA\r\n")
	want := 1<<20 - (1<<20)/64/8 // one dot removed from every eighth line
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		s := NewSession(cfg)
		pump(b, s, head)
		for off := 0; off < len(in); off += 64 << 10 {
			w := in[off:min(off+64<<10, len(in))]
			for len(w) > 0 {
				n, ev := s.Next(w)
				w = w[n:]
				if n == 0 && ev.Kind == KindNeedMore {
					b.Fatal("the session does not read the body")
				}
				if ev.Kind == KindMessage {
					if got := len(s.Body()); got != want {
						b.Fatalf("body of %d octets, want %d", got, want)
					}
					s.Resolve(Reply{})
				}
			}
		}
	}
}
