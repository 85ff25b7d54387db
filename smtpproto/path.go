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
	inQuote := false
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case c == '>' && !inQuote:
			rest := b[i+1:]
			if len(rest) > 0 && rest[0] != ' ' {
				return nil, nil, replySyntaxMail
			}
			return b[1:i], rest, nil
		}
	}
	return nil, nil, replySyntaxMail
}

// parsePath checks a reverse or forward path (RFC 5321 4.1.2) and returns
// the mailbox without angle brackets and without any source route
// (RFC 5321 4.1.1.3: accepted and ignored). The reply on failure never
// echoes the address back.
func parsePath(p []byte, rcpt, smtputf8 bool) (string, []byte) {
	// RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets.
	if len(p)+2 > 256 {
		return "", replyPathTooLong
	}
	if len(p) == 0 {
		if rcpt {
			return "", replyNullRcpt
		}
		return "", nil
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
			return "", replyNeedUTF8
		}
		if !utf8.Valid(p) {
			return "", replyBadRcpt
		}
	}
	if p[0] == '@' {
		// A-d-l = At-domain *( "," At-domain ); accepted and ignored.
		i := bytes.IndexByte(p, ':')
		if i < 0 {
			return "", replyBadRcpt
		}
		for _, hop := range bytes.Split(p[:i], []byte{','}) {
			if len(hop) < 2 || hop[0] != '@' || !validDomain(hop[1:]) {
				return "", replyBadRcpt
			}
		}
		p = p[i+1:]
	}
	// RFC 5321 4.1.1.3: "Postmaster" without a domain is a valid RCPT.
	if rcpt && verbIs(p, "POSTMASTER") {
		return string(p), nil
	}
	local, domain, ok := splitMailbox(p)
	if !ok || !validLocal(local) || !validDomain(domain) {
		return "", replyBadRcpt
	}
	return string(p), nil
}

// splitMailbox splits at the '@' that follows the local part, skipping a
// quoted local part that may itself contain '@'.
func splitMailbox(p []byte) (local, domain []byte, ok bool) {
	if len(p) > 0 && p[0] == '"' {
		for i := 1; i < len(p); i++ {
			switch p[i] {
			case '\\':
				i++
			case '"':
				if i+1 < len(p) && p[i+1] == '@' {
					return p[:i+1], p[i+2:], true
				}
				return nil, nil, false
			}
		}
		return nil, nil, false
	}
	i := bytes.LastIndexByte(p, '@')
	if i <= 0 {
		return nil, nil, false
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
		case verbIs(key, "SMTPUTF8") && !hasVal:
			tx.SMTPUTF8 = true
		default:
			return replyBadParam
		}
	}
	return nil
}
