package dkim_test

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"loopmx/internal/dnsx/dnstest"
	"loopmx/internal/servertest"
	_ "loopmx/plugins/dkim"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/results"
)

const unsigned = "From: Ada <ada@example.org>\r\nTo: user@example.com\r\nSubject: hello\r\n" +
	"Message-ID: <1@example.org>\r\n\r\nHello there.\r\n"

// keys are the test's own signing keys, published by zone.
type keys struct {
	rsa *rsa.PrivateKey
	ed  ed25519.PrivateKey
}

// rsaKey is read from testdata once: generating 2048 bits under -race
// takes seconds.
func newKeys(t *testing.T) keys {
	t.Helper()
	der, err := os.ReadFile(filepath.Join("testdata", "rsa2048.der"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS1PrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	return keys{rsa: k, ed: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))}
}

// zone serves the RFC 8463 keys and the test's own: rsa._domainkey and
// ed._domainkey of example.org; a selector without a record (nokey), and
// one whose lookup fails (broken).
func zone(t *testing.T, k keys) *dnstest.Server {
	t.Helper()
	srv := dnstest.Start(t)
	pub, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p := base64.StdEncoding.EncodeToString(pub)
	srv.Add(t,
		rfc8463Ed25519Record,
		rfc8463RSARecord,
		`rsa._domainkey.example.org. 300 IN TXT "v=DKIM1; k=rsa; p=`+p[:200]+`" "`+p[200:]+`"`,
		`ed._domainkey.example.org. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(k.ed.Public().(ed25519.PublicKey))+`"`,
		`example.org. 300 IN A 192.0.2.1`,
	)
	srv.Fail("broken._domainkey.example.org", dns.RcodeServerFailure)
	return srv
}

