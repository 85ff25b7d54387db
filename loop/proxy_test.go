package loop_test

// The PROXY protocol (HAProxy's proxy-protocol.txt, v1 and v2) on a
// proxy listener over real TCP: the banner waits for the header, the
// address in the header is the client's everywhere (plugins, Received,
// the per-address limit), and every way a header can be wrong closes the
// connection without a word.

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/loop"
	"loopmx/plugins"
)

// The addresses a load balancer reports in the tests (RFC 5737, RFC 3849).
const (
	proxyV1TCP4 = "PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n"
	proxyV1TCP6 = "PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n"
)

var (
	clientV4 = netip.MustParseAddrPort("192.0.2.7:40000")
	serverV4 = netip.MustParseAddrPort("198.51.100.1:25")
	clientV6 = netip.MustParseAddrPort("[2001:db8::7]:40000")
	serverV6 = netip.MustParseAddrPort("[2001:db8::1]:25")
	loopback = netip.MustParseAddr("127.0.0.1")
)

// proxyV2 builds a v2 header: the signature, version 2 with cmd (0 LOCAL,
// 1 PROXY), the family and transport byte, the length and body.
func proxyV2(cmd, fam byte, body []byte) string {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return string(append(b, body...))
}

// proxyV2TCP is a v2 PROXY header for a TCP connection from src to dst,
// followed by tlvs (already encoded).
func proxyV2TCP(src, dst netip.AddrPort, tlvs ...byte) string {
	fam := byte(0x11) // AF_INET, STREAM
	if src.Addr().Is6() {
		fam = 0x21 // AF_INET6, STREAM
	}
	body := append(src.Addr().AsSlice(), dst.Addr().AsSlice()...)
	body = binary.BigEndian.AppendUint16(body, src.Port())
	body = binary.BigEndian.AppendUint16(body, dst.Port())
	return proxyV2(1, fam, append(body, tlvs...))
}

// seenAddr is what a connect hook was told about a connection.
type seenAddr struct {
	remote, local netip.AddrPort
}

// addrSpy records the addresses connect hooks see.
type addrSpy struct {
	mu   sync.Mutex
	seen []seenAddr
}

func (s *addrSpy) plugin() *hooks {
	return &hooks{name: "test/addr-spy", connect: func(c *plugins.Conn) plugins.Result {
		s.mu.Lock()
		s.seen = append(s.seen, seenAddr{
			remote: netip.AddrPortFrom(c.RemoteIP, c.RemotePort),
			local:  netip.AddrPortFrom(c.LocalIP, c.LocalPort),
		})
		s.mu.Unlock()
		return plugins.NoOpinion()
	}}
}

// last returns what the most recent connect hook saw.
func (s *addrSpy) last(t *testing.T) seenAddr {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) == 0 {
		t.Fatal("no connect hook ran")
	}
	return s.seen[len(s.seen)-1]
}

// proxyServer starts a server with a plain listener (ts.addr) and a PROXY
// listener, whose address it returns. The balancer is trusted on
// 127.0.0.0/8 and has a second to send its header.
func proxyServer(t *testing.T, edit func(*loop.Options), ps ...plugins.Plugin) (*testServer, string) {
	t.Helper()
	ts := startServer(t, func(o *loop.Options) {
		o.Specs = []config.Listener{{Addr: "127.0.0.1:0"}, {Addr: "127.0.0.1:0", Proxy: true}}
		o.ProxyTrusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		o.ProxyTimeout = time.Second
		if edit != nil {
			edit(o)
		}
	}, 2, 16, ps...)
	return ts, ts.srv.Addrs()[1].String()
}

// viaProxy connects to a PROXY listener, sends header and requires the
// banner.
func viaProxy(t *testing.T, addr, header string) *client {
	t.Helper()
	c := dial(t, addr)
	c.write(header)
	c.expectLine("220 mx.test ESMTP loopmx")
	return c
}

