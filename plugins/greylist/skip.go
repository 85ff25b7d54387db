package greylist

import (
	"errors"
	"fmt"
	"strings"

	"loopmx/plugins"
)

// skipRule is one entry of skip: a note that vouches for the client.
// "name" matches a note that is set to anything but false or an empty
// string; "name=word" matches a note whose value, printed, is word or
// starts with word and a space ("listed by list.dnswl.org" matches
// dnswl=listed), in any case.
type skipRule struct {
	text, note, word string
}

// parseSkip reads the comma-separated rules of skip; "none" or an empty
// value is no rule.
func parseSkip(s string) ([]skipRule, error) {
	if strings.EqualFold(strings.TrimSpace(s), "none") {
		return nil, nil
	}
	var rules []skipRule
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		note, word, _ := strings.Cut(part, "=")
		note, word = strings.TrimSpace(note), strings.ToLower(strings.TrimSpace(word))
		if note == "" || strings.ContainsAny(note, " \t") || strings.Contains(part, "=") && word == "" {
			return nil, errors.New("is not a list of note or note=word")
		}
		rules = append(rules, skipRule{text: part, note: note, word: word})
	}
	return rules, nil
}

// vouched returns the first rule whose note the transaction or the
// connection holds, or "" when none does.
func (g *Greylist) vouched(c *plugins.Conn) string {
	for _, r := range g.skip {
		v := c.Tx.Note(r.note)
		if v == nil {
			v = c.Note(r.note)
		}
		if r.matches(v) {
			return r.text
		}
	}
	return ""
}

func (r skipRule) matches(v any) bool {
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		if r.word == "" {
			return v
		}
	case string:
		if r.word == "" {
			return v != ""
		}
	}
	if r.word == "" {
		return true
	}
	s := strings.ToLower(fmt.Sprint(v))
	return s == r.word || strings.HasPrefix(s, r.word+" ")
}