// sign signs msg for example.org with selector and signer.
func sign(t *testing.T, msg, selector string, signer crypto.Signer) string {
	t.Helper()
	var b strings.Builder
	err := msgdkim.Sign(&b, strings.NewReader(msg), &msgdkim.SignOptions{
		Domain: "example.org", Selector: selector, Signer: signer,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed, BodyCanonicalization: msgdkim.CanonicalizationRelaxed,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func files(addr, ini string) map[string]string {
	return map[string]string{
		"plugins":  "results\ndkim\nqueue/maildir\n",
		"dkim.ini": ini,
		"dns.ini":  dnstest.INI(addr, time.Second),
	}
}

// deliver sends body and waits for the results line with want in it.
func deliver(t *testing.T, ts *servertest.Server, body, want string) {
	t.Helper()
	before := ts.Log.Count(`"plugin":"results"`, want)
	if r := servertest.Deliver(t, ts.Addr, servertest.Plain("ada@example.org", "user@example.com"), body); r.Code != 250 {
		t.Fatalf("the message got %s, want 250", r)
	}
	deadline := time.Now().Add(servertest.IOTimeout)
	for ts.Log.Count(`"plugin":"results"`, want) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("no results line with %s in the log:\n%s", want, ts.Log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRFC8463Example: the signed example of RFC 8463 appendix A verifies
// as published, under both its Ed25519 and its RSA signature, with the
// keys the example domain publishes served by the test's DNS server; the
// same message with a changed body fails both.
func TestRFC8463Example(t *testing.T) {
	srv := zone(t, newKeys(t))
	ts := servertest.Start(t, files(srv.Addr, ""))
	deliver(t, ts, rfc8463Message, `"tx":{"dkim":["pass: football.example.com","pass: football.example.com"]}`)
	deliver(t, ts, strings.Replace(rfc8463Message, "hungry", "angry", 1),
		`"tx":{"dkim":["fail: football.example.com (body hash did not verify)","fail: football.example.com (body hash did not verify)"]}`)
}

// TestResults: pass and fail for RSA and Ed25519 keys of the test's own,
// none for an unsigned message, permerror for a key nobody published,
// temperror for a key whose lookup fails.
func TestResults(t *testing.T) {
	k := newKeys(t)
	srv := zone(t, k)
	ts := servertest.Start(t, files(srv.Addr, ""))
	for _, tc := range []struct {
		name, body, want string
	}{
		{"rsa pass", sign(t, unsigned, "rsa", k.rsa), `"dkim":["pass: example.org"]`},
		{"ed25519 pass", sign(t, unsigned, "ed", k.ed), `"dkim":["pass: example.org"]`},
		{"rsa fail", strings.Replace(sign(t, unsigned, "rsa", k.rsa), "Subject: hello", "Subject: hullo", 1),
			`"dkim":["fail: example.org (signature did not verify`},
		{"ed25519 fail", strings.Replace(sign(t, unsigned, "ed", k.ed), "Hello there.", "Hello here.", 1),
			`"dkim":["fail: example.org (body hash did not verify)"]`},
		{"none", unsigned, `"dkim":["skip (none): no signature"]`},
		{"no key", sign(t, unsigned, "nokey", k.ed), `"dkim":["err (permerror): example.org (no key for signature`},
		{"key lookup fails", sign(t, unsigned, "broken", k.ed), `"dkim":["err (temperror): example.org (key unavailable`},
	} {
		t.Run(tc.name, func(t *testing.T) { deliver(t, ts, tc.body, tc.want) })
	}
}

// TestMaxSignatures: only the first max_signatures signatures are
// checked, and the results line says that the rest were not.
func TestMaxSignatures(t *testing.T) {
	k := newKeys(t)
	srv := zone(t, k)
	ts := servertest.Start(t, files(srv.Addr, "max_signatures = 2\n"))
	body := sign(t, sign(t, sign(t, unsigned, "nokey", k.ed), "ed", k.ed), "rsa", k.rsa)
	deliver(t, ts, body, `"dkim":["pass: example.org","pass: example.org","skip (max_signatures): signatures after the first 2 not checked"]`)
	if n := srv.Count("nokey._domainkey.example.org", dns.TypeTXT); n != 0 {
		t.Errorf("the third signature's key was asked for %d times", n)
	}
}

// TestSpooledBody: a body past spool_after, on disk, is verified by
// streaming it.
func TestSpooledBody(t *testing.T) {
	k := newKeys(t)
	srv := zone(t, k)
	f := files(srv.Addr, "")
	f["smtp.ini"] = servertest.SMTPINI + "spool_after = 4k\n"
	ts := servertest.Start(t, f)
	big := unsigned + strings.Repeat("All work and no play makes Jack a dull boy.\r\n", 2000)
	deliver(t, ts, sign(t, big, "ed", k.ed), `"dkim":["pass: example.org"]`)
	deliver(t, ts, strings.Replace(sign(t, big, "ed", k.ed), "no play", "no pay", 1), `"dkim":["fail: example.org (body hash did not verify)"]`)
}

// TestTempfail: temperror = tempfail defers a message whose key lookup
// failed; the default lets it through (above).
func TestTempfail(t *testing.T) {
	k := newKeys(t)
	srv := zone(t, k)
	ts := servertest.Start(t, files(srv.Addr, "temperror = tempfail\n"))
	r := servertest.Deliver(t, ts.Addr, servertest.Plain("ada@example.org", "user@example.com"), sign(t, unsigned, "broken", k.ed))
	if got, want := r.String(), "451 4.7.5 DKIM key lookup failed, try again later"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		ini  string
		want []string
	}{
		{"max_signatures = 0\n", []string{`config: dkim.ini: [main] max_signatures: "0" must be at least 1`}},
		{"temperror = reject\n", []string{"dkim.ini", "temperror", `"reject"`}},
		{"lookup_timeout = 40s\n", []string{"dkim.ini", "lookup_timeout", `"40s"`}},
		{"max_sigs = 3\n", []string{"dkim.ini", `"max_sigs"`}},
	} {
		servertest.CheckBuild(t, files("127.0.0.1", tc.ini), tc.want...)
	}
	servertest.CheckBuild(t, files("127.0.0.1", "max_signatures = 3\nlookup_timeout = 2s\ntemperror = tempfail\n"))
}
