package plugins

import (
	"crypto/tls"
	"strings"
	"time"
)

// RDNSNote is the connection note that holds the client's verified reverse
// DNS name (a string), set by a plugin that looks it up. AppendReceived
// writes it in the TCP-info of the Received header; access matches its
// rdns lists against it.
const RDNSNote = "rdns"

// AppendReceived appends the Received trace header of the transaction to
// b (RFC 5321 4.4):
//
//	Received: from <HELO name> ([<rDNS name> ]<address literal>)
//		by <me> (loopmx) with <protocol>[ (<TLS version> with cipher <suite>)] id <tx id>
//		for <recipient>;
//		<date>
//
// The TCP-info in parentheses has the syntax of RFC 5321 4.4: the
// client's address as an address literal (RFC 5321 4.1.3: [192.0.2.1],
// [IPv6:2001:db8::1]; an IPv4-mapped IPv6 address is written as IPv4),
// after the verified reverse DNS name when the RDNSNote holds one, so that
// Received parsers downstream find the relay's address. The client's
// port is not written: TCP-info has no place for it. The protocol word
// is RFC 3848's (ESMTPS and the like); the recipient is named only when
// there is exactly one, since more would disclose Bcc recipients to each
// other.
func (c *Conn) AppendReceived(b []byte, protocol string, now time.Time) []byte {
	b = append(b, "Received: from "...)
	b = appendHeloName(b, c.Helo)
	b = append(b, " ("...)
	if name, ok := c.Note(RDNSNote).(string); ok {
		if name = strings.TrimSuffix(name, "."); receivedSafeName(name) {
			b = append(b, name...)
			b = append(b, ' ')
		}
	}
	b = append(b, '[')
	if ip := c.RemoteIP.Unmap(); ip.Is6() {
		b = append(b, "IPv6:"...)
		b = ip.WithZone("").AppendTo(b)
	} else {
		b = ip.AppendTo(b)
	}
	b = append(b, "])\r\n\tby "...)
	b = append(b, c.Hostname...)
	b = append(b, " (loopmx) with "...)
	b = append(b, protocol...)
	if c.TLS != nil {
		b = append(b, " ("...)
		b = append(b, tlsVersionName(c.TLS.Version)...)
		b = append(b, " with cipher "...)
		b = append(b, tls.CipherSuiteName(c.TLS.CipherSuite)...)
		b = append(b, ')')
	}
	if c.Tx != nil {
		b = append(b, " id "...)
		b = append(b, c.Tx.ID...)
		if len(c.Tx.Rcpts) == 1 {
			b = append(b, "\r\n\tfor <"...)
			b = append(b, c.Tx.Rcpts[0]...)
			b = append(b, '>')
		}
	}
	b = append(b, ";\r\n\t"...)
	b = now.AppendFormat(b, "Mon, 02 Jan 2006 15:04:05 -0700")
	b = append(b, "\r\n"...)
	return b
}

// appendHeloName writes the HELO name, "unknown" without one. smtpproto
// lets any name without spaces or control characters through, so an
// octet that would end the name, open a comment or end the tokens before
// the date ('(', ')', ';', '<', '>', '"', '\\', ',', '@') becomes '?':
// a client cannot forge a TCP-info or a date of its own.
func appendHeloName(b []byte, helo string) []byte {
	if helo == "" {
		return append(b, "unknown"...)
	}
	for i := 0; i < len(helo); i++ {
		c := helo[i]
		if strings.IndexByte(`();<>"\,@`, c) >= 0 {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// receivedSafeName reports whether a reverse DNS name may stand in the
// TCP-info as it is: labels of letters, digits, '-' and '_' (some PTR
// records hold it), 253 octets at most.
func receivedSafeName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// tlsVersionName is the name of a TLS version as OpenSSL writes it, which
// is what Received headers of other servers show.
func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}
