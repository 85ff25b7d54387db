package spf

import (
	"net/netip"
	"strings"

	"loopmx/plugins"
)

// DataPost implements plugins.DataPostHook: it adds a Received-SPF field
// (RFC 7208 9.1) with the MAIL FROM identity's result in front of the
// message. It runs inline.
func (p *SPF) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	if !p.header || c.Tx == nil {
		return plugins.NoOpinion()
	}
	r, ok := c.Tx.Note(NoteMailFrom).(Result)
	if !ok {
		return plugins.NoOpinion()
	}
	if err := m.AddHeader("Received-SPF", receivedSPF(r, c.RemoteIP.Unmap(), c.Tx.From, c.Helo, c.Hostname)); err != nil && c.Log != nil {
		// Only a HELO name or sender that smtpproto let through could
		// break the field; the message goes on without it.
		c.Log.Error().Str("plugin", Name).Str("tx", c.Tx.ID).Err(err).Msg("Received-SPF not added")
	}
	return plugins.NoOpinion()
}

// receivedSPF is the value of the Received-SPF field (RFC 7208 9.1):
// the result, a comment that says it in words, and the key-value pairs,
// one a folded line:
//
//	pass (mx.example.com: domain of a@example.org designates 192.0.2.1 as permitted sender)
//		client-ip=192.0.2.1; envelope-from="a@example.org"; helo=mail.example.org;
//		receiver=mx.example.com; identity=mailfrom
func receivedSPF(r Result, ip netip.Addr, from, helo, receiver string) string {
	comment := describe(r, ip)
	if r.Identity == identityMailFrom && strings.HasPrefix(comment, r.Domain+" ") {
		comment = "domain of " + r.Subject + comment[len(r.Domain):]
	}
	var b strings.Builder
	b.WriteString(string(r.Result) + " (" + receiver + ": " + comment + ")")
	for _, kv := range [][2]string{
		{"client-ip", ip.String()},
		{"envelope-from", quoted(from)},
		{"helo", atomOrQuoted(helo)},
		{"receiver", atomOrQuoted(receiver)},
		{"identity", r.Identity},
	} {
		b.WriteString("\r\n\t" + kv[0] + "=" + kv[1] + ";")
	}
	return strings.TrimSuffix(b.String(), ";")
}

// atomOrQuoted writes s as a dot-atom when it is one (RFC 5322 3.2.3),
// else as a quoted-string.
func atomOrQuoted(s string) string {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return quoted(s)
	}
	for _, c := range []byte(s) {
		if c < 0x80 && !isAtext(c) && c != '.' {
			return quoted(s)
		}
	}
	return s
}

// isAtext: RFC 5322 3.2.3's atext (UTF-8 octets are left to RFC 6532).
func isAtext(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// quoted writes s as a quoted-string (RFC 5322 3.2.4).
func quoted(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

var _ plugins.DataPostHook = (*SPF)(nil)
