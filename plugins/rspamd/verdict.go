package rspamd

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"loopmx/plugins"
)

// Verdict is what rspamd said of a message: the part of its /checkv2
// reply that loopmx uses. It is kept as the transaction note NoteKey.
type Verdict struct {
	Action        string            `json:"action"`
	Score         float64           `json:"score"`
	RequiredScore float64           `json:"required_score"`
	Skipped       bool              `json:"is_skipped"`
	Symbols       map[string]Symbol `json:"symbols"`
	Messages      struct {
		SMTP string `json:"smtp_message"`
	} `json:"messages"`
	// Subject is the rewritten subject of the rewrite subject action.
	Subject string `json:"subject"`
	Milter  struct {
		AddHeaders    map[string]headerValues `json:"add_headers"`
		RemoveHeaders map[string]int          `json:"remove_headers"`
	} `json:"milter"`
}

// Symbol is one rule that matched.
type Symbol struct {
	Name  string  `json:"name"`
	Score float64 `json:"score"`
}

// headerValue is one field rspamd asks to add; order places it among
// the others (rspamd's milter protocol: lower first).
type headerValue struct {
	Value string `json:"value"`
	Order int    `json:"order"`
}

// headerValues is the value of one name in milter.add_headers: a string,
// an object {value, order} or an array of such.
type headerValues []headerValue

// UnmarshalJSON accepts the three forms.
func (h *headerValues) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*h = headerValues{{Value: s}}
		return nil
	}
	var one headerValue
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*h = headerValues{one}
		return nil
	}
	var many []headerValue
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*h = many
	return nil
}

// decode reads rspamd's JSON reply.
func decode(r io.Reader) (*Verdict, error) {
	var v Verdict
	if err := json.NewDecoder(r).Decode(&v); err != nil {
		return nil, fmt.Errorf("rspamd reply: %w", err)
	}
	if v.Action == "" {
		return nil, fmt.Errorf("rspamd reply: no action")
	}
	return &v, nil
}

// The actions of rspamd's protocol.
const (
	actNone     = "no action"
	actGreylist = "greylist"
	actAddHdr   = "add header"
	actSubject  = "rewrite subject"
	actSoft     = "soft reject"
	actReject   = "reject"
	actDiscard  = "discard"
	actQuar     = "quarantine"
)

// Default reply texts when rspamd gives none.
const (
	textReject   = "Spam message rejected"
	textSoft     = "Try again later"
	textGreylist = "Greylisted, try again later"
)

// apply turns a verdict into the reply, the headers and the finding.
func (p *Rspamd) apply(c *plugins.Conn, m *plugins.Message, log *zerolog.Logger, v *Verdict) plugins.Result {
	action := strings.ToLower(v.Action)
	outcome := plugins.Fail
	if action == actNone {
		outcome = plugins.Pass
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: outcome, Word: strings.ReplaceAll(action, " ", "_"), Message: v.summary(maxSummary)})

	switch action {
	case actReject, actDiscard:
		// A discard would drop the message after a 250; loopmx refuses it
		// instead, so that the sender knows.
		return plugins.Deny(550, "5.7.1", v.text(textReject))
	case actSoft:
		return plugins.DenySoft(451, "4.7.1", v.text(textSoft))
	case actGreylist:
		if p.greylist {
			return plugins.DenySoft(451, "4.7.1", v.text(textGreylist))
		}
	case actNone, actAddHdr, actQuar:
	case actSubject:
		rewriteSubject(m, v.Subject)
	default:
		p.unknownOnce.Do(func() {
			log.Warn().Str("plugin", Name).Str("action", v.Action).Msg("rspamd answered an action loopmx does not know; the message is accepted (logged once)")
		})
	}
	p.addHeaders(c, m, log, v, action)
	return plugins.NoOpinion()
}

// spam reports whether the action marks the message as spam that is
// still delivered.
func spam(action string) bool {
	return action == actAddHdr || action == actSubject || action == actQuar
}

// addHeaders adds the fields rspamd asked for (milter.add_headers), then
// loopmx's X-Spam fields as the headers key says.
func (p *Rspamd) addHeaders(c *plugins.Conn, m *plugins.Message, log *zerolog.Logger, v *Verdict, action string) {
	type field struct {
		name string
		headerValue
	}
	var fields []field
	for name, vals := range v.Milter.AddHeaders {
		for _, hv := range vals {
			fields = append(fields, field{name, hv})
		}
	}
	sort.SliceStable(fields, func(i, j int) bool {
		if fields[i].Order != fields[j].Order {
			return fields[i].Order < fields[j].Order
		}
		return fields[i].name < fields[j].name
	})
	for _, f := range fields {
		if err := m.AddHeader(f.name, foldCRLF(f.Value)); err != nil {
			log.Warn().Str("plugin", Name).Str("tx", c.Tx.ID).Str("field", f.name).Err(err).Msg("rspamd asked for a header field that is not valid; left out")
		}
	}
	p.unremovable(c, m, log, v)

	if spam(action) {
		m.AddHeader("X-Spam-Flag", "YES")
	}
	if p.headers == "off" || (p.headers == "spam" && !spam(action)) {
		return
	}
	m.AddHeader("X-Spam-Score", v.score())
	m.AddHeader("X-Spam-Action", action)
	if s := v.symbolList(maxSymbols, "\r\n\t"); s != "" {
		m.AddHeader("X-Spam-Symbols", s)
	}
}

