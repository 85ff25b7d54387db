package nexthop

import (
	"strings"
	"testing"
)

func TestXtext(t *testing.T) {
	for in, want := range map[string]string{
		"mail.example.org": "mail.example.org",
		"a b+c=d":          "a+20b+2Bc+3Dd",
		"gr\xc3\xbc":       "gr+C3+BC",
		"[UNAVAILABLE]":    "[UNAVAILABLE]",
	} {
		if got := xtext(in); got != want {
			t.Errorf("xtext(%q) = %q, want %q", in, got, want)
		}
	}
}

// Only the attributes the next hop offered are sent, and a long HELO
// name moves the rest to a second line within 512 octets.
func TestClientLines(t *testing.T) {
	cl := &Client{Addr: "IPV6:2001:db8::1", Port: "4000", Name: unavailable, Helo: "client.example", Proto: "ESMTP"}
	got := clientLines("XFORWARD", "NAME ADDR PROTO HELO SOURCE", cl)
	want := "XFORWARD ADDR=IPV6:2001:db8::1 NAME=[UNAVAILABLE] HELO=client.example PROTO=ESMTP SOURCE=REMOTE"
	if len(got) != 1 || got[0] != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := clientLines("XCLIENT", "", cl); len(got) != 0 {
		t.Errorf("nothing offered, got %q", got)
	}
	cl.Helo = strings.Repeat("h", 255)
	cl.Name = strings.Repeat("n", 255)
	got = clientLines("XCLIENT", "NAME ADDR HELO PROTO", cl)
	if len(got) != 2 {
		t.Fatalf("want two lines, got %q", got)
	}
	for _, l := range got {
		if len(l)+2 > 512 || !strings.HasPrefix(l, "XCLIENT ") {
			t.Errorf("line of %d octets: %.40q", len(l), l)
		}
	}
}
