package milter

import (
	"bytes"
	"io"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"loopmx/plugins"
)

// discardKey is the transaction note that names the milter which asked
// for the message to be discarded.
const discardKey = "milter.discard"

// DataPost implements plugins.DataPostHook: each milter gets the header
// fields (those earlier plugins added, then the message's own), the
// body, streamed from memory or the spool file in chunks, and the end of
// the message, whose answer decides; the changes it asks for are
// applied or refused (apply).
func (p *Milter) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	if c.Tx == nil {
		c.Logger().Error().Str("plugin", Name).Msg("data_post hook called without a transaction")
		return plugins.InternalError()
	}
	fields := append(parseFields(m.AddedHeaders()), parseFields(m.HeaderBytes())...)
	bodyAt := int64(len(m.HeaderBytes()))
	return p.run(c, plugins.HookDataPost, func(s *session) (*gomilter.Action, error) {
		if err := s.catchUp(c); err != nil {
			return nil, err
		}
		// The message step ends the milter's transaction, whatever it
		// answers.
		s.inTx = false
		s.cs.Macros(gomilter.CodeEOH, "i", c.Tx.ID)
		for _, f := range fields {
			v := f.value
			if s.cs.ProtocolOption(gomilter.OptHeaderLeadingSpace) {
				v = f.lead + v
			}
			act, err := s.cs.HeaderField(f.name, v)
			if err != nil || act.Code != gomilter.ActContinue {
				return act, err
			}
		}
		act, err := s.cs.HeaderEnd()
		if err != nil || act.Code != gomilter.ActContinue {
			return act, err
		}
		s.cs.Macros(gomilter.CodeBody, "i", c.Tx.ID)
		body := io.NewSectionReader(m.Reader(), min(bodyAt, m.Size()), max(m.Size()-bodyAt, 0))
		mods, act, err := s.cs.BodyReadFrom(body)
		if err != nil {
			return nil, err
		}
		if act.Code == gomilter.ActContinue || act.Code == gomilter.ActAccept {
			p.apply(c, m, s, mods)
		}
		return act, nil
	})
}

// field is one header field as a milter gets it: the name, the value
// without the white space after the colon (lead), folded lines joined by
// LF as Sendmail and Postfix send them.
type field struct {
	name, lead, value string
}

// parseFields splits a header block (CRLF line ends, possibly with the
// blank line that ends it) into fields.
func parseFields(b []byte) []field {
	var out []field
	for len(b) > 0 {
		end := bytes.Index(b, []byte("\r\n"))
		line := b
		if end >= 0 {
			line, b = b[:end], b[end+2:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			break // the blank line: the header ends
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1].value += "\n" + string(line)
			continue
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue // not a field; the message is stored as it came
		}
		v := string(value)
		t := strings.TrimLeft(v, " \t")
		out = append(out, field{name: string(name), lead: v[:len(v)-len(t)], value: t})
	}
	return out
}