// expectClosedSilently requires the server to close the connection
// without sending a single byte: no banner, no error reply.
func (c *client) expectClosedSilently() {
	c.t.Helper()
	if out := readAll(c.t, c.conn); len(out) > 0 {
		c.t.Fatalf("the server sent %q, want the connection closed without a word", out)
	}
}

func TestProxyV1(t *testing.T) {
	var spy addrSpy
	md, spool := openMaildir(t)
	_, addr := proxyServer(t, nil, spy.plugin(), hostList(), md)

	c := dial(t, addr)
	// The banner waits for the header, which here comes in two pieces.
	c.expectSilence(200 * time.Millisecond)
	c.write(proxyV1TCP4[:20])
	c.expectSilence(100 * time.Millisecond)
	c.write(proxyV1TCP4[20:])
	c.expectLine("220 mx.test ESMTP loopmx")
	if got := spy.last(t); got.remote != clientV4 || got.local != serverV4 {
		t.Errorf("connect hook saw %v -> %v, want %v -> %v", got.remote, got.local, clientV4, serverV4)
	}
	c.hello()
	c.cmd("MAIL FROM:<sender@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.cmd("Subject: relayed\r\n\r\nhi\r\n.", "250 2.0.0")
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()

	files := maildirFiles(t, spool)
	if len(files) != 1 {
		t.Fatalf("maildir new/ holds %d messages, want 1", len(files))
	}
	if rcv := receivedHeader(t, files[0]); !strings.HasPrefix(rcv, "Received: from client.test ([192.0.2.7]) by mx.test") {
		t.Errorf("Received header %q does not name the address of the PROXY header", rcv)
	}

	// The header and the first command in one packet: both are honoured.
	c = dial(t, addr)
	c.write(proxyV1TCP6 + "EHLO client.test\r\n")
	c.expectLine("220 mx.test ESMTP loopmx")
	c.expectEHLO()
	if got := spy.last(t); got.remote != clientV6 || got.local != serverV6 {
		t.Errorf("connect hook saw %v -> %v, want %v -> %v", got.remote, got.local, clientV6, serverV6)
	}
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()
}

func TestProxyV2(t *testing.T) {
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:192.0.2.9"), 40001)
	// PP2_TYPE_AUTHORITY (0x02) "mx.example", which the server skips.
	authority := append([]byte{0x02, 0x00, 10}, "mx.example"...)
	for _, tc := range []struct {
		name     string
		header   string
		want     netip.AddrPort
		wantDest netip.AddrPort
	}{
		{"TCP4", proxyV2TCP(clientV4, serverV4), clientV4, serverV4},
		{"TCP6", proxyV2TCP(clientV6, serverV6), clientV6, serverV6},
		{"TCP4 with a TLV", proxyV2TCP(clientV4, serverV4, authority...), clientV4, serverV4},
		{"IPv4-mapped TCP6", proxyV2TCP(mapped, serverV6), netip.MustParseAddrPort("192.0.2.9:40001"), serverV6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spy addrSpy
			md, spool := openMaildir(t)
			_, addr := proxyServer(t, nil, spy.plugin(), hostList(), md)
			c := dial(t, addr)
			for i := range len(tc.header) { // a byte at a time: the parser waits
				c.write(tc.header[i : i+1])
			}
			c.expectLine("220 mx.test ESMTP loopmx")
			if got := spy.last(t); got.remote != tc.want || got.local != tc.wantDest {
				t.Errorf("connect hook saw %v -> %v, want %v -> %v", got.remote, got.local, tc.want, tc.wantDest)
			}
			c.hello()
			c.cmd("MAIL FROM:<sender@client.test>", "250 2.1.0")
			c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
			c.cmd("DATA", "354 ")
			c.cmd("Subject: relayed\r\n\r\nhi\r\n.", "250 2.0.0")
			c.cmd("QUIT", "221 2.0.0")
			c.expectEOF()
			files := maildirFiles(t, spool)
			if len(files) != 1 {
				t.Fatalf("maildir new/ holds %d messages, want 1", len(files))
			}
			lit := tc.want.Addr().String()
			if tc.want.Addr().Is6() {
				lit = "IPv6:" + lit
			}
			want := "Received: from client.test ([" + lit + "])"
			if rcv := receivedHeader(t, files[0]); !strings.HasPrefix(rcv, want) {
				t.Errorf("Received header %q, want it to start %q", rcv, want)
			}
		})
	}
}

