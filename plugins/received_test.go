package plugins_test

import (
	"crypto/tls"
	"net/mail"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"loopmx/plugins"
)

// receivedConn is a connection from ip that said EHLO client.example.org
// and has a transaction with rcpts, edited by each edit.
func receivedConn(ip string, rcpts []string, edits ...func(*plugins.Conn)) *plugins.Conn {
	c := &plugins.Conn{
		ID:         "w1.a",
		RemoteIP:   netip.MustParseAddr(ip),
		RemotePort: 40000,
		Hostname:   "mx.example.net",
		Helo:       "client.example.org",
	}
	c.BeginTx("sender@example.org", time.Time{})
	c.Tx.Rcpts = rcpts
	for _, edit := range edits {
		edit(c)
	}
	return c
}

func withRDNS(name any) func(*plugins.Conn) {
	return func(c *plugins.Conn) { c.SetNote(plugins.RDNSNote, name) }
}

func withTLS(c *plugins.Conn) {
	c.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}
}

// tcpInfo is the From-domain of RFC 5321 4.4 with its TCP-info: an
// optional domain, then an address literal (4.1.3), in parentheses.
var tcpInfo = regexp.MustCompile(`^from [^ ()]+ \((?:[A-Za-z0-9_.-]+ )?\[(IPv6:[0-9a-fA-F:.]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3})\]\) by `)

