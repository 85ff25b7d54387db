package rcptvalid

import (
	"fmt"
	"strings"

	"loopmx/config"
	"loopmx/internal/address"
)

// list is what the recipients file says, per domain. It is built once
// per config generation and only read afterwards, by every event loop at
// once.
type list struct {
	domains map[string]*domain
}

// domain is one domain of the file.
type domain struct {
	all   bool                // a catch-all line: every local part
	users map[string]struct{} // local parts, lower case
	alias string              // "@this: @alias": also valid when valid there
	line  int                 // the first line that named it, for errors
}

func (d *domain) has(local string) bool {
	_, ok := d.users[local]
	return ok
}

// parseLine reads "address", "@domain", "address: target, target" or
// "address target target" (the form of Postfix's virtual table). The
// address ends at the first space or tab, or at a ':' after its '@'
// (outside quotes and an address literal's brackets).
func parseLine(text string) (addr string, targets []string) {
	quoted, at, bracket := false, false, false
	end := len(text)
scan:
	for i := 0; i < len(text); i++ {
		ch := text[i]
		switch {
		case quoted && ch == '\\':
			i++
		case ch == '"':
			quoted = !quoted
		case quoted:
		case ch == ' ' || ch == '\t':
			end = i
			break scan
		case ch == '@':
			at = true
		case ch == '[' && at:
			bracket = true
		case ch == ']':
			bracket = false
		case ch == ':' && at && !bracket:
			end = i
			break scan
		}
	}
	rest := strings.TrimSpace(text[end:])
	rest = strings.TrimSpace(strings.TrimPrefix(rest, ":"))
	targets = strings.FieldsFunc(rest, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	return text[:end], targets
}

// readList reads the recipients file at path (named file in errors) into
// a list. Lines that are not addresses, and domain aliases that lead
// nowhere or to another alias, are errors naming the file and line.
// separators is the sub-address separators: a listed local part that
// holds one could never match a tagged recipient, so it is refused too.
func readList(cfg *config.Config, path, file, separators string) (*list, error) {
	items, err := cfg.ListItems(path)
	if err != nil {
		return nil, err
	}
	l := &list{domains: map[string]*domain{}}
	bad := func(line int, text, why string) error {
		return fmt.Errorf("config: %s:%d: %q %s", file, line, text, why)
	}
	// aliases are the domains that are aliases, and the line of each.
	type aliasLine struct {
		dom  string
		line int
	}
	var aliases []aliasLine
	for _, it := range items {
		a, targets := parseLine(it.Text)
		local, dom, ok := address.Split(strings.ToLower(a))
		if !ok || dom == "" || strings.ContainsAny(dom, " \t\"") {
			return nil, bad(it.Line, it.Text, "is not an address (user@example.com) or a domain (@example.com)")
		}
		d := l.domains[dom]
		if d == nil {
			d = &domain{users: map[string]struct{}{}, line: it.Line}
			l.domains[dom] = d
		}
		for _, t := range targets {
			if !strings.Contains(t, "@") {
				return nil, bad(it.Line, t, "is not an address an alias can point to (user@example.com, or @example.com for a domain alias)")
			}
		}
		switch {
		case local == "" && len(targets) == 0:
			d.all = true
		case local == "":
			if len(targets) != 1 || !strings.HasPrefix(targets[0], "@") {
				return nil, bad(it.Line, it.Text, "is a domain alias with other than one target domain (write @alias.example: @example.com)")
			}
			if d.alias != "" {
				return nil, bad(it.Line, it.Text, "gives "+dom+" a second domain alias")
			}
			d.alias = address.Domain(targets[0][1:])
			aliases = append(aliases, aliasLine{dom: dom, line: it.Line})
		default:
			if strings.HasPrefix(local, "@") {
				return nil, bad(it.Line, it.Text, "is not an address")
			}
			if separators != "" && address.Base(local, separators) != local {
				return nil, bad(it.Line, it.Text, "holds the sub-address separator ("+separators+"): tagged recipients are matched by the part before it; list that part")
			}
			d.users[local] = struct{}{}
		}
	}
	for _, a := range aliases {
		d := l.domains[a.dom]
		t := l.domains[d.alias]
		switch {
		case d.alias == a.dom:
			return nil, bad(a.line, "@"+a.dom, "is an alias of itself")
		case t != nil && t.alias != "":
			return nil, bad(a.line, "@"+a.dom, "is an alias of "+d.alias+", itself an alias: point it at the final domain")
		}
	}
	return l, nil
}

// verdict is what the file, and then Redis, say of a recipient.
type verdict uint8

const (
	// unmanaged: no list covers the domain; another plugin decides.
	unmanaged verdict = iota
	// known: the recipient exists.
	known
	// unknown: the domain is listed and the recipient is not in it.
	unknown
	// askRedis: only Redis can tell (query.domain names its key).
	askRedis
)

// query is a recipient on its way through the lookups.
type query struct {
	verdict verdict
	domain  string // the domain Redis is asked about
	local   string // the local part, lower case
	base    string // local without its sub-address tag
	listed  bool   // the file lists domain: a missing Redis key means unknown
}

// lookup decides what it can of to from the file. Redis is asked only
// about domains in redisDomains (host_list), so that a relay attempt
// costs no round trip.
func (l *list) lookup(to, separators string, redisDomains address.Domains) query {
	local, dom, ok := address.Split(to)
	if !ok {
		return query{verdict: unmanaged} // <postmaster>: in_host_list's
	}
	local = strings.ToLower(local)
	q := query{local: local, base: address.Base(local, separators), domain: dom}
	d := l.domains[dom]
	// RFC 5321 4.5.1: postmaster of every domain we serve exists.
	if q.local == "postmaster" && (d != nil || redisDomains.Has(dom)) {
		q.verdict = known
		return q
	}
	if d != nil && (d.all || d.has(q.local) || d.has(q.base)) {
		q.verdict = known
		return q
	}
	q.listed = d != nil
	if d != nil && d.alias != "" {
		t := l.domains[d.alias]
		if t != nil && (t.all || t.has(q.local) || t.has(q.base)) {
			q.verdict = known
			return q
		}
		if redisDomains.Has(d.alias) {
			q.domain, q.listed = d.alias, t != nil
			q.verdict = askRedis
			return q
		}
	}
	switch {
	case redisDomains.Has(dom):
		q.verdict = askRedis
	case d != nil:
		q.verdict = unknown
	}
	return q
}
