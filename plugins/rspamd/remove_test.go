package rspamd

import (
	"bytes"
	"slices"
	"testing"

	"loopmx/plugins"
)

// rspamd's remove_headers: index 0 removes every occurrence, n the nth,
// -n the nth from the end; a name the message does not carry is ignored.
func TestRemoveFields(t *testing.T) {
	const msg = "X-Spam: forged one\r\nSubject: s\r\nX-Spam: forged two\r\nX-Other: a\r\nX-Other: b\r\nX-Other: c\r\n\r\nbody\r\n"
	m := plugins.NewMessage([]byte(msg), "ESMTP")
	removed := removeFields(m, map[string]int{"x-spam": 0, "X-Other": -1, "X-Absent": 0})
	if want := []string{"X-Other", "X-Spam", "X-Spam"}; !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	var b bytes.Buffer
	m.WriteTo(&b)
	if want := "Subject: s\r\nX-Other: a\r\nX-Other: b\r\n\r\nbody\r\n"; b.String() != want {
		t.Errorf("stored\n%q\nwant\n%q", b.String(), want)
	}
	m = plugins.NewMessage([]byte(msg), "ESMTP")
	removeFields(m, map[string]int{"X-Other": 2})
	b.Reset()
	m.WriteTo(&b)
	if want := "X-Spam: forged one\r\nSubject: s\r\nX-Spam: forged two\r\nX-Other: a\r\nX-Other: c\r\n\r\nbody\r\n"; b.String() != want {
		t.Errorf("index 2: stored\n%q", b.String())
	}
}

// The rewrite subject action: the message is stored with rspamd's
// Subject, once, and nothing else changes.
func TestRewriteSubject(t *testing.T) {
	m := plugins.NewMessage([]byte("From: a@example.org\r\nSubject: cheap pills\r\n\r\nbody\r\n"), "ESMTP")
	rewriteSubject(m, "*** SPAM *** cheap pills")
	var b bytes.Buffer
	m.WriteTo(&b)
	if want := "Subject: *** SPAM *** cheap pills\r\nFrom: a@example.org\r\n\r\nbody\r\n"; b.String() != want {
		t.Errorf("stored\n%q\nwant\n%q", b.String(), want)
	}
	m = plugins.NewMessage([]byte("Subject: kept\r\n\r\nbody\r\n"), "ESMTP")
	rewriteSubject(m, "bad\r\nInjected: yes")
	b.Reset()
	m.WriteTo(&b)
	if b.String() != "Subject: kept\r\n\r\nbody\r\n" {
		t.Errorf("a subject with a line break was used: %q", b.String())
	}
}
