package access

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"loopmx/config"
)

// line is one entry of a list file and where it was written.
type line struct {
	text string
	src  string // "file:line", for errors and the debug log
}

// readLines reads a list file with config.ListItems (a missing file is an
// empty list) and names each entry "file:line" for errors. name is the
// file relative to the config directory, or absolute.
func readLines(cfg *config.Config, name string) ([]line, error) {
	items, err := cfg.ListItems(name)
	if err != nil || len(items) == 0 {
		return nil, err
	}
	out := make([]line, len(items))
	for i, it := range items {
		out[i] = line{text: it.Text, src: name + ":" + strconv.Itoa(it.Line)}
	}
	return out, nil
}

// entryError is a bad entry, named by file and line.
func entryError(l line, why string) error {
	return fmt.Errorf("config: %s: %q %s", l.src, l.text, why)
}

// ipList matches client addresses against addresses and CIDR prefixes.
// Entries are kept by prefix, so a lookup costs one map probe per
// distinct prefix length in the list, not one per entry.
type ipList struct {
	prefixes map[netip.Prefix]string // masked prefix -> source
	bits4    []int                   // the distinct prefix lengths of IPv4 entries
	bits6    []int                   // and of IPv6 entries
}

func parseIPList(lines []line) (*ipList, error) {
	if len(lines) == 0 {
		return nil, nil
	}
	l := &ipList{prefixes: make(map[netip.Prefix]string, len(lines))}
	for _, ln := range lines {
		var p netip.Prefix
		if strings.Contains(ln.text, "/") {
			var err error
			if p, err = netip.ParsePrefix(ln.text); err != nil {
				return nil, entryError(ln, "is not an IP address or CIDR prefix")
			}
			if p.Addr().Is4In6() {
				return nil, entryError(ln, "is an IPv4-mapped prefix; write the IPv4 prefix")
			}
			if p != p.Masked() {
				return nil, entryError(ln, "has bits set past the prefix length; did you mean "+p.Masked().String()+"?")
			}
		} else {
			a, err := netip.ParseAddr(ln.text)
			if err != nil || a.Zone() != "" {
				return nil, entryError(ln, "is not an IP address or CIDR prefix")
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if _, dup := l.prefixes[p]; !dup {
			l.prefixes[p] = ln.src
			if p.Addr().Is4() {
				l.bits4 = addBits(l.bits4, p.Bits())
			} else {
				l.bits6 = addBits(l.bits6, p.Bits())
			}
		}
	}
	return l, nil
}

func addBits(bits []int, b int) []int {
	for _, x := range bits {
		if x == b {
			return bits
		}
	}
	return append(bits, b)
}

// match returns the source of an entry that covers ip.
func (l *ipList) match(ip netip.Addr) (string, bool) {
	if l == nil || !ip.IsValid() {
		return "", false
	}
	ip = ip.Unmap()
	bits := l.bits6
	if ip.Is4() {
		bits = l.bits4
	}
	for _, b := range bits {
		p, err := ip.Prefix(b)
		if err != nil {
			continue
		}
		if src, ok := l.prefixes[p]; ok {
			return src, true
		}
	}
	return "", false
}

// list matches names (HELO, rDNS) or addresses (MAIL, RCPT).
//
// In a name list, "mx.example.com" matches that name exactly and
// ".example.com" matches example.com and every name under it. In an
// address list, "user@example.com" matches that address exactly,
// "example.com" every address at that domain, and ".example.com" every
// address at example.com or a domain under it. In both, "/re/" is a
// regular expression (Go RE2 syntax, case-insensitive, not anchored)
// matched against the value as the client sent it. All other
// comparisons ignore case and a trailing dot.
type list struct {
	addresses bool
	exact     map[string]string // the whole name or address -> source
	domain    map[string]string // address lists: the domain part -> source
	suffix    map[string]string // the name or domain, or a parent of it -> source
	res       []pattern
}

type pattern struct {
	re  *regexp.Regexp
	src string
}

func parseList(lines []line, addrs bool) (*list, error) {
	if len(lines) == 0 {
		return nil, nil
	}
	l := &list{addresses: addrs, exact: map[string]string{}, domain: map[string]string{}, suffix: map[string]string{}}
	for _, ln := range lines {
		t := ln.text
		if len(t) >= 2 && t[0] == '/' && t[len(t)-1] == '/' {
			if len(t) == 2 {
				return nil, entryError(ln, "is an empty regular expression")
			}
			re, err := regexp.Compile("(?i)" + t[1:len(t)-1])
			if err != nil {
				return nil, entryError(ln, "is not a regular expression: "+err.Error())
			}
			l.res = append(l.res, pattern{re, ln.src})
			continue
		}
		if t[0] == '/' {
			return nil, entryError(ln, "starts a regular expression but does not end with '/'")
		}
		if strings.ContainsAny(t, " \t") {
			return nil, entryError(ln, "contains a space")
		}
		t = normalize(t)
		at := strings.LastIndexByte(t, '@')
		switch {
		case at >= 0 && !addrs:
			return nil, entryError(ln, "is an address; this list holds names")
		case at == 0:
			return nil, entryError(ln, "has no local part; write the domain alone to match every address at it")
		case at > 0:
			if at == len(t)-1 {
				return nil, entryError(ln, "has no domain")
			}
			addOnce(l.exact, t, ln.src)
		case t[0] == '.':
			if t = strings.TrimLeft(t, "."); t == "" {
				return nil, entryError(ln, "names no domain")
			}
			addOnce(l.suffix, t, ln.src)
		case addrs:
			addOnce(l.domain, t, ln.src)
		default:
			addOnce(l.exact, t, ln.src)
		}
	}
	return l, nil
}

// addOnce keeps the first source of a repeated entry.
func addOnce(m map[string]string, k, src string) {
	if _, ok := m[k]; !ok {
		m[k] = src
	}
}

// normalize lower-cases s and drops one trailing dot.
func normalize(s string) string {
	return strings.TrimSuffix(strings.ToLower(s), ".")
}

// match returns the source of an entry that matches v.
func (l *list) match(v string) (string, bool) {
	if l == nil {
		return "", false
	}
	n := normalize(v)
	if src, ok := l.exact[n]; ok {
		return src, true
	}
	name := n
	if l.addresses {
		at := strings.LastIndexByte(n, '@')
		if at < 0 {
			name = "" // no domain: only a regular expression can match
		} else {
			name = n[at+1:]
			if src, ok := l.domain[name]; ok {
				return src, true
			}
		}
	}
	for d := name; d != ""; {
		if src, ok := l.suffix[d]; ok {
			return src, true
		}
		i := strings.IndexByte(d, '.')
		if i < 0 {
			break
		}
		d = d[i+1:]
	}
	for _, p := range l.res {
		if p.re.MatchString(v) {
			return p.src, true
		}
	}
	return "", false
}
