package proxyproto

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// checker is what the v1 field checkers have in common.
type checker interface {
	step(c byte) bool
	need() int
}

// feed runs s through c and returns need, or false if a byte failed.
func feed(c checker, s string) (int, bool) {
	for i := range len(s) {
		if !c.step(s[i]) {
			return 0, false
		}
	}
	return c.need(), true
}

// shortestCompletion returns the length of the shortest string over
// alphabet, of at most max bytes, that makes s valid, or -1 if there is
// none. It is the slow, obvious definition of what need computes.
func shortestCompletion(s, alphabet string, max int, valid func(string) bool) int {
	level := []string{""}
	for n := 0; n <= max; n++ {
		var next []string
		for _, suffix := range level {
			if valid(s + suffix) {
				return n
			}
			for i := range len(alphabet) {
				next = append(next, suffix+alphabet[i:i+1])
			}
		}
		level = next
	}
	return -1
}

// Reference grammars, from the standard library.
func validIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && a.Zone() == ""
}

func validIPv4(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is4()
}

func validPort(s string) bool {
	_, err := strconv.ParseUint(s, 10, 16)
	return err == nil && (s == "0" || s[0] != '0')
}

// allStrings lists every string over alphabet of at most max bytes.
func allStrings(alphabet string, max int) []string {
	out, level := []string{""}, []string{""}
	for range max {
		var next []string
		for _, s := range level {
			for i := range len(alphabet) {
				next = append(next, s+alphabet[i:i+1])
			}
		}
		out, level = append(out, next...), next
	}
	return out
}

// checkAgainst requires that each input is accepted exactly when some
// completion makes it valid, and that need is the shortest completion. The
// completions only need the bytes of alphabet, and are never longer than
// depth-1, so a search to depth proves there is none.
func checkAgainst(t *testing.T, fresh func() checker, inputs []string, alphabet string, depth int, valid func(string) bool) {
	t.Helper()
	for _, s := range inputs {
		need, ok := feed(fresh(), s)
		want := shortestCompletion(s, alphabet, depth, valid)
		if ok != (want >= 0) || ok && need != want {
			t.Errorf("%q: checker says ok=%v need=%d; shortest completion %d", s, ok, need, want)
		}
	}
}

// exhaustive is the length up to which the exact tests try every string
// of their alphabet: 5, or 3 with -short.
func exhaustive() int {
	if testing.Short() {
		return 3
	}
	return 5
}

func TestColonHexExact(t *testing.T) {
	fresh := func() checker { return &colonHex{} }
	checkAgainst(t, fresh, allStrings("01f:.", exhaustive()), "0:.", 6, validIPv6)

	// Longer strings near the limits: up to nine groups, sometimes with
	// "::" and a dotted tail, cut at a random point, sometimes with one
	// more byte.
	groups := []string{"0", "1", "ff", "fFfF", "12345", "25", "255", "256", "01", ""}
	octets := []string{"0", "1", "255", "256", "01", ""}
	r := rand.New(rand.NewPCG(1, 2))
	var inputs []string
	for range shortOr(600, 6000) {
		var b strings.Builder
		n := r.IntN(10)
		for i := range n {
			b.WriteString(groups[r.IntN(len(groups))])
			switch {
			case r.IntN(8) == 0:
				b.WriteString("::")
			case i < n-1:
				b.WriteString(":")
			}
		}
		if r.IntN(3) == 0 {
			for i := range 1 + r.IntN(5) {
				if i > 0 {
					b.WriteString(".")
				}
				b.WriteString(octets[r.IntN(len(octets))])
			}
		}
		s := b.String()
		s = s[:r.IntN(len(s)+1)]
		if r.IntN(2) == 0 {
			s += string(":.0f"[r.IntN(4)])
		}
		inputs = append(inputs, s)
	}
	checkAgainst(t, fresh, inputs, "0:.", 6, validIPv6)
}

func TestDotQuadExact(t *testing.T) {
	fresh := func() checker { return &dotQuad{} }
	checkAgainst(t, fresh, allStrings("0129.:", exhaustive()), "0.", 8, validIPv4)
	checkAgainst(t, fresh, []string{"255.255.255.255", "255.255.255.2555", "1.2.3.4.", "1.2.3.4.5", "256", "0.0.0.00", "192.0.2.1"},
		"0.", 8, validIPv4)
}

func TestDecPortExact(t *testing.T) {
	fresh := func() checker { return &decPort{} }
	checkAgainst(t, fresh, allStrings("0159a", exhaustive()), "0", 2, validPort)
	checkAgainst(t, fresh, []string{"65535", "65536", "99999", "100000", "6553", "65530", "65539"}, "0", 2, validPort)
}

// TestColonHexAcceptsAllForms writes random addresses in every text form a
// sender may use and requires every prefix to be accepted and the whole to
// need nothing more.
func TestColonHexAcceptsAllForms(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		var b [16]byte
		for i := range b {
			if r.IntN(3) > 0 { // runs of zeros make "::" likely
				b[i] = byte(r.Uint32())
			}
		}
		a := netip.AddrFrom16(b)
		forms := []string{a.String(), a.StringExpanded(), strings.ToUpper(a.String())}
		var groups []string
		for i := 0; i < 12; i += 2 {
			groups = append(groups, strconv.FormatUint(uint64(b[i])<<8|uint64(b[i+1]), 16))
		}
		v4 := netip.AddrFrom4([4]byte(b[12:])).String()
		forms = append(forms, strings.Join(groups, ":")+":"+v4)
		if a.Is4In6() {
			forms = append(forms, "::ffff:"+v4)
		}
		for _, s := range forms {
			if !validIPv6(s) {
				t.Fatalf("test form %q is not an address", s)
			}
			h := &colonHex{}
			for i := range len(s) {
				if !h.step(s[i]) {
					t.Fatalf("%q: refused at %q", s, s[:i+1])
				}
			}
			if n := h.need(); n != 0 {
				t.Fatalf("%q: needs %d more bytes", s, n)
			}
		}
	}
}

// shortOr is short with -short, long otherwise.
func shortOr(short, long int) int {
	if testing.Short() {
		return short
	}
	return long
}
