package smtpproto

import (
	"bytes"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// splitPath separates "<path> params" that follow "FROM:" or "TO:". One or
// more spaces after the colon are tolerated, as many clients send them.
// It returns the text between the angle brackets and the parameters.
func splitPath(b []byte) (inner, params []byte, bad []byte) {
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	if len(b) == 0 || b[0] != '<' {
		return nil, nil, replySyntaxMail
	}
	i := closeAngle(b, 0)
	if i < 0 {
		return nil, nil, replySyntaxMail
	}
	rest := b[i+1:]
	if len(rest) > 0 && rest[0] != ' ' {
		return nil, nil, replySyntaxMail
	}
	return b[1:i], rest, nil
}

// closeAngle returns the index of the '>' that closes the path whose '<'
// is b[open], or -1 when b ends first. Inside a Quoted-string a '>' does
// not close it, and a '\' there escapes the next octet (RFC 5321 4.1.2).
func closeAngle(b []byte, open int) int {
	inQuote := false
	for i := open + 1; i < len(b); i++ {
		switch c := b[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case c == '>' && !inQuote:
			return i
		}
	}
	return -1
}

// parsePath checks a reverse path (rcpt false) or forward path (rcpt
// true) of RFC 5321 4.1.2 and returns the mailbox without angle brackets
// and without any source route (RFC 5321 4.1.1.3: accepted and ignored),
// or the reply that refuses it.
func parsePath(p []byte, rcpt, smtputf8 bool) (string, []byte) {
	addr, _, bad := checkPath(p, rcpt, smtputf8)
	return addr, bad
}

// checkPath is parsePath that also tells whether a source route was there.
// The reply on failure names the sender (5.1.7) or the recipient (5.1.3),
// as RFC 3463 3.2 asks, and never echoes the address back.
func checkPath(p []byte, rcpt, smtputf8 bool) (addr string, routed bool, bad []byte) {
	badAddr := replyBadSender
	if rcpt {
		badAddr = replyBadRcpt
	}
	// RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets.
	// That also bounds the domain to less than its 255 (4.5.3.1.2). An
	// overlong path is bad address syntax (RFC 3463 3.2: X.1.3, X.1.7).
	if len(p)+2 > 256 {
		if rcpt {
			return "", false, replyRcptTooLong
		}
		return "", false, replySenderTooLong
	}
	if len(p) == 0 {
		if rcpt {
			return "", false, replyNullRcpt
		}
		return "", false, nil
	}
	ascii := true
	for _, c := range p {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		// RFC 6531 3.4: a non-ASCII address needs SMTPUTF8 on MAIL.
		if !smtputf8 {
			return "", false, replyNeedUTF8
		}
		if !utf8.Valid(p) {
			return "", false, badAddr
		}
	}
	if p[0] == '@' {
		// A-d-l = At-domain *( "," At-domain ) ":" (RFC 5321 4.1.2).
		i := bytes.IndexByte(p, ':')
		if i < 0 {
			return "", false, badAddr
		}
		for _, hop := range bytes.Split(p[:i], []byte{','}) {
			if len(hop) < 2 || hop[0] != '@' || !validDomain(hop[1:]) {
				return "", false, badAddr
			}
		}
		p = p[i+1:]
		routed = true
	}
	// RFC 5321 4.1.1.3: "Postmaster" without a domain is a valid RCPT.
	if rcpt && verbIs(p, "POSTMASTER") {
		return string(p), routed, nil
	}
	local, domain, ok := splitMailbox(p)
	if !ok || !validLocal(local) || !validDomain(domain) {
		return "", false, badAddr
	}
	return string(p), routed, nil
}

// forwardPath checks the path of RCPT TO and applies the routing policy:
// a source route is dropped (RFC 5321 4.1.1.3 and appendix C) when
// AllowSourceRoute is set and refused otherwise; a local part holding '%'
// or '!' is refused unless AllowPercentHack or AllowBangPath is set,
// because a next hop that still honours those would relay the message
// to the host they name. The refusals are 550 5.7.1, a policy decision,
// not a protocol error.
func (s *Session) forwardPath(p []byte) (string, []byte) {
	addr, routed, r := checkPath(p, true, s.tx.SMTPUTF8)
	if r != nil {
		return "", r
	}
	if routed && !s.cfg.AllowSourceRoute {
		return "", replySourceRoute
	}
	local, _, _ := splitMailbox(addr)
	// The quotes of a Quoted-string local part are no shield: a next hop
	// may take them off before it looks for '%' or '!'.
	if !s.cfg.AllowPercentHack && strings.IndexByte(local, '%') >= 0 {
		return "", replyPercentHack
	}
	if !s.cfg.AllowBangPath && strings.IndexByte(local, '!') >= 0 {
		return "", replyBangPath
	}
	return addr, nil
}

// refuse answers a MAIL or RCPT that its checks refused: a policy refusal
// (a 550 or 552) is only answered, anything else also counts as a
// protocol error toward MaxErrors.
func (s *Session) refuse(r []byte) Event {
	if r[0] == '5' && r[1] == '5' && (r[2] == '0' || r[2] == '2') {
		return reply(r)
	}
	return s.fail(r)
}

// splitMailbox splits at the '@' that follows the local part, skipping a
// quoted local part that may itself contain '@'.
func splitMailbox[T string | []byte](p T) (local, domain T, ok bool) {
	if len(p) > 0 && p[0] == '"' {
		for i := 1; i < len(p); i++ {
			switch p[i] {
			case '\\':
				i++
			case '"':
				if i+1 < len(p) && p[i+1] == '@' {
					return p[:i+1], p[i+2:], true
				}
				return local, domain, false
			}
		}
		return local, domain, false
	}
	i := len(p) - 1
	for i >= 0 && p[i] != '@' {
		i--
	}
	if i <= 0 {
		return local, domain, false
	}
	return p[:i], p[i+1:], true
}

// validLocal checks a Dot-string or Quoted-string local part
// (RFC 5321 4.1.2; UTF-8 allowed per RFC 6531 3.3).
func validLocal(l []byte) bool {
	if len(l) == 0 {
		return false
	}
	if l[0] == '"' {
		if len(l) < 2 || l[len(l)-1] != '"' {
			return false
		}
		for i := 1; i < len(l)-1; i++ {
			c := l[i]
			if c == '\\' {
				i++
				if i >= len(l)-1 || l[i] < 0x20 || l[i] > 0x7e {
					return false
				}
				continue
			}
			if c == '"' || (c < 0x20) || c == 0x7f {
				return false
			}
		}
		return true
	}
	prevDot := true
	for _, c := range l {
		if c == '.' {
			if prevDot {
				return false
			}
			prevDot = true
			continue
		}
		prevDot = false
		if !isAtext(c) {
			return false
		}
	}
	return !prevDot
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// validDomain checks a domain name or an address literal
// (RFC 5321 4.1.2 and 4.1.3).
func validDomain(d []byte) bool {
	if len(d) == 0 || len(d) > 255 {
		return false
	}
	if d[0] == '[' {
		if d[len(d)-1] != ']' {
			return false
		}
		lit := string(d[1 : len(d)-1])
		if v6, ok := cutFold(lit, "IPv6:"); ok {
			a, err := netip.ParseAddr(v6)
			return err == nil && a.Is6()
		}
		if a, err := netip.ParseAddr(lit); err == nil {
			return a.Is4()
		}
		// General-address-literal: Standardized-tag ":" dcontent.
		i := strings.IndexByte(lit, ':')
		return i > 0 && i < len(lit)-1 && ldhStr(lit[:i]) && !strings.ContainsAny(lit, "[]\\ ")
	}
	return validLabels(d)
}

// ValidDomainName reports whether s is a Domain of RFC 5321 4.1.2, an
// address literal aside: labels of letters, digits and '-', 1 to 63 octets
// each (RFC 1035 2.3.4), not starting or ending with '-', 255 octets in
// all, no trailing dot; UTF-8 labels are allowed (RFC 6531 3.3).
func ValidDomainName(s string) bool { return validLabels(s) && utf8.ValidString(s) }

// validLabels checks the labels of a domain name in place (no split, no
// allocation: it runs for every MAIL and RCPT).
func validLabels[T string | []byte](d T) bool {
	if len(d) == 0 || len(d) > 255 {
		return false
	}
	start := 0
	for i := 0; i <= len(d); i++ {
		if i < len(d) && d[i] != '.' {
			c := d[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c >= 0x80) {
				return false
			}
			continue
		}
		if n := i - start; n == 0 || n > 63 || d[start] == '-' || d[i-1] == '-' {
			return false
		}
		start = i + 1
	}
	return true
}

// ldhStr checks the Standardized-tag of a General-address-literal: letters,
// digits and hyphens, not ending in a hyphen (RFC 5321 4.1.3).
func ldhStr(t string) bool {
	if t == "" || t[len(t)-1] == '-' {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func cutFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return "", false
}

// mailParams applies MAIL parameters (RFC 5321 4.1.2 Mail-parameters):
// SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531). Anything else is
// 555 5.5.4. Parameters are only allowed after EHLO.
func (s *Session) mailParams(params []byte, tx *Tx) []byte {
	for _, p := range bytes.Fields(params) {
		if !s.extended {
			return replyBadParam
		}
		key, val, hasVal := bytes.Cut(p, []byte{'='})
		switch {
		case verbIs(key, "SIZE"):
			n, ok := parseCount(val)
			if !hasVal || !ok {
				return replyBadParamVal
			}
			// RFC 1870 6.1: a declared size over the limit is refused now.
			if n > s.cfg.MaxMessageSize {
				return replyTooBig
			}
			tx.DeclaredSize = n
		case verbIs(key, "BODY"):
			switch {
			case verbIs(val, "8BITMIME"):
				tx.Body8Bit = true
			case verbIs(val, "7BIT"):
			default:
				return replyBadParamVal
			}
		case verbIs(key, "SMTPUTF8"):
			// RFC 6531 3.4: the parameter takes no value.
			if hasVal {
				return replyBadParamVal
			}
			tx.SMTPUTF8 = true
		default:
			return replyBadParam
		}
	}
	return nil
}

// addressArg finds the path of a MAIL FROM or RCPT TO command line (given
// without its line end): rcpt tells which of the two it is, start is the
// index of the '<' that opens the path (-1 when the argument has none)
// and end the index of the '>' that closes it, or len(line) when none
// does. ok is false for any other command.
func addressArg(line []byte) (rcpt bool, start, end int, ok bool) {
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false, -1, -1, false
	}
	var prefix string
	switch verb := line[:sp]; {
	case verbIs(verb, "MAIL"):
		prefix = "FROM:"
	case verbIs(verb, "RCPT"):
		prefix, rcpt = "TO:", true
	default:
		return false, -1, -1, false
	}
	rest, isPath := cutPrefixFold(line[sp+1:], prefix)
	i := len(line) - len(rest)
	for isPath && i < len(line) && line[i] == ' ' {
		i++
	}
	if !isPath || i == len(line) || line[i] != '<' {
		return rcpt, -1, len(line), true
	}
	if end := closeAngle(line, i); end >= 0 {
		return rcpt, i, end, true
	}
	return rcpt, i, len(line), true
}

// lineEnd returns the index of the LF that ends the command line at the
// start of b, or -1 when b holds no whole line yet. A command line ends
// with CRLF (RFC 5321 2.3.8); a bare LF ends it too, so that a client
// that ends its lines with LF alone gets one error per line, unless the
// LF lies inside the path of a MAIL FROM or RCPT TO: there it is a
// control character in an address, which gets one 501 when the line's
// CRLF comes, and the client, which sent one command, gets one reply.
func lineEnd(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i <= 0 || b[i-1] == '\r' {
		return i
	}
	// A bare LF past the first 512 octets (RFC 5321 4.5.3.1.4) ends the
	// line without a look at it, so the look costs a few hundred octets
	// at most, however long max_line_length allows lines to be.
	if i > 512 {
		return i
	}
	_, start, end, ok := addressArg(b[:i])
	if !ok || start < 0 || end < i {
		return i
	}
	// Look no further than a path may reach (RFC 5321 4.5.3.1.3: 256
	// octets with its brackets); past that the next LF ends the line.
	seg := b[:min(len(b), start+256)]
	end = closeAngle(seg, start)
	if crlf := bytes.Index(seg[start:], []byte("\r\n")); crlf >= 0 && (end < 0 || start+crlf < end) {
		return start + crlf + 1
	}
	if end < 0 {
		if len(seg) < start+256 {
			return -1
		}
		end = len(seg)
	}
	if k := bytes.IndexByte(b[end:], '\n'); k >= 0 {
		return end + k
	}
	return -1
}

// ctlReply is the answer to a command line (without its CRLF) that holds
// a control character. In the path of MAIL or RCPT it is bad address
// syntax, 501 with 5.1.7 or 5.1.3 (RFC 3463 3.2); elsewhere in their
// argument a syntax error in parameters, 501 5.5.4 (RFC 5321 4.2.3). Any
// other command line gets 500 5.5.2.
func ctlReply(line []byte) []byte {
	rcpt, start, end, ok := addressArg(line)
	if !ok {
		return replyCtlChars
	}
	at := 0
	for at < len(line) && line[at] >= 0x20 && line[at] != 0x7f {
		at++
	}
	inPath := start >= 0 && at > start && at < end
	switch {
	case inPath && rcpt:
		return replyCtlRcpt
	case inPath:
		return replyCtlSender
	case rcpt:
		return replySyntaxRcpt
	}
	return replySyntaxMail
}
