package dmarc_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/dkim"
	_ "loopmx/plugins/dmarc"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/results"
	_ "loopmx/plugins/spf"
)

var edKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))

// zone: example.org (p=reject) lets 127.0.0.1 send for bounce.example.org
// only, and signs with selector ed; q.test asks for quarantine, sp.test
// for none but reject for its subdomains, strict.test for strict SPF
// alignment, pct.test for reject on no message (pct=0); other.test fails
// SPF for 127.0.0.1.
func zone(t *testing.T) *dnstest.Server {
	t.Helper()
	srv := dnstest.Start(t)
	srv.Add(t,
		`bounce.example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`example.org. 300 IN TXT "v=spf1 -all"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"`,
		`ed._domainkey.example.org. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(edKey.Public().(ed25519.PublicKey))+`"`,
		`other.test. 300 IN TXT "v=spf1 -all"`,
		`_dmarc.q.test. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.sp.test. 300 IN TXT "v=DMARC1; p=none; sp=reject"`,
		`_dmarc.strict.test. 300 IN TXT "v=DMARC1; p=reject; aspf=s"`,
		`bounce.strict.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.pct.test. 300 IN TXT "v=DMARC1; p=reject; pct=0"`,
	)
	return srv
}

type server struct {
	*servertest.Server
	spool string
}

func start(t *testing.T, srv *dnstest.Server, ini string) server {
	t.Helper()
	spool := t.TempDir()
	return server{servertest.Start(t, map[string]string{
		"plugins":     "results\nspf\ndkim\ndmarc\nqueue/maildir\n",
		"spf.ini":     "check_helo = false\n",
		"dmarc.ini":   ini,
		"dns.ini":     dnstest.INI(srv.Addr, time.Second),
		"maildir.ini": "path = " + spool + "\n",
	}), spool}
}

// message is a message from author with subject, signed for example.org
// when sign is set.
func message(t *testing.T, author, subject string, sign bool) string {
	t.Helper()
	msg := "From: " + author + "\r\nTo: user@example.com\r\nSubject: " + subject + "\r\n\r\nHello.\r\n"
	if !sign {
		return msg
	}
	var b strings.Builder
	if err := msgdkim.Sign(&b, strings.NewReader(msg), &msgdkim.SignOptions{Domain: "example.org", Selector: "ed", Signer: edKey}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// send delivers the message from the envelope sender and returns the
// reply, and the stored message when it was stored ("" when not).
func (s server) send(t *testing.T, sender, body, subject string) (servertest.Reply, string) {
	t.Helper()
	r := servertest.Deliver(t, s.Addr, servertest.Plain(sender, "user@example.com"), body)
	entries, _ := os.ReadDir(filepath.Join(s.spool, "new"))
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.spool, "new", e.Name()))
		if err == nil && bytes.Contains(b, []byte("Subject: "+subject+"\r\n")) {
			return r, string(b)
		}
	}
	return r, ""
}

