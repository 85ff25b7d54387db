// Package authresults is the auth_results plugin: at the end of each
// message it writes one Authentication-Results field (RFC 8601) with the
// results the other plugins noted (iprev from fcrdns, spf, dkim, dmarc),
// under the operator's authserv-id, and drops from the stored message any
// Authentication-Results field that claims that authserv-id: only this
// server may speak for it. It asks nothing and runs inline; it goes after
// every plugin whose result it reports.
package authresults

import (
	"fmt"
	"strings"

	"github.com/emersion/go-msgauth/authres"

	"loopmx/config"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "auth_results"

// FieldName is the name of the field the plugin writes and filters.
const FieldName = "Authentication-Results"

func init() { plugins.Register(Name, setup) }

// AuthResults holds the authserv-id.
type AuthResults struct {
	id string
}

// setup reads auth_results.ini once, at start.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	p := &AuthResults{id: pc.String("", "authserv_id", cfg.Main.Hostname)}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if p.id == "" || strings.ContainsAny(p.id, " \t\r\n;()\"\\") {
		return nil, fmt.Errorf("config: %s: [main] authserv_id: %q is not a valid authserv-id (a host name, no spaces or ;)", pc.File(), p.id)
	}
	return p, nil
}

// Name implements plugins.Plugin.
func (*AuthResults) Name() string { return Name }

// DataPost implements plugins.DataPostHook: it removes forged fields and
// adds ours. It never refuses.
func (p *AuthResults) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	if c.Tx == nil {
		return plugins.NoOpinion()
	}
	if n := m.RemoveHeaders(p.forged); n > 0 {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Word: "forged",
			Message: fmt.Sprintf("%d %s field(s) claiming %s removed", n, FieldName, p.id)})
	}
	if err := m.AddHeader(FieldName, p.value(c)); err != nil && c.Log != nil {
		c.Log.Error().Str("plugin", Name).Str("tx", c.Tx.ID).Err(err).Msg(FieldName + " not added")
	}
	return plugins.NoOpinion()
}

// forged tells whether a field of the message is an
// Authentication-Results field under our authserv-id (RFC 8601 5).
func (p *AuthResults) forged(name, value string) bool {
	return strings.EqualFold(name, FieldName) && strings.EqualFold(authservID(value), p.id)
}

// authservID is the authserv-id of a field's value: the first word
// before the first ";", after any comments.
func authservID(value string) string {
	head, _, _ := strings.Cut(value, ";")
	for {
		head = strings.TrimSpace(head)
		if !strings.HasPrefix(head, "(") {
			break
		}
		end := strings.IndexByte(head, ')')
		if end < 0 {
			return ""
		}
		head = head[end+1:]
	}
	if f := strings.Fields(head); len(f) > 0 {
		return f[0]
	}
	return ""
}

// value is the field's value, one method result a folded line:
//
//	mx.example.com;
//		iprev=pass policy.iprev=192.0.2.1;
//		spf=pass smtp.mailfrom=a@example.org;
//		dkim=pass header.d=example.org header.i=@example.org;
//		dmarc=pass header.from=example.org
func (p *AuthResults) value(c *plugins.Conn) string {
	var results []string
	add := func(method string, note any) {
		if note == nil {
			return
		}
		results = append(results, format(method, fmt.Sprint(note)))
	}
	add("iprev", iprev(c))
	add("spf", c.Tx.Note("spf"))
	if sigs, ok := c.Tx.Note("dkim").([]fmt.Stringer); ok {
		for _, s := range sigs {
			add("dkim", s)
		}
	}
	add("dmarc", c.Tx.Note("dmarc"))
	if len(results) == 0 {
		return p.id + "; none"
	}
	return p.id + ";\r\n\t" + strings.Join(results, ";\r\n\t")
}

// iprev is the iprev result (RFC 8601 2.7.3) from the fcrdns plugin's
// notes: pass with the verified name in rdns, temperror when its lookup
// failed, fail otherwise; nil when fcrdns did not check the client.
func iprev(c *plugins.Conn) any {
	note := c.Note("fcrdns")
	if note == nil {
		return nil
	}
	ip := c.RemoteIP.Unmap().String()
	switch name, _ := c.Note(plugins.RDNSNote).(string); {
	case name != "":
		return "pass policy.iprev=" + ip
	case fmt.Sprint(note) == "lookup failed":
		return "temperror policy.iprev=" + ip
	}
	return "fail policy.iprev=" + ip
}

// format writes one method result from a note that prints as
// "result prop=value ...", through authres, which quotes what needs it.
func format(method, note string) string {
	words := strings.Fields(note)
	if len(words) == 0 {
		return method + "=none"
	}
	r := &authres.GenericResult{Method: method, Value: authres.ResultValue(strings.ToLower(words[0])), Params: map[string]string{}}
	for _, w := range words[1:] {
		if k, v, ok := strings.Cut(w, "="); ok {
			r.Params[k] = v
		}
	}
	s := authres.Format("", []authres.Result{r})
	return strings.TrimSpace(strings.TrimPrefix(s, ";"))
}

var _ plugins.DataPostHook = (*AuthResults)(nil)
