package plugins_test

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"loopmx/internal/spooltest"
	"loopmx/plugins"
)

// A plugin reads a spooled body and one in memory the same way: the
// header parsed, the body streamed, the same bytes written out.
func TestSpooledAndMemoryMessagesReadAlike(t *testing.T) {
	bigHeader := "X-Long: " + strings.Repeat("h", 40000) + "\r\n"
	for name, body := range map[string]string{
		"small":       "Subject: hi\r\nFrom: a@example.org\r\n\r\nbody\r\n",
		"big header":  bigHeader + "Subject: hi\r\n\r\n" + strings.Repeat("b", 100000),
		"no body":     "Subject: only a header\r\n",
		"empty":       "",
		"blank first": "\r\nno header at all\r\n",
	} {
		for _, m := range []*plugins.Message{plugins.NewMessage([]byte(body), "ESMTP"), spooltest.Message(t, body)} {
			what := name + map[bool]string{true: " (spooled)", false: ""}[m.Spooled()]
			if m.Size() != int64(len(body)) {
				t.Errorf("%s: Size %d, want %d", what, m.Size(), len(body))
			}
			end := strings.Index(body, "\r\n\r\n") + 4
			switch {
			case strings.HasPrefix(body, "\r\n"):
				end = 2
			case end < 4:
				end = len(body)
			}
			if got := string(m.HeaderBytes()); got != body[:end] {
				t.Errorf("%s: HeaderBytes %d octets, want %d", what, len(got), end)
			}
			if strings.Contains(body, "Subject: hi") && m.Header().Get("Subject") != "hi" {
				t.Errorf("%s: Subject %q", what, m.Header().Get("Subject"))
			}
			all, err := io.ReadAll(m.Reader())
			if err != nil || string(all) != body {
				t.Errorf("%s: Reader gave %d octets, %v", what, len(all), err)
			}
			if err := m.AddHeader("X-Added", "yes"); err != nil {
				t.Fatal(err)
			}
			want := "X-Added: yes\r\n" + body
			var buf bytes.Buffer
			if _, err := m.WriteTo(&buf); err != nil || buf.String() != want {
				t.Errorf("%s: WriteTo a buffer: %d octets, %v", what, buf.Len(), err)
			}
			f, err := os.CreateTemp(t.TempDir(), "out")
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("Prefix: first\r\n")
			if n, err := m.WriteTo(f); err != nil || n != int64(len(want)) {
				t.Errorf("%s: WriteTo a file: %d octets, %v", what, n, err)
			}
			f.Close()
			if got, _ := os.ReadFile(f.Name()); string(got) != "Prefix: first\r\n"+want {
				t.Errorf("%s: the file holds %d octets, want %d", what, len(got), len(want)+15)
			}
		}
	}
}

// AddHeader refuses a field that would break the message or smuggle a
// header of its own.
func TestAddHeaderRefusesBrokenFields(t *testing.T) {
	m := plugins.NewMessage([]byte("a\r\n"), "")
	for _, f := range [][2]string{
		{"", "v"}, {"Bad Name", "v"}, {"Colon:", "v"}, {"X", "line\r\nInjected: yes"},
		{"X", "bare\nlf"}, {"X", "bare\rcr"}, {"X", "ends\r\n"},
	} {
		if err := m.AddHeader(f[0], f[1]); err == nil {
			t.Errorf("AddHeader(%q, %q) accepted", f[0], f[1])
		}
	}
	if err := m.AddHeader("Authentication-Results", "mx.example;\r\n\tspf=pass"); err != nil {
		t.Errorf("a folded value: %v", err)
	}
	if got := string(m.AddedHeaders()); got != "Authentication-Results: mx.example;\r\n\tspf=pass\r\n" {
		t.Errorf("added %q", got)
	}
}

// RemoveHeaders leaves fields out of the stored message (a forged
// Authentication-Results, say), folded lines included, while Reader still
// gives the message as received.
func TestRemoveHeaders(t *testing.T) {
	body := "Received: from a\r\n" +
		"Authentication-Results: mx.example;\r\n\tspf=pass (forged)\r\n" +
		"Subject: hi\r\n" +
		"authentication-results: other.example; dkim=none\r\n" +
		"\r\n" +
		"Authentication-Results: in the body, not a field\r\n"
	want := "X-Added: 1\r\n" +
		"Received: from a\r\n" +
		"Subject: hi\r\n" +
		"authentication-results: other.example; dkim=none\r\n" +
		"\r\n" +
		"Authentication-Results: in the body, not a field\r\n"
	for _, m := range []*plugins.Message{plugins.NewMessage([]byte(body), ""), spooltest.Message(t, body)} {
		m.AddHeader("X-Added", "1")
		n := m.RemoveHeaders(func(name, value string) bool {
			return strings.EqualFold(name, "Authentication-Results") && strings.HasPrefix(value, "mx.example;")
		})
		if n != 1 {
			t.Errorf("spooled %v: removed %d fields, want 1", m.Spooled(), n)
		}
		var buf bytes.Buffer
		m.WriteTo(&buf)
		if buf.String() != want {
			t.Errorf("spooled %v: written\n%q\nwant\n%q", m.Spooled(), buf.String(), want)
		}
		f, err := os.CreateTemp(t.TempDir(), "out")
		if err != nil {
			t.Fatal(err)
		}
		m.WriteTo(f)
		f.Close()
		if got, _ := os.ReadFile(f.Name()); string(got) != want {
			t.Errorf("spooled %v: the file holds\n%q", m.Spooled(), got)
		}
		if got, _ := io.ReadAll(m.Reader()); string(got) != body {
			t.Errorf("spooled %v: Reader no longer gives the message as received", m.Spooled())
		}
	}
}
