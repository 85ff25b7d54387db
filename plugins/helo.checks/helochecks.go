// Package helochecks is the helo.checks plugin: checks of the name a
// client gives in HELO or EHLO (its syntax, a claim to be this server, an
// address literal that is not the client's address, a bare IP address).
// Each check is off, notes its finding for later plugins, or refuses the
// command; every check made is recorded for the results plugin. They are
// string checks, so the hooks run inline.
package helochecks

import (
	"fmt"
	"net/netip"
	"strings"

	"loopmx/config"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Name is the plugin's name in the plugins file.
const Name = "helo.checks"

// NoteKey is the connection note that lists, space-separated, the checks
// in note mode that the last HELO/EHLO name failed ("" when it failed
// none after an earlier one did).
const NoteKey = "helo.checks"

func init() { plugins.Register(Name, setup) }

// mode is what a check does when a name fails it.
type mode uint8

const (
	off mode = iota
	note
	reject
)

// kind is what a HELO name turned out to be.
type kind uint8

const (
	invalid kind = iota // none of the below
	domain              // a syntactically valid domain name
	literal             // an address literal: [192.0.2.1] or [IPv6:2001:db8::1]
	bareIP              // an IP address without brackets
)

// helo is a classified HELO name.
type helo struct {
	kind kind
	name string     // the name as sent
	ip   netip.Addr // for literal and bareIP
}

// check is one check: its key in [checks], its default, the test, and
// the reply when it refuses.
type check struct {
	key   string
	def   mode
	fails func(c *plugins.Conn, h helo) bool
	reply smtpproto.Reply
}

// checks run in this order; the first that fails in reject mode answers.
var checks = []check{
	{
		key: "valid_syntax", def: reject,
		fails: func(_ *plugins.Conn, h helo) bool { return h.kind == invalid },
		// RFC 5321 4.1.4 / 4.3.2: a syntax error in the argument.
		reply: smtpproto.Reply{Code: 501, Enhanced: "5.5.2", Text: "Syntax error in HELO name"},
	},
	{
		key: "bare_ip", def: note,
		fails: func(_ *plugins.Conn, h helo) bool { return h.kind == bareIP },
		// RFC 5321 4.1.3: an address literal is written in brackets.
		reply: smtpproto.Reply{Code: 501, Enhanced: "5.5.2", Text: "HELO address must be in brackets"},
	},
	{
		key: "claims_us", def: reject,
		fails: claimsUs,
		reply: smtpproto.Reply{Code: 550, Enhanced: "5.7.1", Text: "HELO name claims to be this server"},
	},
	{
		key: "literal_mismatch", def: note,
		fails: func(c *plugins.Conn, h helo) bool { return h.kind == literal && h.ip != c.RemoteIP.Unmap() },
		reply: smtpproto.Reply{Code: 550, Enhanced: "5.7.1", Text: "HELO address literal does not match your address"},
	},
}

// HeloChecks holds the mode of each check, in the order of checks.
type HeloChecks struct {
	modes []mode
}

// setup reads helo.checks.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	values := make([]string, len(checks))
	for i, ck := range checks {
		values[i] = pc.String("checks", ck.key, ck.def.String())
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	p := &HeloChecks{modes: make([]mode, len(checks))}
	for i, v := range values {
		m, ok := parseMode(v)
		if !ok {
			return nil, fmt.Errorf("config: %s: [checks] %s: %q is not one of reject, note, off", pc.File(), checks[i].key, v)
		}
		p.modes[i] = m
	}
	return p, nil
}

func parseMode(v string) (mode, bool) {
	switch strings.ToLower(v) {
	case "off":
		return off, true
	case "note":
		return note, true
	case "reject":
		return reject, true
	}
	return off, false
}

func (m mode) String() string {
	switch m {
	case note:
		return "note"
	case reject:
		return "reject"
	}
	return "off"
}

// Name implements plugins.Plugin.
func (*HeloChecks) Name() string { return Name }

// Helo implements plugins.HeloHook.
func (p *HeloChecks) Helo(c *plugins.Conn, name string) plugins.Result { return p.judge(c, name) }

// Ehlo implements plugins.EhloHook.
func (p *HeloChecks) Ehlo(c *plugins.Conn, name string) plugins.Result { return p.judge(c, name) }

// judge runs every check that is on. Each failed check is recorded as a
// finding; failed checks in note mode also go into the note; the first
// failed check in reject mode refuses. A name that fails no check is
// recorded as a pass and gets no opinion: the next plugin decides.
func (p *HeloChecks) judge(c *plugins.Conn, name string) plugins.Result {
	h := classify(name)
	var noted []string
	var refusal *check
	checked := false
	for i := range checks {
		ck := &checks[i]
		m := p.modes[i]
		if m == off {
			continue
		}
		checked = true
		if !ck.fails(c, h) {
			continue
		}
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: ck.key + ": " + name})
		if m == note {
			noted = append(noted, ck.key)
		} else if refusal == nil {
			refusal = ck
		}
	}
	if len(noted) > 0 || c.Note(NoteKey) != nil {
		c.SetNote(NoteKey, strings.Join(noted, " "))
	}
	if refusal != nil {
		return plugins.Result{Action: plugins.Reject, Reply: refusal.reply}
	}
	if checked && len(noted) == 0 {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: name})
	}
	return plugins.NoOpinion()
}

// claimsUs reports whether the name is this server's: its host name
// (`me`), or the address the client connected to, as a literal or bare.
// A client connecting from that very address runs on this host and is
// not judged.
func claimsUs(c *plugins.Conn, h helo) bool {
	local := c.LocalIP.Unmap()
	if local.IsValid() && c.RemoteIP.Unmap() == local {
		return false
	}
	switch h.kind {
	case domain:
		return c.Hostname != "" && strings.EqualFold(strings.TrimSuffix(c.Hostname, "."), h.name)
	case literal, bareIP:
		return local.IsValid() && h.ip == local
	}
	return false
}

// classify tells what kind of name s is.
func classify(s string) helo {
	h := helo{name: s}
	if strings.HasPrefix(s, "[") {
		if ip, ok := parseLiteral(s); ok {
			h.kind, h.ip = literal, ip
		}
		return h
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		h.kind, h.ip = bareIP, ip.WithZone("").Unmap()
		return h
	}
	if smtpproto.ValidDomainName(s) {
		h.kind = domain
	}
	return h
}

// parseLiteral parses an address literal (RFC 5321 4.1.3): "[" IPv4
// dotted quad "]" or "[IPv6:" IPv6 address "]". The tag is matched
// without regard to case; no other tag is standardized.
func parseLiteral(s string) (netip.Addr, bool) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, false
	}
	in := s[1 : len(s)-1]
	if len(in) > 5 && strings.EqualFold(in[:5], "IPv6:") {
		ip, err := netip.ParseAddr(in[5:])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return netip.Addr{}, false
		}
		return ip.Unmap(), true
	}
	ip, err := netip.ParseAddr(in)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, false
	}
	return ip, true
}

var (
	_ plugins.HeloHook = (*HeloChecks)(nil)
	_ plugins.EhloHook = (*HeloChecks)(nil)
)
