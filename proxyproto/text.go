package proxyproto

// The checkers below read one v1 field a byte at a time. step reports
// whether the field so far can still become valid; need is the fewest bytes
// that would make it valid (0 when it already is). The v1 parser uses step
// to fail on the first bad byte and need to fail as soon as a line can no
// longer fit in 107 bytes.

// dotQuad checks an IPv4 address: exactly four decimal numbers of 0 to 255
// joined by single dots, with no leading zeros (spec 2.1).
type dotQuad struct {
	octets int // octets closed by a dot
	digits int // digits of the open octet
	value  int // value of the open octet
}

func (q *dotQuad) step(c byte) bool {
	switch {
	case isDigit(c):
		if q.digits > 0 && q.value == 0 {
			return false // leading zero
		}
		q.value = q.value*10 + int(c-'0')
		q.digits++
		return q.value <= 255
	case c == '.':
		if q.digits == 0 || q.octets == 3 {
			return false
		}
		q.octets++
		q.digits, q.value = 0, 0
		return true
	}
	return false
}

func (q *dotQuad) need() int {
	n := 2 * (3 - q.octets) // ".0" for each octet not yet started
	if q.digits == 0 {
		n++ // the open octet is empty
	}
	return n
}

// colonHex checks an IPv6 address (RFC 4291 2.2): groups of one to four
// hex digits joined by colons, at most one "::" standing for one or more
// zero groups, 128 bits in all, and optionally a dotted IPv4 address in
// place of the last two groups. Zones ("%eth0") are not addresses on the
// wire and are refused.
type colonHex struct {
	groups   int     // groups closed by a colon
	digits   int     // hex digits of the open group
	colons   int     // colons just read: 1, or 2 right after "::"
	ellipsis bool    // "::" was read
	octet    int     // the open group read as a decimal IPv4 octet, -1 if it cannot be one
	inTail   bool    // a dot was read: the rest is the embedded IPv4 address
	tail     dotQuad // the embedded IPv4 address
}

// maxGroups is how many explicit groups may still be written: eight, or
// seven once "::" has taken at least one.
func (h *colonHex) maxGroups() int {
	if h.ellipsis {
		return 7
	}
	return 8
}

func (h *colonHex) step(c byte) bool {
	if h.inTail {
		return h.tail.step(c)
	}
	switch c {
	case ':':
		switch {
		case h.digits > 0: // closes a group; another must fit after it
			h.groups++
			h.digits, h.colons = 0, 1
			return h.groups < h.maxGroups()
		case h.colons == 1: // "::"
			if h.ellipsis {
				return false
			}
			h.ellipsis, h.colons = true, 2
			return true
		case h.colons == 0: // a leading colon, which must be the start of "::"
			h.colons = 1
			return true
		}
		return false // ":::"
	case '.':
		// The open group is the first octet of an IPv4 address that takes
		// the room of the last two groups.
		room := h.groups == 6 && !h.ellipsis || h.groups <= 5 && h.ellipsis
		if h.digits == 0 || h.octet < 0 || !room {
			return false
		}
		h.inTail = true
		h.tail = dotQuad{octets: 1}
		return true
	}
	v, ok := hexValue(c)
	if !ok {
		return false
	}
	if h.digits == 0 { // a new group
		if h.colons == 1 && h.groups == 0 && !h.ellipsis {
			return false // a single leading colon
		}
		if h.groups+1 > h.maxGroups() {
			return false
		}
		h.octet = 0
	}
	if h.digits == 4 {
		return false
	}
	h.digits++
	h.colons = 0
	switch {
	case v > 9 || h.octet <= 0 && h.digits > 1:
		h.octet = -1 // a hex letter, or a leading zero
	case h.octet >= 0:
		h.octet = h.octet*10 + v
		if h.octet > 255 {
			h.octet = -1
		}
	}
	return true
}

func (h *colonHex) need() int {
	switch {
	case h.inTail:
		return h.tail.need()
	case h.digits > 0:
		if h.ellipsis || h.groups == 7 {
			return 0
		}
		return 2 // "::"
	case h.colons == 2:
		return 0
	case h.colons == 1:
		return 1 // a digit, or the second colon of "::"
	}
	return 2 // nothing yet: "::"
}

// decPort checks a port: a decimal number of 0 to 65535 with no leading
// zeros (spec 2.1).
type decPort struct {
	digits int
	value  int
}

func (p *decPort) step(c byte) bool {
	if !isDigit(c) || p.digits > 0 && p.value == 0 {
		return false
	}
	p.value = p.value*10 + int(c-'0')
	p.digits++
	return p.value <= 0xffff
}

func (p *decPort) need() int {
	if p.digits == 0 {
		return 1
	}
	return 0
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func hexValue(c byte) (int, bool) {
	switch {
	case isDigit(c):
		return int(c - '0'), true
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10, true
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}
