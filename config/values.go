package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// valueError says why one value is unusable. Its text quotes the value
// first, so callers only prefix where the value came from:
// `config: smtp.ini: [main] max_recipients: "ten" is not a number`.
type valueError struct {
	value string
	why   string
	err   error // the parser's own error, if any; kept for errors.Is/As
}

func (e *valueError) Error() string { return fmt.Sprintf("%q %s", e.value, e.why) }

func (e *valueError) Unwrap() error { return e.err }

// noMax marks an integer range that has a lower bound only.
const noMax = math.MaxInt

func rangeWhy(lo, hi int) string {
	if hi == noMax {
		return fmt.Sprintf("is out of range (minimum %d)", lo)
	}
	return fmt.Sprintf("is out of range %d..%d", lo, hi)
}

// parseInt reads a decimal integer.
func parseInt(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, &valueError{v, "is out of range", err}
		}
		return 0, &valueError{v, "is not a number", err}
	}
	return n, nil
}

// parseIntIn reads a decimal integer in lo..hi; hi may be noMax.
func parseIntIn(v string, lo, hi int) (int, error) {
	n, err := parseInt(v)
	if err != nil {
		return 0, err
	}
	if n < lo || n > hi {
		return 0, &valueError{v, rangeWhy(lo, hi), nil}
	}
	return n, nil
}

// parseCount reads a count that is either a number of at least lo or the
// word "cpus", meaning one per CPU this process may use.
func parseCount(v string, lo int) (n int, cpus bool, err error) {
	if strings.EqualFold(v, "cpus") {
		return runtime.NumCPU(), true, nil
	}
	n, err = parseIntIn(v, lo, noMax)
	return n, false, err
}

// parseBool reads true/false, yes/no, on/off or 1/0, in any case.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, &valueError{v, "is not a boolean (true or false)", nil}
}

// parseSize reads a byte count: a plain integer, or one followed by k, m
// or g (either case) for KiB, MiB or GiB.
func parseSize(v string) (int64, error) {
	digits, mult := v, int64(1)
	if n := len(v); n > 0 {
		switch v[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			digits = v[:n-1]
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, &valueError{v, "is out of range", err}
		}
		return 0, &valueError{v, "is not a size (bytes, or a number with k, m or g)", err}
	}
	if n > math.MaxInt64/mult || n < math.MinInt64/mult {
		return 0, &valueError{v, "is out of range", nil}
	}
	return n * mult, nil
}

// parseDuration reads a Go duration ("30s", "5m", "1h30m") or a bare
// integer, which counts seconds.
func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
			return 0, &valueError{v, "is out of range", nil}
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, &valueError{v, "is not a duration (like 30s, 5m, or 300 for seconds)", err}
	}
	return d, nil
}

// parseDurationMin reads a duration of at least lo.
func parseDurationMin(v string, lo time.Duration) (time.Duration, error) {
	d, err := parseDuration(v)
	if err != nil {
		return 0, err
	}
	if d < lo {
		return 0, &valueError{v, "is out of range (minimum " + formatDuration(lo) + ")", nil}
	}
	return d, nil
}

// parseChoice reads one of a few words, in any case, and returns it in
// lower case.
func parseChoice(v string, choices ...string) (string, error) {
	low := strings.ToLower(v)
	for _, c := range choices {
		if low == c {
			return c, nil
		}
	}
	return "", &valueError{v, "is not one of " + strings.Join(choices, ", "), nil}
}

// parseListen reads a comma-separated list of listen addresses. Each is
// host:port as net.SplitHostPort understands it (IPv6 in brackets); the
// host may be empty for all addresses, and the port is numeric.
func parseListen(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, &valueError{v, "is empty (give at least one host:port)", nil}
	}
	var addrs []string
	seen := make(map[string]bool)
	for item := range strings.SplitSeq(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, &valueError{v, "has an empty entry", nil}
		}
		host, port, err := net.SplitHostPort(item)
		if err != nil {
			why := "is not host:port"
			var ae *net.AddrError
			if errors.As(err, &ae) {
				why += " (" + ae.Err + ")"
			}
			return nil, &valueError{item, why, err}
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, &valueError{item, "has a port that is not a number", err}
		}
		if p < 0 || p > 65535 {
			return nil, &valueError{item, "has a port out of range 0..65535", nil}
		}
		if host != "" && !plausibleHost(host) {
			if _, err := netip.ParseAddr(host); err != nil {
				return nil, &valueError{item, "has a host that is neither an IP address nor a host name", err}
			}
		}
		if seen[item] {
			return nil, &valueError{item, "is listed twice", nil}
		}
		seen[item] = true
		addrs = append(addrs, item)
	}
	return addrs, nil
}

// plausibleHost reports whether s can stand as a host name in a banner or
// a Received header: dot-separated labels of letters, digits, '-' and '_'
// (RFC 1035 2.3.4: 63 octets a label, 253 in all), or an address literal
// in brackets (RFC 5321 4.1.3) such as "[192.0.2.1]".
func plausibleHost(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if s[0] == '[' {
		if len(s) < 3 || s[len(s)-1] != ']' {
			return false
		}
		for _, c := range []byte(s[1 : len(s)-1]) {
			if c <= ' ' || c >= 0x7f || c == '[' || c == ']' {
				return false
			}
		}
		return true
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

// formatDuration writes d as the shortest form parseDuration reads back:
// whole seconds as "300s", anything finer in Go syntax.
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

// formatSize writes a byte count with a k, m or g suffix when it divides
// evenly, so that parseSize reads back the same number.
func formatSize(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "g"
	case n != 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "m"
	case n != 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "k"
	}
	return strconv.FormatInt(n, 10)
}
