package ticketkeys

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func policy() Policy { return Policy{Rotate: 12 * time.Hour, Keep: 24 * time.Hour} }

// The life of generated keys: a key encrypts for Rotate, its successor is
// known a whole rotation before it takes over, and a key goes Keep after
// it stopped encrypting.
func TestKeeperRotation(t *testing.T) {
	k, err := NewKeeper(policy(), t0)
	if err != nil {
		t.Fatal(err)
	}
	first := k.Set()
	if len(first) != 2 || !first[0].From.Equal(t0) || !first[1].From.Equal(t0.Add(12*time.Hour)) {
		t.Fatalf("at start: %v, want a key in force and the next one for +12h", froms(first))
	}
	if got := first.ForTLS(t0); got[0] != first[0].Secret || got[1] != first[1].Secret {
		t.Error("at start the first key does not encrypt")
	}
	if next := k.Next(t0); !next.Equal(t0.Add(12 * time.Hour)) {
		t.Errorf("next event %v, want the takeover at +12h", next)
	}
	// At the takeover the second key encrypts and a third is made.
	at := t0.Add(12 * time.Hour)
	if !k.Advance(at) {
		t.Fatal("nothing changed at the takeover")
	}
	s := k.Set()
	if got := s.ForTLS(at); got[0] != first[1].Secret || len(got) != 3 {
		t.Errorf("at +12h: %d keys, encrypting with the first one: %v", len(got), got[0] == first[0].Secret)
	}
	// Every rotation until +36h keeps the first key for decryption; at
	// +36h (24h after it stopped encrypting) it goes.
	for at.Before(t0.Add(36 * time.Hour)) {
		at = k.Next(at)
		k.Advance(at)
		if at.Before(t0.Add(36*time.Hour)) && k.Set()[0].Secret != first[0].Secret {
			t.Fatalf("the first key went at %v, before +36h", at.Sub(t0))
		}
	}
	if !at.Equal(t0.Add(36 * time.Hour)) {
		t.Fatalf("events stepped past +36h to %v", at.Sub(t0))
	}
	for _, key := range k.Set() {
		if key.Secret == first[0].Secret {
			t.Errorf("the first key is still there at +36h: %v", froms(k.Set()))
		}
	}
	// In force: the key of +36h; kept: +24h (stopped now) and +12h
	// (stopped at +24h); next: +48h.
	if got := froms(k.Set()); got != "12h0m0s 24h0m0s 36h0m0s 48h0m0s" {
		t.Errorf("keys at +36h start at %s", got)
	}
}

// A process suspended past a takeover makes the late key with a lead, so
// every worker has read it before it encrypts.
func TestKeeperLate(t *testing.T) {
	k, _ := NewKeeper(policy(), t0)
	late := t0.Add(100 * time.Hour)
	k.Advance(late)
	s := k.Set()
	if got := s[len(s)-1].From; !got.Equal(late.Add(lead)) {
		t.Errorf("late key takes over at %v, want %v", got.Sub(late), lead)
	}
	if s.current(late) < 0 {
		t.Error("no key in force after a long suspension")
	}
}

// After a USR2 the new image keeps the generated keys.
func TestKeeperAdopt(t *testing.T) {
	old, _ := NewKeeper(policy(), t0)
	k, _ := NewKeeper(policy(), t0.Add(time.Minute))
	k.Adopt(old.Set(), t0.Add(time.Minute))
	if got := k.Set().ForTLS(t0.Add(time.Minute)); got[0] != old.Set()[0].Secret {
		t.Error("the adopted key does not encrypt")
	}
}

func writeKeys(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ticket.keys")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	keyA = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJASM="
	keyB = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
)

func TestReadFile(t *testing.T) {
	p := writeKeys(t, "# rotated by cron\n"+keyB+"\n\n"+keyA+"\n")
	k, err := NewKeeper(Policy{File: p, Rotate: time.Hour}, t0)
	if err != nil {
		t.Fatal(err)
	}
	got := k.Set().ForTLS(t0)
	if len(got) != 2 || got[0][0] != 0 || got[1][0] != 0xab {
		t.Errorf("file keys in tls order: %x", got)
	}
	if !k.Next(t0).IsZero() || k.Advance(t0.Add(100*time.Hour)) {
		t.Error("keys from a file rotate by themselves")
	}
	for body, want := range map[string]string{
		"":                      "holds no key",
		"bm90IGEga2V5\n":        "line 1: not 32 bytes in base64",
		keyA + "\n" + keyA:      "line 2: the same key twice",
		strings.Repeat("x", 44): "line 1: not 32 bytes",
	} {
		_, err := ReadFile(writeKeys(t, body))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "tls.ini: ticket_key_file") {
			t.Errorf("ReadFile(%q) = %v, want an error with %q", body, err, want)
		}
	}
	// A file that breaks on reload leaves the keys in use.
	if err := os.WriteFile(p, []byte("junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := k.SetPolicy(Policy{File: p, Rotate: time.Hour}, t0); err == nil {
		t.Error("a broken key file was accepted on reload")
	}
	if len(k.Set()) != 2 {
		t.Error("a failed reload changed the keys")
	}
}

// The shared set reads back as written, and a torn or foreign content is
// refused rather than half used.
func TestShare(t *testing.T) {
	sh, err := NewShare()
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	k, _ := NewKeeper(policy(), t0)
	if err := sh.Write(k.Set()); err != nil {
		t.Fatal(err)
	}
	got, err := sh.Read()
	if err != nil || !Equal(got.ForTLS(t0), k.Set().ForTLS(t0)) || !got[1].From.Equal(t0.Add(12*time.Hour)) {
		t.Fatalf("read back %v %v", froms(got), err)
	}
	// A shorter set over a longer one: the tail of the old one is ignored.
	f, _ := NewKeeper(Policy{File: writeKeys(t, keyA+"\n"), Rotate: time.Hour}, t0)
	if err := sh.Write(f.Set()); err != nil {
		t.Fatal(err)
	}
	if got, err := sh.Read(); err != nil || len(got) != 1 || !got[0].From.IsZero() {
		t.Fatalf("after a shorter write: %v %v", froms(got), err)
	}
	full := make([]byte, 4096)
	n, _ := sh.f.ReadAt(full, 0)
	torn := []byte(string(full[:n]))
	torn[len(torn)-3] ^= 1
	if _, err := decodeShare(torn); err == nil {
		t.Error("a changed byte passed the checksum")
	}
}

func froms(s Set) string {
	var out []string
	for _, k := range s {
		out = append(out, k.From.Sub(t0).String())
	}
	return strings.Join(out, " ")
}