// unremovable handles milter.remove_headers: the fields rspamd wants
// gone (a forged X-Spam, say) are left out of the stored message, and a
// finding says which.
func (p *Rspamd) unremovable(c *plugins.Conn, m *plugins.Message, log *zerolog.Logger, v *Verdict) {
	if len(v.Milter.RemoveHeaders) == 0 {
		return
	}
	removed := removeFields(m, v.Milter.RemoveHeaders)
	if len(removed) == 0 {
		return
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Word: "remove_headers",
		Message: "removed at rspamd's request: " + strings.Join(removed, ", ")})
}

// removeFields takes out of m the fields of rspamd's remove_headers: a
// name with index 0 loses every occurrence, n > 0 its nth, n < 0 its nth
// from the end (rspamd's milter convention). It returns the names of the
// fields removed, sorted, one per field.
func removeFields(m *plugins.Message, which map[string]int) []string {
	h := m.Header()
	want := map[string]int{} // canonical name: the 1-based occurrence to remove, 0 for all
	for name, idx := range which {
		k := canonical(name)
		n := len(h[k])
		switch {
		case n == 0:
			continue
		case idx < 0:
			idx = n + 1 + idx
			if idx < 1 {
				continue
			}
		case idx > n:
			continue
		}
		want[k] = idx
	}
	seen := map[string]int{}
	var removed []string
	m.RemoveHeaders(func(name, _ string) bool {
		k := canonical(name)
		idx, ok := want[k]
		if !ok {
			return false
		}
		seen[k]++
		if idx == 0 || seen[k] == idx {
			removed = append(removed, name)
			return true
		}
		return false
	})
	sort.Strings(removed)
	return removed
}

// canonical is the key net/textproto gives a field name.
func canonical(name string) string {
	b := []byte(strings.ToLower(name))
	up := true
	for i, ch := range b {
		if up && ch >= 'a' && ch <= 'z' {
			b[i] = ch - 'a' + 'A'
		}
		up = ch == '-'
	}
	return string(b)
}

// foldCRLF turns bare LF line breaks into CRLF, which AddHeader wants for
// a folded value.
func foldCRLF(s string) string {
	if !strings.Contains(s, "\n") {
		return s
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// text is rspamd's SMTP message for the reply, or def: one line of
// printable ASCII, clipped.
func (v *Verdict) text(def string) string {
	t := strings.Map(func(r rune) rune {
		if r < 32 || r > 126 {
			return ' '
		}
		return r
	}, strings.TrimSpace(v.Messages.SMTP))
	if t = strings.TrimSpace(t); t == "" {
		return def
	}
	if len(t) > 400 {
		t = t[:400]
	}
	return t
}

// score is "<score> / <required>", as X-Spam-Score shows it.
func (v *Verdict) score() string {
	return strconv.FormatFloat(v.Score, 'f', 2, 64) + " / " + strconv.FormatFloat(v.RequiredScore, 'f', 2, 64)
}

// Limits of what the header and the finding list.
const (
	maxSymbols = 30
	maxSummary = 10
)

// symbolList lists the symbols that weigh (score not 0), heaviest first,
// as NAME(score), at most n, joined by sep after a comma.
func (v *Verdict) symbolList(n int, sep string) string {
	syms := make([]Symbol, 0, len(v.Symbols))
	for name, s := range v.Symbols {
		if s.Score != 0 {
			s.Name = name
			syms = append(syms, s)
		}
	}
	sort.Slice(syms, func(i, j int) bool {
		if syms[i].Score != syms[j].Score {
			return syms[i].Score > syms[j].Score
		}
		return syms[i].Name < syms[j].Name
	})
	var b strings.Builder
	for i, s := range syms {
		if i == n {
			fmt.Fprintf(&b, ",%s(%d more)", sep, len(syms)-n)
			break
		}
		if i > 0 {
			b.WriteString("," + sep)
		}
		if !validSymbol(s.Name) {
			s.Name = "?"
		}
		fmt.Fprintf(&b, "%s(%.2f)", s.Name, s.Score)
	}
	return b.String()
}

// validSymbol: rspamd's symbol names are letters, digits and _; anything
// else is not written into a header.
func validSymbol(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == ',' || c == '(' || c == ')' {
			return false
		}
	}
	return s != ""
}

// summary is the finding's message: score, action and the heaviest
// symbols.
func (v *Verdict) summary(n int) string {
	s := "score " + v.score() + ", action " + v.Action
	if syms := v.symbolList(n, " "); syms != "" {
		s += ": " + syms
	}
	return s
}

// rewriteSubject replaces the message's Subject with the one rspamd
// wrote (its rewrite subject action): the old fields are left out of the
// stored message and the new one is added at the top of the header. An
// empty or unusable subject leaves the message as it was (X-Spam-Flag
// still marks it).
func rewriteSubject(m *plugins.Message, subject string) {
	subject = strings.TrimSpace(subject)
	if subject == "" || strings.ContainsAny(subject, "\r\n") {
		return
	}
	m.RemoveHeaders(func(name, _ string) bool { return strings.EqualFold(name, "Subject") })
	m.AddHeader("Subject", subject)
}