// apply carries out the changes a milter asked for at the end of the
// message, as far as loopmx can: fields added at the top (plugins.Message
// only adds), the envelope changed in the transaction, a quarantine
// recorded. Changing or deleting a field, inserting one below the top
// and replacing the body are refused: the message is stored as it was,
// and a warning says so. Deleting a field (a change to an empty value)
// leaves it out of the stored message.
func (p *Milter) apply(c *plugins.Conn, m *plugins.Message, s *session, mods []gomilter.ModifyAction) {
	var refused []string
	for _, mod := range mods {
		switch mod.Code {
		case gomilter.ActAddHeader:
			p.addField(c, m, s, mod.HeaderName, mod.HeaderValue, &refused)
		case gomilter.ActInsertHeader:
			// Index 0 is the top; Sendmail's first field is its own
			// Received, as loopmx's is, so 1 is the top of the rest.
			if mod.HeaderIndex <= 1 {
				p.addField(c, m, s, mod.HeaderName, mod.HeaderValue, &refused)
			} else {
				refused = append(refused, "insert header "+mod.HeaderName+" at index above 1")
			}
		case gomilter.ActChangeHeader:
			if mod.HeaderValue == "" {
				// An empty value deletes the field (the index-th of its
				// name, from 1): left out of the stored message.
				if !deleteField(m, mod.HeaderName, int(mod.HeaderIndex)) {
					refused = append(refused, "delete header "+mod.HeaderName+" (no such field)")
				}
			} else {
				refused = append(refused, "change header "+mod.HeaderName)
			}
		case gomilter.ActReplBody:
			refused = append(refused, "replace body")
		case gomilter.ActChangeFrom:
			c.Tx.From = strings.TrimSuffix(strings.TrimPrefix(mod.From, "<"), ">")
			c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Word: "chgfrom", Message: s.f.name + ": sender changed to <" + c.Tx.From + ">"})
		case gomilter.ActAddRcpt:
			r := strings.TrimSuffix(strings.TrimPrefix(mod.Rcpt, "<"), ">")
			if !hasRcpt(c.Tx.Rcpts, r) {
				c.Tx.Rcpts = append(c.Tx.Rcpts, r)
			}
			c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Word: "addrcpt", Message: s.f.name + ": recipient <" + r + "> added"})
		case gomilter.ActDelRcpt:
			r := strings.TrimSuffix(strings.TrimPrefix(mod.Rcpt, "<"), ">")
			kept := c.Tx.Rcpts[:0:0]
			for _, x := range c.Tx.Rcpts {
				if !strings.EqualFold(x, r) {
					kept = append(kept, x)
				}
			}
			c.Tx.Rcpts = kept
			c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Word: "delrcpt", Message: s.f.name + ": recipient <" + r + "> removed"})
			if len(kept) == 0 {
				// No recipient left: the message goes nowhere, which is
				// what a discard does.
				c.Tx.SetNote(discardKey, s.f.name)
			}
		case gomilter.ActQuarantine:
			c.Tx.SetNote(QuarantineKey, mod.Reason)
			c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Word: "quarantine", Message: s.f.name + ": " + mod.Reason})
			c.Logger().Warn().Str("plugin", Name).Str("milter", s.f.name).Str("tx", c.Tx.ID).Str("reason", mod.Reason).
				Msg("milter asked to quarantine the message; it is stored as usual and the transaction note milter.quarantine holds the reason")
		}
	}
	if len(refused) == 0 {
		return
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Word: "unsupported",
		Message: s.f.name + ": not applied: " + strings.Join(refused, ", ")})
	if ok, held := s.f.unsupportedLog.Allow(time.Now()); ok {
		c.Logger().Warn().Str("plugin", Name).Str("milter", s.f.name).Str("tx", c.Tx.ID).Strs("refused", refused).Int64("not_logged", held).
			Msg("milter asked for changes loopmx cannot make (plugins.Message only adds header fields at the top: no change or delete of a field, no insert below the top, no new body); the message is stored without them")
	}
}

// QuarantineKey is the transaction note that holds the reason a milter
// gave for quarantining the message.
const QuarantineKey = "milter.quarantine"

// addField adds a field a milter asked for; a value folded with bare LF
// gets CRLF.
func (p *Milter) addField(c *plugins.Conn, m *plugins.Message, s *session, name, value string, refused *[]string) {
	v := strings.ReplaceAll(strings.ReplaceAll(value, "\r\n", "\n"), "\n", "\r\n")
	if err := m.AddHeader(name, strings.TrimLeft(v, " ")); err != nil {
		*refused = append(*refused, "add header "+name+" (not a valid field)")
	}
}

func hasRcpt(list []string, r string) bool {
	for _, x := range list {
		if strings.EqualFold(x, r) {
			return true
		}
	}
	return false
}

// Queue implements plugins.QueueHook for discarded messages: a message
// that a milter asked to discard is acknowledged with 250 and not
// stored, which is what discard means. Every other message goes on to the
// queue plugins after this one, so milter must come before them in the
// plugins file. It runs inline: nothing waits.
func (p *Milter) Queue(c *plugins.Conn, m *plugins.Message) plugins.Result {
	if c.Tx == nil {
		return plugins.NoOpinion()
	}
	name, ok := c.Tx.Note(discardKey).(string)
	if !ok {
		return plugins.NoOpinion()
	}
	c.Logger().Info().Str("plugin", Name).Str("milter", name).Str("tx", c.Tx.ID).Msg("message discarded at the milter's request: acknowledged and not stored")
	return plugins.Queued(c, "discarded")
}

// deleteField leaves the index-th field named name (1 for the first,
// names compared without case) out of the stored message, and reports
// whether there was one.
func deleteField(m *plugins.Message, name string, index int) bool {
	index = max(index, 1)
	seen := 0
	return m.RemoveHeaders(func(n, _ string) bool {
		if !strings.EqualFold(n, name) {
			return false
		}
		seen++
		return seen == index
	}) > 0
}
