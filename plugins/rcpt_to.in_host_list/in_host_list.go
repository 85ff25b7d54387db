// Package inhostlist is the rcpt_to.in_host_list plugin: it accepts
// recipients whose domain is in the host_list file and refuses every other
// one with 550 5.7.1, so the MX never relays.
package inhostlist

import (
	"strings"

	"loopmx/config"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "rcpt_to.in_host_list"

func init() { plugins.Register(Name, setup) }

// InHostList holds the accepted domains.
type InHostList struct {
	domains map[string]struct{}
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	return New(cfg.HostList), nil
}

// New builds the plugin for a list of domains (case-insensitive).
func New(domains []string) *InHostList {
	p := &InHostList{domains: make(map[string]struct{}, len(domains))}
	for _, d := range domains {
		p.domains[strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")] = struct{}{}
	}
	return p
}

// Name implements plugins.Plugin.
func (*InHostList) Name() string { return Name }

// Rcpt implements plugins.RcptHook. Each recipient is recorded for the
// results plugin: pass, or fail saying why.
func (p *InHostList) Rcpt(c *plugins.Conn, to string) plugins.Result {
	i := strings.LastIndexByte(to, '@')
	if i < 0 {
		// RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
		if strings.EqualFold(to, "postmaster") {
			return accept(c, to)
		}
		return deny(c, to, ": no domain")
	}
	d := to[i+1:]
	if _, ok := p.domains[d]; !ok {
		d = strings.TrimSuffix(strings.ToLower(d), ".")
		if _, ok := p.domains[d]; !ok {
			return deny(c, to, ": domain not in host_list")
		}
	}
	return accept(c, to)
}

func accept(c *plugins.Conn, to string) plugins.Result {
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: to})
	return plugins.OK()
}

func deny(c *plugins.Conn, to, why string) plugins.Result {
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: to + why})
	return relayDenied
}

var relayDenied = plugins.Deny(550, "5.7.1", "Relaying denied")

var _ plugins.RcptHook = (*InHostList)(nil)