// TestAlignment: DMARC passes by SPF alignment alone (relaxed: the
// envelope sender's domain is a subdomain of the From domain) and by DKIM
// alignment alone; it fails when neither aligns, and strict SPF alignment
// wants the same name.
func TestAlignment(t *testing.T) {
	srv := zone(t)
	s := start(t, srv, "reject = enforce\n")
	for _, tc := range []struct {
		name, sender, author string
		sign                 bool
		reply, finding       string
	}{
		{"spf only", "a@bounce.example.org", "ada@example.org", false, "250 ", `"dkim":["skip (none): no signature"],"dmarc":["pass: example.org"]`},
		{"dkim only", "a@other.test", "ada@example.org", true, "250 ", `"dkim":["pass: example.org"],"dmarc":["pass: example.org"]`},
		{"neither", "a@other.test", "ada@example.org", false, "550 5.7.1 Message rejected by the DMARC policy of example.org", `"dmarc":["fail: example.org (p=reject)"]`},
		{"strict spf", "a@bounce.strict.test", "ada@strict.test", false, "550 5.7.1 Message rejected by the DMARC policy of strict.test", `"dmarc":["fail: strict.test (p=reject)"]`},
		{"no policy", "a@other.test", "ada@nopolicy.test", false, "250 ", `"dmarc":["skip (none): nopolicy.test publishes no policy"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := s.send(t, tc.sender, message(t, tc.author, tc.name, tc.sign), tc.name)
			if !strings.HasPrefix(r.String(), tc.reply) {
				t.Errorf("reply %q, want %q", r, tc.reply)
			}
			servertest.Eventually(t, 10*time.Millisecond, "the results line "+tc.finding, func() bool {
				return s.Log.Count(`"plugin":"results"`, tc.finding) == 1
			})
		})
	}
}

// TestPolicies: p=reject is refused only with reject = enforce, and
// otherwise quarantined like p=quarantine: the stored message carries
// X-DMARC-Quarantine (a forged one is dropped); sp= is the policy of a
// subdomain; pct=0 turns reject into quarantine.
func TestPolicies(t *testing.T) {
	srv := zone(t)
	for _, tc := range []struct {
		name, ini, author, reply, header string
	}{
		{"reject recorded", "", "ada@example.org", "250 ", "X-DMARC-Quarantine: example.org (p=reject)\r\n"},
		{"reject enforced", "reject = enforce\n", "ada@example.org", "550 5.7.1 Message rejected by the DMARC policy of example.org", ""},
		{"quarantine", "reject = enforce\n", "ada@q.test", "250 ", "X-DMARC-Quarantine: q.test (p=quarantine)\r\n"},
		{"sp=reject", "reject = enforce\n", "ada@mail.sp.test", "550 5.7.1 Message rejected by the DMARC policy of mail.sp.test", ""},
		{"p=none", "reject = enforce\n", "ada@sp.test", "250 ", ""},
		{"pct=0", "reject = enforce\n", "ada@pct.test", "250 ", "X-DMARC-Quarantine: pct.test (p=quarantine)\r\n"},
		{"header renamed", "quarantine_header = X-Junk\n", "ada@q.test", "250 ", "X-Junk: q.test (p=quarantine)\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, srv, tc.ini)
			forged := "X-DMARC-Quarantine"
			if name, _, ok := strings.Cut(tc.header, ":"); ok {
				forged = name
			}
			body := forged + ": forged\r\n" + message(t, tc.author, tc.name, false)
			r, stored := s.send(t, "a@other.test", body, tc.name)
			if !strings.HasPrefix(r.String(), tc.reply) {
				t.Fatalf("reply %q, want %q", r, tc.reply)
			}
			if tc.reply != "250 " {
				return
			}
			if strings.Contains(stored, "forged") {
				t.Errorf("the forged quarantine field was stored:\n%s", stored)
			}
			if tc.header == "" && strings.Contains(stored, "X-DMARC-Quarantine") {
				t.Errorf("a quarantine field was added:\n%s", stored)
			}
			if tc.header != "" && !strings.Contains(stored, tc.header) {
				t.Errorf("the stored message lacks %q:\n%s", tc.header, stored)
			}
		})
	}
}

// TestFromDomains: a message without a From field, or with two, has no
// author domain to check (RFC 7489 6.6.1): permerror, refused only with
// bad_from = reject. A From field naming authors of two domains is
// checked for each; the strictest failing policy applies.
func TestFromDomains(t *testing.T) {
	srv := zone(t)
	s := start(t, srv, "reject = enforce\n")
	const bad = "To: user@example.com\r\nSubject: %s\r\n\r\nHello.\r\n"
	r, _ := s.send(t, "a@other.test", strings.Replace(bad, "%s", "no from", 1), "no from")
	if r.Code != 250 {
		t.Errorf("no From field: %s, want 250 (bad_from = record)", r)
	}
	servertest.Eventually(t, 10*time.Millisecond, "the permerror finding", func() bool {
		return s.Log.Count(`"dmarc":["err (permerror): no From field"]`) == 1
	})
	r, _ = s.send(t, "a@other.test", message(t, "ada@q.test, bob@example.org", "two", false), "two")
	if want := "550 5.7.1 Message rejected by the DMARC policy of example.org"; r.String() != want {
		t.Errorf("From q.test and example.org: %s, want %s", r, want)
	}

	s = start(t, srv, "bad_from = reject\n")
	for _, body := range []string{
		strings.Replace(bad, "%s", "none", 1),
		"From: a@q.test\r\n" + message(t, "b@q.test", "twice", false),
	} {
		r, _ = s.send(t, "a@other.test", body, "x")
		if want := "550 5.7.1 Message must have one From field naming its author's domain"; r.String() != want {
			t.Errorf("bad From: %s, want %s", r, want)
		}
	}
}

// TestCachedInline: a second message whose policy is cached asks the DNS
// nothing more.
func TestCachedInline(t *testing.T) {
	srv := zone(t)
	s := start(t, srv, "")
	s.send(t, "a@bounce.example.org", message(t, "ada@example.org", "one", false), "one")
	n := srv.Total()
	s.send(t, "a@bounce.example.org", message(t, "ada@example.org", "two", false), "two")
	if got := srv.Total(); got != n {
		t.Errorf("the second message made %d queries: %s", got-n, srv.Counts())
	}
}

func TestConfigErrors(t *testing.T) {
	files := func(ini string) map[string]string {
		return map[string]string{"plugins": "dmarc\nqueue/maildir\n", "dmarc.ini": ini, "dns.ini": dnstest.INI("127.0.0.1", time.Second)}
	}
	for _, tc := range []struct {
		ini  string
		want []string
	}{
		{"reject = yes\n", []string{"dmarc.ini", "reject", `"yes"`}},
		{"quarantine_header = X Bad\n", []string{`config: dmarc.ini: [main] quarantine_header: "X Bad" is not a header field name`}},
		{"temperror = reject\n", []string{"dmarc.ini", "temperror"}},
		{"bad_from = drop\n", []string{"dmarc.ini", "bad_from"}},
		{"pct = 5\n", []string{"dmarc.ini", `"pct"`}},
	} {
		servertest.CheckBuild(t, files(tc.ini), tc.want...)
	}
	servertest.CheckBuild(t, files("reject = enforce\nquarantine_header =\ntemperror = tempfail\nbad_from = reject\nlookup_timeout = 1s\n"))
}
