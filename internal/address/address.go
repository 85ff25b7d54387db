// Package address holds what the recipient plugins (rcpt_to.valid,
// rcpt_to.verify, greylist) share about envelope addresses: splitting an
// address into local part and domain, cutting a sub-address tag, undoing
// the BATV and SRS rewrites of a sender, the set of local domains from
// host_list, and the check that a recipient plugin sits in front of
// rcpt_to.in_host_list.
//
// Addresses arrive as the session hands them to the rcpt and mail hooks:
// without angle brackets and source route, a quoted local part as
// written.
package address

import (
	"fmt"
	"strings"

	"loopmx/config"
)

// InHostList is the name of the plugin that decides every recipient and
// refuses relaying; recipient plugins that only refuse must run before
// it.
const InHostList = "rcpt_to.in_host_list"

// Split cuts addr at its last '@' (a quoted local part may hold one) and
// returns the local part as written and the domain in lower case without
// a trailing dot. ok is false for an address without a domain
// (<postmaster>).
func Split(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr, "", false
	}
	return addr[:i], Domain(addr[i+1:]), true
}

// Domain is d in lower case without a trailing dot, as host_list holds
// domains.
func Domain(d string) string {
	return strings.TrimSuffix(strings.ToLower(d), ".")
}

// Base cuts a sub-address tag off local: the part from the first of the
// separator characters on (user+tag gives user). A separator at the
// start, or a local part without one, leaves local as it is; an empty
// separators turns sub-addressing off.
func Base(local, separators string) string {
	if separators == "" {
		return local
	}
	if i := strings.IndexAny(local, separators); i > 0 {
		return local[:i]
	}
	return local
}

// Sender normalises a reverse path for greylisting, so that one sender
// keeps one key although parts of its address change from message to
// message: lower case, a BATV tag (prvs=TAG=user, msprvs1=TAG=user,
// btv1==TAG==user) and an SRS rewrite (SRS0=HASH=TT=domain=user@fwd
// gives user@domain) undone, a sub-address tag cut. The null sender
// stays "".
func Sender(from, separators string) string {
	from = strings.ToLower(from)
	local, domain, ok := Split(from)
	if !ok {
		return from
	}
	local = unBATV(local)
	if l, d, ok := unSRS(local); ok {
		local, domain = l, d
	}
	return Base(local, separators) + "@" + domain
}

// unBATV removes a BATV prefix (draft-levine-smtp-batv, and the variants
// in use) from a lower-case local part.
func unBATV(local string) string {
	for _, p := range []string{"prvs=", "msprvs1="} {
		if rest, ok := strings.CutPrefix(local, p); ok {
			if _, user, ok := strings.Cut(rest, "="); ok && user != "" {
				return user
			}
		}
	}
	if rest, ok := strings.CutPrefix(local, "btv1=="); ok {
		if _, user, ok := strings.Cut(rest, "=="); ok && user != "" {
			return user
		}
	}
	return local
}

// unSRS returns the original local part and domain of an SRS address:
// SRS0=HASH=TT=domain=user, or SRS1=HASH=forwarder==HASH=TT=domain=user
// (the second forwarder's wrapping around an SRS0 address). A local part
// that is not SRS, or does not parse, gives ok false.
func unSRS(local string) (user, domain string, ok bool) {
	var rest string
	switch {
	case strings.HasPrefix(local, "srs0=") || strings.HasPrefix(local, "srs0+") || strings.HasPrefix(local, "srs0-"):
		rest = local[len("srs0="):]
	case strings.HasPrefix(local, "srs1="):
		_, inner, found := strings.Cut(local, "==")
		if !found {
			return "", "", false
		}
		rest = inner
	default:
		return "", "", false
	}
	// HASH=TT=domain=user; the user may itself contain '='.
	parts := strings.SplitN(rest, "=", 4)
	if len(parts) != 4 || parts[2] == "" || parts[3] == "" {
		return "", "", false
	}
	return parts[3], Domain(parts[2]), true
}

// Domains is a set of domains in the form Domain gives.
type Domains map[string]struct{}

// NewDomains makes a set of the domains in list.
func NewDomains(list []string) Domains {
	d := make(Domains, len(list))
	for _, s := range list {
		d[Domain(strings.TrimSpace(s))] = struct{}{}
	}
	return d
}

// Has reports whether domain (in the form Domain gives) is in the set.
func (d Domains) Has(domain string) bool {
	_, ok := d[domain]
	return ok
}

// CheckOrder refuses a plugins file in which the plugin name comes after
// rcpt_to.in_host_list: that one accepts or refuses every recipient, so
// the rcpt hook of a plugin after it would never run.
func CheckOrder(cfg *config.Config, name string) error {
	host := -1
	for i, p := range cfg.Plugins {
		switch p {
		case InHostList:
			host = i
		case name:
			if host >= 0 {
				return fmt.Errorf("config: plugins:%d: %s comes after %s (line %d), which decides every recipient: "+
					"%s would never see one; list it before", cfg.PluginLine(i), name, InHostList, cfg.PluginLine(host), name)
			}
			return nil
		}
	}
	return nil
}

// Listed reports whether the plugins file names plugin.
func Listed(cfg *config.Config, plugin string) bool {
	for _, p := range cfg.Plugins {
		if p == plugin {
			return true
		}
	}
	return false
}
