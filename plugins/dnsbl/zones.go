package dnsbl

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// A zone of dnsbl.ini's zones, with the entries that judge its answers.
// Several entries may name one zone ("zen.example=127.0.0.[10;11]*8,
// zen.example=127.0.0.[2..9]*4"): the zone is asked once, and each entry
// that matches the answer adds its weight.
type zone struct {
	name    string
	entries []entry
	// negative is the sum of the entries' negative weights: how far the
	// zone can still lower the score while its answer is outstanding.
	negative int
	// raises tells that an entry has a positive weight: the zone's
	// failure may hide a listing.
	raises bool
}

// entry is one item of zones: a filter on the answer and a weight.
type entry struct {
	filter *filter // nil: any listing address matches
	weight int
}

// filter is a pattern on a listing address, octet by octet: each octet
// may be a number, a range [a..b] or a list [a;b;c..d], as Postfix's
// postscreen_dnsbl_sites writes them. Bit o of set[i] allows value o in
// octet i.
type filter struct {
	set [4][4]uint64
}

func (f *filter) matches(a netip.Addr) bool {
	b := a.As4()
	for i, o := range b {
		if f.set[i][o/64]&(1<<(o%64)) == 0 {
			return false
		}
	}
	return true
}

// parseZones reads zones: items "zone[=filter][*weight]", the weight 1
// when not given, negative for an allowlist (a DNSWL). It returns the
// zones in the order they first appear.
func parseZones(items []string) ([]*zone, error) {
	var zones []*zone
	byName := map[string]*zone{}
	for _, item := range items {
		spec, w, weighted := strings.Cut(item, "*")
		name, f, filtered := strings.Cut(spec, "=")
		name = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
		if !validZone(name) {
			return nil, fmt.Errorf("%q: %q is not a DNS zone name", item, name)
		}
		e := entry{weight: 1}
		if weighted {
			n, err := strconv.Atoi(strings.TrimSpace(w))
			if err != nil || n == 0 {
				return nil, fmt.Errorf("%q: the weight %q is not a whole number other than 0", item, w)
			}
			e.weight = n
		}
		if filtered {
			var err error
			if e.filter, err = parseFilter(strings.TrimSpace(f)); err != nil {
				return nil, fmt.Errorf("%q: %w", item, err)
			}
		}
		z := byName[name]
		if z == nil {
			z = &zone{name: name}
			byName[name] = z
			zones = append(zones, z)
		}
		z.entries = append(z.entries, e)
		if e.weight < 0 {
			z.negative += e.weight
		} else {
			z.raises = true
		}
	}
	return zones, nil
}

// parseFilter reads d.d.d.d where each d is a number, [a..b] or
// [a;b;c..d], within 0..255.
func parseFilter(s string) (*filter, error) {
	f := &filter{}
	rest := s
	for i := range 4 {
		var octet string
		if strings.HasPrefix(rest, "[") {
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return nil, fmt.Errorf("the filter %q has a [ without ]", s)
			}
			octet, rest = rest[1:end], rest[end+1:]
		} else {
			end := strings.IndexByte(rest, '.')
			if end < 0 {
				end = len(rest)
			}
			octet, rest = rest[:end], rest[end:]
		}
		if i < 3 {
			if !strings.HasPrefix(rest, ".") {
				return nil, fmt.Errorf("the filter %q is not four octets such as 127.0.0.[2..11]", s)
			}
			rest = rest[1:]
		}
		for part := range strings.SplitSeq(octet, ";") {
			lo, hi, isRange := strings.Cut(part, "..")
			if !isRange {
				hi = lo
			}
			a, errA := strconv.Atoi(lo)
			b, errB := strconv.Atoi(hi)
			if errA != nil || errB != nil || a < 0 || b > 255 || a > b {
				return nil, fmt.Errorf("the filter %q has %q, which is no octet value, [a..b] or [a;b] within 0..255", s, part)
			}
			for o := a; o <= b; o++ {
				f.set[i][o/64] |= 1 << (o % 64)
			}
		}
	}
	if rest != "" {
		return nil, fmt.Errorf("the filter %q is not four octets such as 127.0.0.[2..11]", s)
	}
	return f, nil
}

// validZone reports whether z, lower-cased and without a trailing dot,
// looks like a zone name: dot-separated labels of 1 to 63 letters,
// digits, '-' or '_'.
func validZone(z string) bool {
	if z == "" || len(z) > 253 {
		return false
	}
	for label := range strings.SplitSeq(z, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// score is what the entries of z add for the listing addresses of its
// answer: each matching entry its weight, once.
func (z *zone) score(listing []netip.Addr) (score int, raised, lowered bool) {
	for _, e := range z.entries {
		for _, a := range listing {
			if e.filter == nil || e.filter.matches(a) {
				score += e.weight
				raised = raised || e.weight > 0
				lowered = lowered || e.weight < 0
				break
			}
		}
	}
	return score, raised, lowered
}
