package authresults_test

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
	_ "loopmx/plugins/auth_results"
	_ "loopmx/plugins/dkim"
	_ "loopmx/plugins/dmarc"
	_ "loopmx/plugins/fcrdns"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/results"
	_ "loopmx/plugins/spf"
)

var edKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32))

// start serves the whole authentication chain against a DNS server that
// knows the client 127.0.0.1 as mail.example.org, and example.org's SPF,
// DKIM key and DMARC policy.
func start(t *testing.T, ini string) (*servertest.Server, string) {
	t.Helper()
	srv := dnstest.Start(t)
	srv.Add(t,
		`1.0.0.127.in-addr.arpa. 300 IN PTR mail.example.org.`,
		`mail.example.org. 300 IN A 127.0.0.1`,
		`example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"`,
		`ed._domainkey.example.org. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(edKey.Public().(ed25519.PublicKey))+`"`,
	)
	spool := t.TempDir()
	return servertest.Start(t, map[string]string{
		"plugins":          "results\nfcrdns\nspf\ndkim\ndmarc\nauth_results\nqueue/maildir\n",
		"fcrdns.ini":       "skip_private = false\n",
		"spf.ini":          "check_helo = false\nreceived_spf = false\n",
		"auth_results.ini": ini,
		"dns.ini":          dnstest.INI(srv.Addr, time.Second),
		"maildir.ini":      "path = " + spool + "\n",
	}), spool
}

func signed(t *testing.T, msg string) string {
	t.Helper()
	var b strings.Builder
	if err := msgdkim.Sign(&b, strings.NewReader(msg), &msgdkim.SignOptions{Domain: "example.org", Selector: "ed", Signer: edKey}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// stored returns the one message in the maildir, from the field after
// loopmx's Received field on.
func stored(t *testing.T, spool string) string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(spool, "new"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("the maildir holds %d messages (%v), want 1", len(entries), err)
	}
	b, err := os.ReadFile(filepath.Join(spool, "new", entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "Authentication-Results:")
	if i < 0 {
		t.Fatalf("no Authentication-Results field:\n%s", s)
	}
	return s[i:]
}

// TestStoredHeader: the stored message carries one Authentication-Results
// field with every method's result, under the server's name (me); the
// incoming field that claims that name is gone (in any case), and one of
// another server stays. The DKIM signature still verifies: the removal
// does not touch what was signed.
func TestStoredHeader(t *testing.T) {
	ts, spool := start(t, "")
	msg := signed(t, "From: Ada <ada@example.org>\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")
	body := "Authentication-Results: MX.TEST; dkim=pass header.d=bank.example\r\n" +
		"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n" + msg
	want := "Authentication-Results: mx.test;\r\n" +
		"\tiprev=pass policy.iprev=127.0.0.1;\r\n" +
		"\tspf=pass smtp.mailfrom=ada@example.org;\r\n" +
		"\tdkim=pass header.d=example.org header.i=@example.org;\r\n" +
		"\tdmarc=pass header.from=example.org\r\n" +
		"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n" + msg
	deliver(t, ts, spool, "ada@example.org", body, want)
	servertest.Eventually(t, 10*time.Millisecond, "the forged finding", func() bool {
		return ts.Log.Count(`"auth_results":["fail (forged): 1 Authentication-Results field(s) claiming mx.test removed"]`) == 1
	})
}

// TestAuthservID: authserv_id replaces me; a message nothing checked
// says none for each method that ran.
func TestAuthservID(t *testing.T) {
	ts, spool := start(t, "authserv_id = auth.example.com\n")
	body := "Authentication-Results: (comment) auth.example.com 1; dmarc=pass\r\nFrom: a@nowhere.test\r\nSubject: x\r\n\r\nhi\r\n"
	want := "Authentication-Results: auth.example.com;\r\n" +
		"\tiprev=pass policy.iprev=127.0.0.1;\r\n" +
		"\tspf=none smtp.mailfrom=a@nowhere.test;\r\n" +
		"\tdkim=none;\r\n" +
		"\tdmarc=none header.from=nowhere.test\r\n" +
		"From: a@nowhere.test\r\nSubject: x\r\n\r\nhi\r\n"
	deliver(t, ts, spool, "a@nowhere.test", body, want)
}

// deliver sends body from sender, which must be queued, and checks the
// stored message from its Authentication-Results field on.
func deliver(t *testing.T, ts *servertest.Server, spool, sender, body, want string) {
	t.Helper()
	if r := servertest.Deliver(t, ts.Addr, servertest.Plain(sender, "user@example.com"), body); r.Code != 250 {
		t.Fatalf("the message got %s", r)
	}
	if got := stored(t, spool); got != want {
		t.Errorf("the stored message from its Authentication-Results field on:\n%q\nwant\n%q", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	files := func(ini string) map[string]string {
		return map[string]string{"plugins": "auth_results\nqueue/maildir\n", "auth_results.ini": ini}
	}
	servertest.CheckBuild(t, files("authserv_id = a b\n"), `config: auth_results.ini: [main] authserv_id: "a b" is not a valid authserv-id`)
	servertest.CheckBuild(t, files("authserv_id = a;b\n"), "auth_results.ini", "authserv_id")
	servertest.CheckBuild(t, files("id = x\n"), "auth_results.ini", `"id"`)
	servertest.CheckBuild(t, files("authserv_id = mx.example.com\n"))
}
