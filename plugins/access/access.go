// Package access is the access plugin: allow and deny lists for the
// client's address and reverse name (at connect), the HELO/EHLO name, the
// sender and the recipients, read from files of the config directory at
// start. At each stage a match in an allow list wins over a match in a
// deny list. Every match is recorded for the results plugin. Every check
// is a map probe or a regular expression, so all hooks run inline on the
// event loop.
package access

import (
	"path/filepath"
	"strings"

	"loopmx/config"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "access"

// RDNSNote is the connection note holding the client's reverse DNS name,
// set by a plugin that looks it up. loopmx itself does no reverse lookup,
// so without such a plugin, listed earlier in the chain, rDNS entries
// match nothing.
const RDNSNote = "rdns"

func init() { plugins.Register(Name, setup) }

// listKeys are the keys of access.ini, each naming one list file; the
// default file name is "access." plus the key with '_' as '.'.
var listKeys = []string{
	"ip_allow", "ip_deny", "rdns_allow", "rdns_deny", "helo_allow", "helo_deny",
	"mail_allow", "mail_deny", "rcpt_allow", "rcpt_deny",
}

// Kinds of entries in a list, for parseList.
const (
	names     = false // rDNS and HELO lists
	addresses = true  // MAIL and RCPT lists
)

// Access holds the lists, each nil when its file is missing or empty.
type Access struct {
	ipAllow, ipDeny     *ipList
	rdnsAllow, rdnsDeny *list
	heloAllow, heloDeny *list
	mailAllow, mailDeny *list
	rcptAllow, rcptDeny *list
}

// setup reads access.ini and every list file once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	paths := make(map[string]string, len(listKeys))
	for _, key := range listKeys {
		paths[key] = pc.Path("", key, "access."+strings.ReplaceAll(key, "_", "."))
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	p := &Access{}
	for _, key := range listKeys {
		lines, err := readLines(cfg, shownName(cfg, paths[key]))
		if err != nil {
			return nil, err
		}
		switch key {
		case "ip_allow":
			p.ipAllow, err = parseIPList(lines)
		case "ip_deny":
			p.ipDeny, err = parseIPList(lines)
		case "rdns_allow":
			p.rdnsAllow, err = parseList(lines, names)
		case "rdns_deny":
			p.rdnsDeny, err = parseList(lines, names)
		case "helo_allow":
			p.heloAllow, err = parseList(lines, names)
		case "helo_deny":
			p.heloDeny, err = parseList(lines, names)
		case "mail_allow":
			p.mailAllow, err = parseList(lines, addresses)
		case "mail_deny":
			p.mailDeny, err = parseList(lines, addresses)
		case "rcpt_allow":
			p.rcptAllow, err = parseList(lines, addresses)
		case "rcpt_deny":
			p.rcptDeny, err = parseList(lines, addresses)
		}
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// shownName is how errors name a list file: relative to the config
// directory when it is inside it.
func shownName(cfg *config.Config, path string) string {
	if rel, err := filepath.Rel(cfg.Dir, path); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return rel
	}
	return path
}

// Name implements plugins.Plugin.
func (*Access) Name() string { return Name }

// Connect implements plugins.ConnectHook: the client's address, and its
// reverse name when a plugin before this one noted it.
func (p *Access) Connect(c *plugins.Conn) plugins.Result {
	rdns, _ := c.Note(RDNSNote).(string)
	if src, ok := p.ipAllow.match(c.RemoteIP); ok {
		return allowed(c, plugins.HookConnect, c.RemoteIP.Unmap().String(), src)
	}
	if rdns != "" {
		if src, ok := p.rdnsAllow.match(rdns); ok {
			return allowed(c, plugins.HookConnect, rdns, src)
		}
	}
	if src, ok := p.ipDeny.match(c.RemoteIP); ok {
		return denied(c, plugins.HookConnect, c.RemoteIP.Unmap().String(), src, deniedConnect)
	}
	if rdns != "" {
		if src, ok := p.rdnsDeny.match(rdns); ok {
			return denied(c, plugins.HookConnect, rdns, src, deniedConnect)
		}
	}
	return plugins.NoOpinion()
}

// Helo implements plugins.HeloHook.
func (p *Access) Helo(c *plugins.Conn, name string) plugins.Result {
	return judge(c, plugins.HookHelo, p.heloAllow, p.heloDeny, name)
}

// Ehlo implements plugins.EhloHook, with the same lists as HELO.
func (p *Access) Ehlo(c *plugins.Conn, name string) plugins.Result {
	return judge(c, plugins.HookEhlo, p.heloAllow, p.heloDeny, name)
}

// Mail implements plugins.MailHook; the null sender is the empty string.
func (p *Access) Mail(c *plugins.Conn, from string) plugins.Result {
	return judge(c, plugins.HookMail, p.mailAllow, p.mailDeny, from)
}

// Rcpt implements plugins.RcptHook.
func (p *Access) Rcpt(c *plugins.Conn, to string) plugins.Result {
	return judge(c, plugins.HookRcpt, p.rcptAllow, p.rcptDeny, to)
}

// judge applies one stage's lists to v: allow wins over deny.
func judge(c *plugins.Conn, h plugins.Hook, allow, deny *list, v string) plugins.Result {
	if src, ok := allow.match(v); ok {
		return allowed(c, h, v, src)
	}
	if src, ok := deny.match(v); ok {
		return denied(c, h, v, src, deniedCommand)
	}
	return plugins.NoOpinion()
}

// The refusals are fixed; the entry that matched goes to the results
// and the debug log.
var (
	deniedConnect = plugins.Deny(554, "5.7.1", "Access denied")
	deniedCommand = plugins.Deny(550, "5.7.1", "Access denied")
)

// allowed answers Continue: an allow entry only overrides this plugin's
// deny lists, so the plugins after it (a relay check above all) still
// judge the command. It records a pass naming the entry.
func allowed(c *plugins.Conn, h plugins.Hook, v, src string) plugins.Result {
	matched(c, h, plugins.Pass, v, src)
	return plugins.NoOpinion()
}

// denied records a fail naming the entry and answers r.
func denied(c *plugins.Conn, h plugins.Hook, v, src string, r plugins.Result) plugins.Result {
	matched(c, h, plugins.Fail, v, src)
	return r
}

// matched records that v, at hook h, matched the list entry src: the
// finding reads "<hook> <value> in <file:line>", the null sender as <>.
func matched(c *plugins.Conn, h plugins.Hook, o plugins.Outcome, v, src string) {
	if v == "" {
		v = "<>"
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: o, Message: h.String() + " " + v + " in " + src})
	if c.Log != nil {
		verdict := "allowed"
		if o == plugins.Fail {
			verdict = "denied"
		}
		c.Log.Debug().Str("plugin", Name).Str("conn", c.ID).Str("hook", h.String()).Str("rule", src).Msg(verdict)
	}
}

var (
	_ plugins.ConnectHook = (*Access)(nil)
	_ plugins.HeloHook    = (*Access)(nil)
	_ plugins.EhloHook    = (*Access)(nil)
	_ plugins.MailHook    = (*Access)(nil)
	_ plugins.RcptHook    = (*Access)(nil)
)