// LOCAL (v2) and UNKNOWN (v1) carry no client address: the socket's peer,
// the balancer itself, is used.
func TestProxyLocalAndUnknownUseThePeer(t *testing.T) {
	var spy addrSpy
	_, addr := proxyServer(t, nil, spy.plugin(), hostList(), &recorder{})
	for _, tc := range []struct{ name, header string }{
		{"v2 LOCAL", proxyV2(0, 0x00, nil)},
		{"v2 LOCAL with an address block", proxyV2TCP(clientV4, serverV4)[:12] + "\x20\x11\x00\x0c" + strings.Repeat("\x01", 12)},
		{"v2 PROXY over UDP", proxyV2(1, 0x12, append(clientV4.Addr().AsSlice(), 198, 51, 100, 1, 0x9c, 0x40, 0, 25))},
		{"v1 UNKNOWN", "PROXY UNKNOWN\r\n"},
		{"v1 UNKNOWN with addresses", "PROXY UNKNOWN 192.0.2.7 198.51.100.1 40000 25\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := viaProxy(t, addr, tc.header)
			if got := spy.last(t); got.remote.Addr() != loopback {
				t.Errorf("connect hook saw %v, want the peer %v", got.remote, loopback)
			}
			c.hello()
			c.cmd("QUIT", "221 2.0.0")
			c.expectEOF()
		})
	}
}

// Anything but a whole, valid header from a trusted peer closes the
// connection before the banner.
func TestProxyBadHeadersClosedWithoutBanner(t *testing.T) {
	var spy addrSpy
	ts, addr := proxyServer(t, nil, spy.plugin(), hostList(), &recorder{})
	for _, tc := range []struct{ name, input string }{
		{"missing header", "EHLO client.test\r\n"},
		{"HTTP", "GET / HTTP/1.0\r\n\r\n"},
		{"v1 bad address", "PROXY TCP4 192.0.2.300 198.51.100.1 40000 25\r\n"},
		{"v1 family mismatch", "PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n"},
		{"v1 port out of range", "PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n"},
		{"v1 bare LF", "PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\n"},
		{"v1 double space", "PROXY  TCP4 192.0.2.7 198.51.100.1 40000 25\r\n"},
		{"v1 too long", "PROXY UNKNOWN " + strings.Repeat("x", 120) + "\r\n"},
		{"v2 version 1", proxyV2TCP(clientV4, serverV4)[:12] + "\x11" + proxyV2TCP(clientV4, serverV4)[13:]},
		{"v2 command 2", proxyV2TCP(clientV4, serverV4)[:12] + "\x22" + proxyV2TCP(clientV4, serverV4)[13:]},
		{"v2 block too short", proxyV2(1, 0x11, make([]byte, 8))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			c.write(tc.input)
			c.expectClosedSilently()
		})
	}
	ts.waitConnections(t, 0)
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if len(spy.seen) != 0 {
		t.Errorf("connect hooks ran for refused connections: %v", spy.seen)
	}
	if !strings.Contains(ts.log.String(), "bad PROXY header") {
		t.Error("the bad headers were not logged")
	}
}

// Only trusted peers may speak PROXY: anyone else is closed at once,
// before it has said anything, and a valid header does not help.
func TestProxyUntrustedPeer(t *testing.T) {
	ts, addr := proxyServer(t, func(o *loop.Options) {
		o.ProxyTrusted = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	}, hostList(), &recorder{})
	c := dial(t, addr)
	c.expectClosedSilently()
	c = dial(t, addr)
	c.write(proxyV1TCP4) // may race the close: a reset is fine too
	c.expectClosedSilently()
	ts.waitConnections(t, 0)
	// The plain listener of the same server is not affected.
	c = connect(t, ts.addr)
	c.cmd("QUIT", "221 2.0.0")
}