func TestAppendReceived(t *testing.T) {
	now := time.Date(2024, 3, 5, 14, 7, 9, 0, time.FixedZone("CET", 3600))
	const date = "Tue, 05 Mar 2024 14:07:09 +0100"
	one := []string{"user@example.com"}
	two := []string{"a@example.com", "bcc@example.com"}
	const by = "\r\n\tby mx.example.net (loopmx) with "
	const tlsWith = " (TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)"
	for _, tc := range []struct {
		name     string
		c        *plugins.Conn
		protocol string
		want     string // the field after "Received: from client.example.org "
		addr     string // the address literal a parser finds
	}{
		{"IPv4, one recipient", receivedConn("192.0.2.10", one), "ESMTP",
			"([192.0.2.10])" + by + "ESMTP id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "192.0.2.10"},
		{"IPv4, two recipients are not disclosed", receivedConn("192.0.2.10", two), "ESMTP",
			"([192.0.2.10])" + by + "ESMTP id w1.a.1;\r\n\t" + date + "\r\n", "192.0.2.10"},
		{"IPv4 with rDNS", receivedConn("192.0.2.10", one, withRDNS("mail.example.org")), "ESMTP",
			"(mail.example.org [192.0.2.10])" + by + "ESMTP id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "192.0.2.10"},
		{"IPv4 with rDNS and TLS, two recipients", receivedConn("192.0.2.10", two, withRDNS("mail.example.org."), withTLS), "ESMTPS",
			"(mail.example.org [192.0.2.10])" + by + "ESMTPS" + tlsWith + " id w1.a.1;\r\n\t" + date + "\r\n", "192.0.2.10"},
		{"IPv4-mapped IPv6 is written as IPv4", receivedConn("::ffff:198.51.100.7", one), "SMTP",
			"([198.51.100.7])" + by + "SMTP id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "198.51.100.7"},
		{"IPv4-mapped IPv6 with rDNS and TLS", receivedConn("::ffff:198.51.100.7", one, withRDNS("relay.example.com"), withTLS), "ESMTPS",
			"(relay.example.com [198.51.100.7])" + by + "ESMTPS" + tlsWith + " id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "198.51.100.7"},
		{"IPv6 and UTF8SMTP", receivedConn("2001:db8::25", []string{"jörg@example.com"}), "UTF8SMTP",
			"([IPv6:2001:db8::25])" + by + "UTF8SMTP id w1.a.1\r\n\tfor <jörg@example.com>;\r\n\t" + date + "\r\n", "IPv6:2001:db8::25"},
		{"IPv6 loopback with TLS, two recipients", receivedConn("::1", two, withTLS), "ESMTPS",
			"([IPv6:::1])" + by + "ESMTPS" + tlsWith + " id w1.a.1;\r\n\t" + date + "\r\n", "IPv6:::1"},
		{"IPv6 with rDNS", receivedConn("2001:db8::25", one, withRDNS("mx6.example.org")), "ESMTP",
			"(mx6.example.org [IPv6:2001:db8::25])" + by + "ESMTP id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "IPv6:2001:db8::25"},
		{"a note that is no host name is left out", receivedConn("192.0.2.10", one, withRDNS("x ([203.0.113.1])")), "ESMTP",
			"([192.0.2.10])" + by + "ESMTP id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "192.0.2.10"},
		{"a note that is no string is left out", receivedConn("192.0.2.10", one, withRDNS(true)), "ESMTP",
			"([192.0.2.10])" + by + "ESMTP id w1.a.1\r\n\tfor <user@example.com>;\r\n\t" + date + "\r\n", "192.0.2.10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkReceived(t, tc.c, tc.protocol, now, "Received: from client.example.org "+tc.want, tc.addr)
		})
	}
}

// TestAppendReceivedHELO checks the name after "from": "unknown" without
// HELO, and a HELO name that cannot forge a TCP-info or a date.
func TestAppendReceivedHELO(t *testing.T) {
	now := time.Date(2024, 3, 5, 14, 7, 9, 0, time.UTC)
	const date = "Tue, 05 Mar 2024 14:07:09 +0000"
	noHelo := &plugins.Conn{ID: "w1.b", RemoteIP: netip.MustParseAddr("192.0.2.10"), RemotePort: 25, Hostname: "mx.example.net"}
	checkReceived(t, noHelo, "SMTP", now,
		"Received: from unknown ([192.0.2.10])\r\n\tby mx.example.net (loopmx) with SMTP;\r\n\t"+date+"\r\n", "192.0.2.10")

	forger := receivedConn("192.0.2.10", nil, func(c *plugins.Conn) { c.Helo = "a(google.com[8.8.8.8]);" })
	checkReceived(t, forger, "ESMTP", now,
		"Received: from a?google.com[8.8.8.8]?? ([192.0.2.10])\r\n\tby mx.example.net (loopmx) with ESMTP id w1.a.1;\r\n\t"+date+"\r\n", "192.0.2.10")
}

// checkReceived requires AppendReceived to give want after what b held,
// a field a mail reader takes as one Received with the date now, and
// a TCP-info whose address literal is addr.
func checkReceived(t *testing.T, c *plugins.Conn, protocol string, now time.Time, want, addr string) {
	t.Helper()
	got := string(c.AppendReceived([]byte("X-Before: 1\r\n"), protocol, now))
	if got != "X-Before: 1\r\n"+want {
		t.Fatalf("AppendReceived =\n%q\nwant\n%q", got, "X-Before: 1\r\n"+want)
	}
	m, err := mail.ReadMessage(strings.NewReader(got + "\r\nbody\r\n"))
	if err != nil {
		t.Fatalf("the header does not parse: %v", err)
	}
	recv := m.Header.Get("Received")
	if len(m.Header["Received"]) != 1 || recv == "" {
		t.Fatalf("Received fields = %q", m.Header["Received"])
	}
	unfolded := strings.Join(strings.Fields(recv), " ")
	if mt := tcpInfo.FindStringSubmatch(unfolded); mt == nil || mt[1] != addr {
		t.Errorf("Received %q: TCP-info is not RFC 5321 4.4 syntax with the address literal [%s]", unfolded, addr)
	}
	semi := strings.LastIndexByte(recv, ';')
	if semi < 0 {
		t.Fatalf("Received %q has no ';' before the date", recv)
	}
	d, err := mail.ParseDate(strings.TrimSpace(recv[semi+1:]))
	if err != nil {
		t.Fatalf("date %q: %v", recv[semi+1:], err)
	}
	if !d.Equal(now) {
		t.Errorf("date parses to %v, want %v", d, now)
	}
}