// A header that starts but never ends is given proxy_timeout.
func TestProxyHeaderTimeout(t *testing.T) {
	ts, addr := proxyServer(t, nil, hostList(), &recorder{})
	for _, part := range []string{"PROXY TCP4 1.2", proxyV2TCP(clientV4, serverV4)[:20], ""} {
		c := dial(t, addr)
		c.write(part)
		start := time.Now()
		c.expectClosedSilently()
		if d := time.Since(start); d > ioTimeout/2 {
			t.Errorf("%q: closed after %v with proxy_timeout 1s", part, d)
		}
	}
	ts.waitConnections(t, 0)
}

// After the banner, PROXY is just a word the server does not know; it
// changes nothing.
func TestProxyLineAfterBannerIsUnknownCommand(t *testing.T) {
	var spy addrSpy
	ts, addr := proxyServer(t, nil, spy.plugin(), hostList(), &recorder{})

	c := connect(t, ts.addr)
	c.hello()
	c.cmd(strings.TrimSuffix(proxyV1TCP4, "\r\n"), "500 5.5.1 Error: command not recognized")
	c.cmd("MAIL FROM:<sender@client.test>", "250 2.1.0")

	// A second header on a proxy listener is no header either.
	p := viaProxy(t, addr, proxyV1TCP4)
	p.hello()
	p.cmd("PROXY TCP4 203.0.113.9 198.51.100.1 1 25", "500 5.5.1 Error: command not recognized")
	if got := spy.last(t); got.remote != clientV4 {
		t.Errorf("connect hook saw %v, want %v", got.remote, clientV4)
	}
	p.cmd("QUIT", "221 2.0.0")
	p.expectEOF()
}

// max_connections_per_ip counts the client of the header, not the balancer
// that all proxied connections come from.
func TestProxyPerIPLimitUsesHeaderAddress(t *testing.T) {
	ts, addr := proxyServer(t, func(o *loop.Options) { o.MaxConnectionsPerIP = 1 }, hostList(), &recorder{})
	from := func(ip string) string { return "PROXY TCP4 " + ip + " 198.51.100.1 40000 25\r\n" }

	first := viaProxy(t, addr, from("192.0.2.7"))
	other := viaProxy(t, addr, from("192.0.2.8"))
	// The balancer's own address is not used up by the proxied clients.
	direct := connect(t, ts.addr)

	again := dial(t, addr)
	again.write(from("192.0.2.7"))
	again.expectLine("421 4.7.0 mx.test Too many connections from your address (limit 1), try again later")
	again.expectEOF()

	first.cmd("QUIT", "221 2.0.0")
	first.expectEOF()
	ts.waitConnections(t, 2)
	later := viaProxy(t, addr, from("192.0.2.7"))
	for _, c := range []*client{later, other, direct} {
		c.hello()
		c.cmd("QUIT", "221 2.0.0")
		c.expectEOF()
	}
}

// A proxied client can go on to STARTTLS; it keeps the header's address.
func TestProxyThenStartTLS(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	md, spool := openMaildir(t)
	_, addr := proxyServer(t, env.with, hostList(), md)
	c := viaProxy(t, addr, proxyV1TCP4)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	s.hello()
	s.deliver("a@example.com", tlsBody)
	s.quit()
	files := maildirFiles(t, spool)
	if len(files) != 1 {
		t.Fatalf("maildir new/ holds %d messages, want 1", len(files))
	}
	rcv := receivedHeader(t, files[0])
	if !strings.Contains(rcv, "([192.0.2.7])") || !strings.Contains(rcv, "with ESMTPS (TLSv1.3") {
		t.Errorf("Received header %q", rcv)
	}
}
