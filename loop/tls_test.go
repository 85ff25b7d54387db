package loop_test

// STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over real TCP with Go's
// crypto/tls as the client: the hand-off from the event loop to a TLS
// goroutine, the reset after the handshake, input pipelined behind
// STARTTLS, failed handshakes, the choice of certificate by SNI and a
// certificate reload while sessions are open. The certificates are made
// by the tests; no key is committed.

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/loop"
	"loopmx/plugins"
	"loopmx/plugins/queue/maildir"
)

// testCA is a throwaway certificate authority for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{CommonName: "loopmx test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func randomSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// issue signs a fresh certificate for names (the first one is also the
// common name): a server certificate, or a client one when client is set.
func (ca *testCA) issue(t *testing.T, client bool, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	usage := x509.ExtKeyUsageServerAuth
	if client {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// pemPair encodes cert and its key as PEM.
func pemPair(cert tls.Certificate) (crt, key []byte, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	crt = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	key = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return crt, key, nil
}

// writePair writes cert and its key to dir/name.crt and dir/name.key,
// replacing what was there.
func writePair(t *testing.T, dir, name string, cert tls.Certificate) {
	t.Helper()
	if err := writePairFiles(dir, name, cert); err != nil {
		t.Fatal(err)
	}
}

func writePairFiles(dir, name string, cert tls.Certificate) error {
	crt, key, err := pemPair(cert)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), crt, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".key"), key, 0o600)
}

// loadTLS writes tls.ini into dir and loads it the way main.go does.
func loadTLS(dir, ini string) (*loop.TLSConfig, error) {
	if err := os.WriteFile(filepath.Join(dir, "tls.ini"), []byte(ini), 0o644); err != nil {
		return nil, err
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		return nil, err
	}
	return loop.LoadTLS(cfg)
}

// tlsEnv is a config directory with one server certificate per name,
// listed in tls.ini in that order (cert and key take comma-separated
// lists), and the loaded TLS configuration.
type tlsEnv struct {
	ca    *testCA
	dir   string
	conf  *loop.TLSConfig
	certs map[string]tls.Certificate
}

// newTLSEnv issues a certificate for each name and loads a tls.ini that
// lists them, followed by extraINI.
func newTLSEnv(t *testing.T, extraINI string, names ...string) *tlsEnv {
	t.Helper()
	e := &tlsEnv{ca: newTestCA(t), dir: t.TempDir(), certs: map[string]tls.Certificate{}}
	var crts, keys []string
	for _, n := range names {
		e.certs[n] = e.ca.issue(t, false, n)
		writePair(t, e.dir, n, e.certs[n])
		crts, keys = append(crts, n+".crt"), append(keys, n+".key")
	}
	ini := "cert = " + strings.Join(crts, ", ") + "\nkey = " + strings.Join(keys, ", ") + "\n" + extraINI
	conf, err := loadTLS(e.dir, ini)
	if err != nil {
		t.Fatalf("LoadTLS: %v", err)
	}
	if conf == nil {
		t.Fatal("LoadTLS found no certificate")
	}
	conf.HandshakeTimeout = min(conf.HandshakeTimeout, ioTimeout/2)
	e.conf = conf
	return e
}

// with is the option edit that turns TLS on.
func (e *tlsEnv) with(o *loop.Options) { o.TLS = e.conf }

// client is a crypto/tls client configuration that trusts the test CA and
// asks for serverName.
func (e *tlsEnv) client(serverName string) *tls.Config {
	return &tls.Config{RootCAs: e.ca.pool, ServerName: serverName}
}

// tlsClient is the raw test client once TLS is up: the same reply checks
// as client, over a crypto/tls connection.
type tlsClient struct {
	t     *testing.T
	conn  *tls.Conn
	r     *bufio.Reader
	ehlo  bool
	reads []reply
}

func newTLSClient(t *testing.T, conn *tls.Conn) *tlsClient {
	return &tlsClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *tlsClient) write(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("write %q over TLS: %v", abbrev(s), err)
	}
}

// next reads one reply and checks its enhanced code after EHLO.
func (c *tlsClient) next() reply {
	c.t.Helper()
	r, err := readReply(c.r)
	if err != nil {
		c.t.Fatalf("reading a reply over TLS: %v (replies so far: %v)", err, c.reads)
	}
	c.reads = append(c.reads, r)
	if r.isEHLO() || r.isHELO() {
		c.ehlo = r.isEHLO()
	} else if c.ehlo {
		if p := enhancedProblem(r); p != "" {
			c.t.Errorf("reply after EHLO: %s", p)
		}
	}
	return r
}

func (c *tlsClient) expect(prefix string) reply {
	c.t.Helper()
	r := c.next()
	if !strings.HasPrefix(r.Last(), prefix) {
		c.t.Fatalf("got reply %q, want %q...", r, prefix)
	}
	return r
}

func (c *tlsClient) cmd(line, prefix string) reply {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.expect(prefix)
}

// hello sends EHLO and requires the capability list as the next reply.
func (c *tlsClient) hello() reply {
	c.t.Helper()
	c.write("EHLO client.test\r\n")
	r := c.next()
	if !r.isEHLO() {
		c.t.Fatalf("reply %q, want the EHLO capability list", r)
	}
	return r
}

// deliver runs one transaction to rcpt and returns the reply to the end
// of data, which must be a 250.
func (c *tlsClient) deliver(rcpt, body string) reply {
	c.t.Helper()
	c.cmd("MAIL FROM:<sender@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<"+rcpt+">", "250 2.1.5")
	c.cmd("DATA", "354 ")
	return c.cmd(body+".", "250 2.0.0")
}

// expectLine reads a one-line reply equal to line.
func (c *tlsClient) expectLine(line string) {
	c.t.Helper()
	if r := c.next(); len(r.Lines) != 1 || r.Lines[0] != line {
		c.t.Fatalf("got reply %q, want %q", r, line)
	}
}

// expectEOF requires the server to end the TLS session with nothing more
// to say.
func (c *tlsClient) expectEOF() {
	c.t.Helper()
	r, err := readReply(c.r)
	if err == nil {
		c.t.Fatalf("got reply %q, want the connection closed", r)
	}
	if !errors.Is(err, io.EOF) && !isReset(err) {
		c.t.Fatalf("want EOF, got %v", err)
	}
	c.conn.Close()
}

// quit ends the session politely.
func (c *tlsClient) quit() {
	c.t.Helper()
	c.cmd("QUIT", "221 2.0.0")
	c.conn.Close()
}

// offers tells whether an EHLO reply lists keyword.
func offers(r reply, keyword string) bool {
	return slices.ContainsFunc(r.Lines, func(l string) bool { return len(l) > 4 && l[4:] == keyword })
}

// startTLS sends STARTTLS on a client that has said EHLO, requires the
// 220 and runs the handshake with conf.
func startTLS(c *client, conf *tls.Config) (*tlsClient, error) {
	c.t.Helper()
	c.cmd("STARTTLS", "220 2.0.0 Ready to start TLS")
	if n := c.r.Buffered(); n > 0 {
		c.t.Fatalf("the server sent %d more bytes in plaintext after 220 Ready", n)
	}
	tc := tls.Client(c.conn, conf)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return newTLSClient(c.t, tc), nil
}

func mustStartTLS(c *client, conf *tls.Config) *tlsClient {
	c.t.Helper()
	s, err := startTLS(c, conf)
	if err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	return s
}

// tlsSeen records the TLS state plugins were shown.
type tlsSeen struct {
	mu     sync.Mutex
	atMail []*tls.ConnectionState
}

// spy is a MAIL hook that records c.TLS.
func (s *tlsSeen) spy() *hooks {
	return &hooks{name: "test/tls-spy", mail: func(c *plugins.Conn, _ string) plugins.Result {
		s.mu.Lock()
		s.atMail = append(s.atMail, c.TLS)
		s.mu.Unlock()
		return plugins.NoOpinion()
	}}
}

func (s *tlsSeen) mails() []*tls.ConnectionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.atMail)
}

// openMaildir is the real maildir queue plugin on a fresh directory.
func openMaildir(t *testing.T) (*maildir.Maildir, string) {
	t.Helper()
	dir := t.TempDir()
	md, err := maildir.Open(dir, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	return md, dir
}

// maildirFiles returns the contents of the files in dir/new.
func maildirFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// receivedHeader returns the Received field of a stored message, unfolded.
func receivedHeader(t *testing.T, msg string) string {
	t.Helper()
	i := strings.Index(msg, "Received: ")
	if i < 0 {
		t.Fatalf("no Received header in\n%s", msg)
	}
	field := msg[i:]
	end := strings.Index(field, ";")
	if end < 0 {
		t.Fatalf("unterminated Received header in\n%s", msg)
	}
	return strings.Join(strings.Fields(field[:end]), " ")
}

const tlsBody = "Subject: over TLS\r\n\r\nhello\r\n"

func TestStartTLSDeliversOverTLS(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	var seen tlsSeen
	md, spool := openMaildir(t)
	ts := startServer(t, env.with, 2, 16, hostList(), seen.spy(), md)

	c := connect(t, ts.addr)
	if r := c.hello(); !offers(r, "STARTTLS") {
		t.Fatalf("EHLO on a plain connection does not offer STARTTLS: %v", r)
	}
	// A transaction begun in plaintext is forgotten by the handshake.
	c.cmd("MAIL FROM:<plain@client.test>", "250 2.1.0")
	s := mustStartTLS(c, env.client("mx.test"))
	state := s.conn.ConnectionState()

	// RFC 3207 4.2: the session starts over; the client greets again.
	s.cmd("MAIL FROM:<early@client.test>", "503 5.5.1 Error: send HELO/EHLO first")
	if r := s.hello(); offers(r, "STARTTLS") {
		t.Errorf("EHLO over TLS still offers STARTTLS: %v", r)
	}
	s.cmd("RCPT TO:<a@example.com>", "503 5.5.1 Error: need MAIL command")
	s.cmd("STARTTLS", "503 5.5.1 Error: TLS already active")
	s.deliver("a@example.com", tlsBody)
	s.quit()

	files := maildirFiles(t, spool)
	if len(files) != 1 {
		t.Fatalf("maildir new/ holds %d messages, want 1", len(files))
	}
	rcv := receivedHeader(t, files[0])
	want := "with ESMTPS (TLSv1.3 with cipher " + tls.CipherSuiteName(state.CipherSuite) + ")"
	if !strings.Contains(rcv, want) {
		t.Errorf("Received header %q lacks %q", rcv, want)
	}
	if !strings.HasSuffix(files[0], "\r\n"+tlsBody) {
		t.Errorf("stored message does not end with the body:\n%s", files[0])
	}

	mails := seen.mails()
	if len(mails) != 2 {
		t.Fatalf("the MAIL hook ran %d times, want 2", len(mails))
	}
	if mails[0] != nil {
		t.Errorf("the plaintext MAIL hook saw TLS state %+v", mails[0])
	}
	got := mails[1]
	switch {
	case got == nil:
		t.Fatal("the MAIL hook over TLS saw c.TLS == nil")
	case got.Version != tls.VersionTLS13 || got.CipherSuite != state.CipherSuite:
		t.Errorf("plugin saw %s %s, the client negotiated %s %s", tls.VersionName(got.Version),
			tls.CipherSuiteName(got.CipherSuite), tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite))
	case !got.HandshakeComplete || got.ServerName != "mx.test":
		t.Errorf("plugin saw handshake complete %v, server name %q", got.HandshakeComplete, got.ServerName)
	}
}

// net/smtp's StartTLS is the client most Go programs use.
func TestStartTLSWithNetSMTP(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	rec := &recorder{block: true}
	ts := startServer(t, env.with, 2, 16, hostList(), rec)
	nc, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(ioTimeout))
	sc, err := smtp.NewClient(nc, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := sc.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}
	if err := sc.StartTLS(env.client("mx.test")); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if ok, _ := sc.Extension("STARTTLS"); ok {
		t.Error("STARTTLS still offered after the handshake")
	}
	if st, ok := sc.TLSConnectionState(); !ok || st.Version != tls.VersionTLS13 {
		t.Errorf("TLS state %v %v", ok, st.Version)
	}
	if err := sc.Mail("sender@client.test"); err != nil {
		t.Fatal(err)
	}
	if err := sc.Rcpt("a@example.com"); err != nil {
		t.Fatal(err)
	}
	w, err := sc.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, netSMTPBody)
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	if err := sc.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	m := rec.only(t)
	if m.Body != netSMTPWire {
		t.Errorf("body %q, want %q", m.Body, netSMTPWire)
	}
	// net/smtp asks for SMTPUTF8 because the server offers it: RFC 6531
	// 3.7.3 names that UTF8SMTPS over TLS.
	if m.Protocol != "UTF8SMTPS" {
		t.Errorf("protocol %q, want UTF8SMTPS", m.Protocol)
	}
}

func TestStartTLSRefusedOutOfTurn(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts := startServer(t, env.with, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.cmd("STARTTLS", "503 5.5.1 Error: send EHLO first")
	c.cmd("HELO client.test", "250 mx.test")
	c.cmd("STARTTLS", "503 5.5.1 Error: send EHLO first")
	c.hello()
	c.cmd("STARTTLS now", "501 5.5.4 Syntax error: no arguments allowed")
	// The refusals left the session in plaintext and usable.
	s := mustStartTLS(c, env.client("mx.test"))
	s.hello()
	s.quit()
}

// Without a certificate there is no STARTTLS: not offered, not accepted.
func TestNoCertificateNoStartTLS(t *testing.T) {
	conf, err := loadTLS(t.TempDir(), "min_version = 1.3\n")
	if err != nil || conf != nil {
		t.Fatalf("LoadTLS without cert = %v, %v; want nil, nil", conf, err)
	}
	ts := startServer(t, func(o *loop.Options) { o.TLS = conf }, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	if r := c.hello(); offers(r, "STARTTLS") {
		t.Fatalf("STARTTLS offered without a certificate: %v", r)
	}
	c.cmd("STARTTLS", "502 5.5.1")
	c.cmd("NOOP", "250 2.0.0")
}

// CVE-2011-0411: commands sent in plaintext right behind STARTTLS, in the
// same packet, could have been injected by a man in the middle. They must
// be thrown away, neither answered nor run.
func TestStartTLSDropsPipelinedInput(t *testing.T) {
	for _, injected := range []string{
		"RSET\r\n",
		"MAIL FROM:<x@y>\r\n",
		"EHLO evil.test\r\nMAIL FROM:<x@y>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nSubject: forged\r\n\r\n.\r\n",
	} {
		t.Run(strings.Fields(injected)[0], func(t *testing.T) {
			env := newTLSEnv(t, "", "mx.test")
			var seen tlsSeen
			rec := &recorder{}
			ts := startServer(t, env.with, 2, 16, hostList(), seen.spy(), rec)
			c := connect(t, ts.addr)
			c.hello()
			c.write("STARTTLS\r\n" + injected)
			c.expectLine("220 2.0.0 Ready to start TLS")
			if n := c.r.Buffered(); n > 0 {
				t.Fatalf("%d bytes in plaintext after 220 Ready", n)
			}
			tc := tls.Client(c.conn, env.client("mx.test"))
			if err := tc.Handshake(); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			s := newTLSClient(t, tc)
			// The first reply over TLS is the one to our EHLO, not a
			// stray 250 for the injected command.
			s.hello()
			// No transaction survived: the injected MAIL never ran.
			s.cmd("RCPT TO:<a@example.com>", "503 5.5.1 Error: need MAIL command")
			s.quit()
			if n := len(seen.mails()); n != 0 {
				t.Errorf("the MAIL hook ran %d times for injected input", n)
			}
			if n := len(rec.messages()); n != 0 {
				t.Errorf("%d injected messages were queued", n)
			}
		})
	}
}

// readAll reads until the server closes the connection and returns what it
// sent; a reset counts as a close.
func readAll(t *testing.T, conn net.Conn) []byte {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(conn)
	if err != nil && !isReset(err) {
		t.Fatalf("want the connection closed, got %v after %q", err, b)
	}
	return b
}

// A handshake that fails closes that connection, and only that one.
func TestFailedHandshakeClosesOnlyThatConnection(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	rec := &recorder{}
	ts := startServer(t, env.with, 2, 16, hostList(), rec)

	// A bystander in the middle of its own TLS session.
	by := connect(t, ts.addr)
	by.hello()
	bystander := mustStartTLS(by, env.client("mx.test"))
	bystander.hello()
	bystander.cmd("MAIL FROM:<sender@client.test>", "250 2.1.0")

	t.Run("garbage instead of a ClientHello", func(t *testing.T) {
		c := connect(t, ts.addr)
		c.hello()
		c.cmd("STARTTLS", "220 2.0.0")
		c.write("EHLO this is not TLS\r\n")
		if out := readAll(t, c.conn); len(out) > 0 && out[0] != 0x15 {
			t.Fatalf("server answered garbage with %q, want a TLS alert or nothing", out)
		}
	})
	t.Run("client refuses the certificate", func(t *testing.T) {
		c := connect(t, ts.addr)
		c.hello()
		conf := env.client("mx.test")
		conf.RootCAs = x509.NewCertPool() // trusts nobody
		_, err := startTLS(c, conf)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("handshake error %v, want an unknown authority", err)
		}
		readAll(t, c.conn)
	})
	t.Run("client below min_version", func(t *testing.T) {
		c := connect(t, ts.addr)
		c.hello()
		conf := env.client("mx.test")
		conf.MinVersion, conf.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		if _, err := startTLS(c, conf); err == nil {
			t.Fatal("a TLS 1.1 client completed a handshake with min_version 1.2")
		}
		readAll(t, c.conn)
	})
	t.Run("client silent after 220 Ready", func(t *testing.T) {
		env := newTLSEnv(t, "handshake_timeout = 1s\n", "mx.test")
		ts := startServer(t, env.with, 2, 16, hostList(), &recorder{})
		c := connect(t, ts.addr)
		c.hello()
		c.cmd("STARTTLS", "220 2.0.0")
		start := time.Now()
		if out := readAll(t, c.conn); len(out) > 0 {
			t.Fatalf("server sent %q to a client that never started TLS", out)
		}
		if d := time.Since(start); d > ioTimeout/2 {
			t.Errorf("closed after %v with handshake_timeout 1s", d)
		}
	})

	// The failed ones are gone from the count; the bystander and a new
	// client both deliver.
	ts.waitConnections(t, 1)
	bystander.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	bystander.cmd("DATA", "354 ")
	bystander.cmd(tlsBody+".", "250 2.0.0")
	bystander.quit()
	c := connect(t, ts.addr)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	s.hello()
	s.deliver("a@example.com", tlsBody)
	s.quit()
	if n := len(rec.messages()); n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
	if !strings.Contains(ts.log.String(), "TLS handshake failed") {
		t.Error("the failed handshakes were not logged")
	}
}

// peerCert runs STARTTLS with conf and returns the certificate the server
// presented.
func peerCert(t *testing.T, addr string, conf *tls.Config) *x509.Certificate {
	t.Helper()
	c := connect(t, addr)
	c.hello()
	s := mustStartTLS(c, conf)
	defer s.quit()
	return s.conn.ConnectionState().PeerCertificates[0]
}

func sameCert(got *x509.Certificate, want tls.Certificate) bool {
	return bytes.Equal(got.Raw, want.Certificate[0])
}

func TestSNIPicksCertificate(t *testing.T) {
	env := newTLSEnv(t, "", "mx1.test", "mx2.test")
	ts := startServer(t, env.with, 2, 16, hostList(), &recorder{})
	for _, tc := range []struct{ sni, want string }{
		{"mx2.test", "mx2.test"},
		{"mx1.test", "mx1.test"},
		{"MX2.test", "mx2.test"},
		{"", "mx1.test"},             // no SNI: the first pair
		{"other.test", "mx1.test"},   // no match: the first pair
		{"sub.mx2.test", "mx1.test"}, // no wildcard in the certificate
	} {
		conf := env.client(tc.sni)
		if tc.want != tc.sni {
			conf.InsecureSkipVerify = true // we only look at what came
		}
		if got := peerCert(t, ts.addr, conf); !sameCert(got, env.certs[tc.want]) {
			t.Errorf("SNI %q: got the certificate for %v, want %s", tc.sni, got.DNSNames, tc.want)
		}
	}
}

// min_version lets TLS 1.2 in, and ciphers picks its suite.
func TestMinVersionAndCiphers(t *testing.T) {
	const cipher = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
	env := newTLSEnv(t, "min_version = 1.2\nciphers = "+cipher+"\n", "mx.test")
	var seen tlsSeen
	ts := startServer(t, env.with, 2, 16, hostList(), seen.spy(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	conf := env.client("mx.test")
	conf.MaxVersion = tls.VersionTLS12
	s := mustStartTLS(c, conf)
	if st := s.conn.ConnectionState(); st.Version != tls.VersionTLS12 || tls.CipherSuiteName(st.CipherSuite) != cipher {
		t.Errorf("negotiated %s %s, want TLS 1.2 %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), cipher)
	}
	s.hello()
	s.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	s.quit()
	if m := seen.mails(); len(m) != 1 || m[0] == nil || m[0].Version != tls.VersionTLS12 {
		t.Errorf("plugin saw %+v", m)
	}
}

func TestLoadTLSErrors(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	writePair(t, dir, "mx", ca.issue(t, false, "mx.test"))
	other := t.TempDir()
	writePair(t, other, "mx", ca.issue(t, false, "mx.test"))
	for _, tc := range []struct{ ini, want string }{
		{"cert = mx.crt\n", "1 certificates but 0 keys"},
		{"cert = mx.crt\nkey = mx.key\nmin_version = 1.4\n", "min_version"},
		{"cert = mx.crt\nkey = mx.key\nciphers = TLS_NO_SUCH_CIPHER\n", "TLS_NO_SUCH_CIPHER"},
		{"cert = missing.crt\nkey = mx.key\n", "missing.crt"},
		{"cert = mx.crt\nkey = " + filepath.Join(other, "mx.key") + "\n", "private key does not match"},
		{"cert = mx.crt\nkey = mx.key\nhandshake_timeout = soon\n", "handshake_timeout"},
		{"cert = mx.crt\nkey = mx.key\nmin_versoin = 1.3\n", "min_versoin"},
	} {
		conf, err := loadTLS(dir, tc.ini)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("tls.ini %q: got %v, %v; want an error about %q", tc.ini, conf, err, tc.want)
		}
	}
}

// A renewed certificate is used for new handshakes after Reload; a session
// that is already encrypted is not disturbed.
func TestCertificateReload(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	rec := &recorder{}
	ts := startServer(t, env.with, 2, 16, hostList(), rec)
	old := env.certs["mx.test"]

	c := connect(t, ts.addr)
	c.hello()
	open := mustStartTLS(c, env.client("mx.test"))
	open.hello()
	if !sameCert(open.conn.ConnectionState().PeerCertificates[0], old) {
		t.Fatal("the first session did not get the first certificate")
	}

	renewed := env.ca.issue(t, false, "mx.test")
	writePair(t, env.dir, "mx.test", renewed)
	if err := env.conf.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := peerCert(t, ts.addr, env.client("mx.test")); !sameCert(got, renewed) {
		t.Errorf("a new session got serial %v, want the renewed %v", got.SerialNumber, renewed.Leaf.SerialNumber)
	}
	open.deliver("a@example.com", tlsBody)

	// A broken renewal is refused and the last good pair stays.
	os.WriteFile(filepath.Join(env.dir, "mx.test.crt"), []byte("not a certificate\n"), 0o644)
	if err := env.conf.Reload(); err == nil {
		t.Error("Reload accepted a broken certificate file")
	}
	if got := peerCert(t, ts.addr, env.client("mx.test")); !sameCert(got, renewed) {
		t.Errorf("after a failed reload a new session got serial %v, want %v", got.SerialNumber, renewed.Leaf.SerialNumber)
	}
	open.deliver("a@example.com", tlsBody)
	open.quit()
	if n := len(rec.messages()); n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
}

// Reloading while handshakes run: every handshake gets one whole pair,
// old or new (run with -race).
func TestCertificateReloadDuringHandshakes(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts := startServer(t, env.with, 2, 64, hostList(), &recorder{})
	pairs := []tls.Certificate{env.certs["mx.test"], env.ca.issue(t, false, "mx.test")}
	stop := make(chan struct{})
	reloaded := make(chan int)
	go func() {
		n := 0
		defer func() { reloaded <- n }()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Half-written files make Reload fail, which keeps the last
			// good pair; that is part of what is tested.
			if writePairFiles(env.dir, "mx.test", pairs[i%2]) == nil && env.conf.Reload() == nil {
				n++
			}
			time.Sleep(time.Millisecond)
		}
	}()
	t.Run("handshakes", func(t *testing.T) {
		for i := range 4 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				for range 5 {
					got := peerCert(t, ts.addr, env.client("mx.test"))
					if !sameCert(got, pairs[0]) && !sameCert(got, pairs[1]) {
						t.Errorf("got a certificate that is neither pair: serial %v", got.SerialNumber)
					}
				}
			})
		}
	})
	close(stop)
	if n := <-reloaded; n == 0 {
		t.Error("no reload succeeded while files were rewritten")
	}
}

// Plugins see the client's certificate when request_client_cert is on.
func TestClientCertificateVisibleToPlugins(t *testing.T) {
	env := newTLSEnv(t, "request_client_cert = true\n", "mx.test")
	var seen tlsSeen
	ts := startServer(t, env.with, 2, 16, hostList(), seen.spy(), &recorder{})
	clientCert := env.ca.issue(t, true, "client.test")

	for _, withCert := range []bool{true, false} {
		c := connect(t, ts.addr)
		c.hello()
		conf := env.client("mx.test")
		if withCert {
			conf.Certificates = []tls.Certificate{clientCert}
		}
		s := mustStartTLS(c, conf)
		s.hello()
		s.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
		s.quit()
	}
	m := seen.mails()
	if len(m) != 2 || m[0] == nil || m[1] == nil {
		t.Fatalf("plugin saw %v", m)
	}
	if len(m[0].PeerCertificates) != 1 || m[0].PeerCertificates[0].Subject.CommonName != "client.test" {
		t.Errorf("with a client certificate the plugin saw %d peer certificates", len(m[0].PeerCertificates))
	}
	if len(m[1].PeerCertificates) != 0 {
		t.Errorf("without a client certificate the plugin saw %d", len(m[1].PeerCertificates))
	}
}

// implicitServer starts a server with a plain listener (first) and an
// implicit-TLS listener (second) and returns the latter's address.
func implicitServer(t *testing.T, env *tlsEnv, ps ...plugins.Plugin) (*testServer, string) {
	t.Helper()
	ts := startServer(t, func(o *loop.Options) {
		env.with(o)
		o.Specs = []config.Listener{{Addr: "127.0.0.1:0"}, {Addr: "127.0.0.1:0", TLS: true}}
	}, 2, 16, ps...)
	return ts, ts.srv.Addrs()[1].String()
}

// dialImplicit connects to an implicit-TLS listener and runs the handshake.
func dialImplicit(t *testing.T, addr string, conf *tls.Config) (*tlsClient, error) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	tc := tls.Client(nc, conf)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return newTLSClient(t, tc), nil
}

func TestImplicitTLS(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	var seen tlsSeen
	md, spool := openMaildir(t)
	ts, addr := implicitServer(t, env, hostList(), seen.spy(), md)

	s, err := dialImplicit(t, addr, env.client("mx.test"))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	s.expect("220 mx.test ESMTP")
	if r := s.hello(); offers(r, "STARTTLS") {
		t.Errorf("EHLO on an implicit-TLS listener offers STARTTLS: %v", r)
	}
	s.cmd("STARTTLS", "503 5.5.1 Error: TLS already active")
	s.deliver("a@example.com", tlsBody)
	s.quit()

	files := maildirFiles(t, spool)
	if len(files) != 1 {
		t.Fatalf("maildir new/ holds %d messages, want 1", len(files))
	}
	if rcv := receivedHeader(t, files[0]); !strings.Contains(rcv, "with ESMTPS (TLSv1.3 with cipher TLS_") {
		t.Errorf("Received header %q", rcv)
	}
	if m := seen.mails(); len(m) != 1 || m[0] == nil {
		t.Errorf("the MAIL hook saw %v, want the TLS state", m)
	}

	// The plain listener of the same server still speaks plaintext first.
	c := connect(t, ts.addr)
	if r := c.hello(); !offers(r, "STARTTLS") {
		t.Errorf("the plain listener does not offer STARTTLS: %v", r)
	}
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()
}

// On an implicit-TLS listener the banner is not sent in plaintext, and a
// plaintext client is closed when its bytes fail the handshake.
func TestImplicitTLSPlaintextClient(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts, addr := implicitServer(t, env, hostList(), &recorder{})
	c := dial(t, addr)
	c.expectSilence(300 * time.Millisecond)
	c.write("EHLO client.test\r\n")
	if out := readAll(t, c.conn); len(out) > 0 && out[0] != 0x15 {
		t.Fatalf("plaintext client got %q", out)
	}
	ts.waitConnections(t, 0)
}

// A blocking connect hook (DNS lookups, say) on an implicit-TLS listener:
// the ClientHello arrives while the hook runs and must still reach the
// handshake.
func TestImplicitTLSWithBlockingConnectHook(t *testing.T) {
	env := newTLSEnv(t, "handshake_timeout = 2s\n", "mx.test")
	g, entered := newGate(), newSignal()
	slow := &hooks{name: "test/slow-connect", blocking: []plugins.Hook{plugins.HookConnect}, gate: g,
		connect: func(*plugins.Conn) plugins.Result { entered.ping(); g.wait(); return plugins.NoOpinion() }}
	_, addr := implicitServer(t, env, slow, hostList(), &recorder{})

	c := dial(t, addr)
	tc := tls.Client(c.conn, env.client("mx.test"))
	done := make(chan error, 1)
	go func() { done <- tc.Handshake() }() // sends the ClientHello at once
	entered.await(t, "the connect hook")
	waitServerRead(t, c.conn) // the loop reads the ClientHello while the hook runs
	g.open()
	if err := <-done; err != nil {
		t.Fatalf("handshake after a blocking connect hook: %v", err)
	}
	s := newTLSClient(t, tc)
	s.expect("220 mx.test ESMTP")
	s.hello()
	s.quit()
}

// A connect hook that refuses a client on an implicit-TLS listener: the
// client can only read the refusal over TLS.
func TestImplicitTLSRefusedAtConnect(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	deny := &hooks{name: "test/deny", connect: func(*plugins.Conn) plugins.Result {
		return plugins.Deny(554, "5.7.1", "Go away")
	}}
	_, addr := implicitServer(t, env, deny, hostList(), &recorder{})
	s, err := dialImplicit(t, addr, env.client("mx.test"))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	s.expect("554 5.7.1")
}

func TestTLSListenerOptionsRefused(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	for _, tc := range []struct {
		name string
		tls  *loop.TLSConfig
		spec config.Listener
		want string
	}{
		{"implicit TLS without a certificate", nil, config.Listener{Addr: "127.0.0.1:0", TLS: true}, "needs a certificate"},
		{"implicit TLS behind PROXY", env.conf, config.Listener{Addr: "127.0.0.1:0", TLS: true, Proxy: true}, "not supported"},
	} {
		opts := testOptions(t, zerolog.Nop())
		opts.Specs, opts.TLS, opts.Loops = []config.Listener{tc.spec}, tc.tls, 1
		srv, err := loop.New(opts, plugins.NewChain(), nil)
		if err == nil {
			srv.Shutdown(t.Context())
			t.Errorf("%s: New accepted it", tc.name)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestTLSInactivityTimeout(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts := startServer(t, func(o *loop.Options) {
		env.with(o)
		o.InactivityTimeout = time.Second
	}, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	s.hello()
	s.expectLine("421 4.4.2 mx.test Error: timeout exceeded")
	s.expectEOF()
	ts.waitConnections(t, 0)
}

// A graceful shutdown reaches sessions that left their loop for TLS: idle
// ones get 421 at once, one inside a transaction may finish it first.
func TestGracefulShutdownWithTLSSessions(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { env.with(o); oneLoop(o) }, 2, 16, hostList(), rec)
	open := func() *tlsClient {
		c := connect(t, ts.addr)
		c.hello()
		s := mustStartTLS(c, env.client("mx.test"))
		s.hello()
		return s
	}
	idle, busy := open(), open()
	busy.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	busy.cmd("RCPT TO:<a@example.com>", "250 2.1.5")

	done := shutdownAsync(ts, 15*time.Second)
	idle.expectLine(shutdownReply)
	idle.expectEOF()
	busy.cmd("DATA", "354 ")
	busy.cmd("finished during shutdown\r\n.", "250 2.0.0 Ok: queued")
	busy.expectLine(shutdownReply)
	busy.expectEOF()
	awaitShutdown(t, done)
	if m := rec.only(t); m.Body != "finished during shutdown\r\n" {
		t.Errorf("stored %q", m.Body)
	}
}

// When the graceful time runs out, a TLS session still in a transaction
// is told so, like a plaintext one.
func TestShutdownTimeoutForcesCloseOverTLS(t *testing.T) {
	env := newTLSEnv(t, "", "mx.test")
	ts := startServer(t, func(o *loop.Options) { env.with(o); oneLoop(o) }, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	s := mustStartTLS(c, env.client("mx.test"))
	s.hello()
	s.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	done := shutdownAsync(ts, 500*time.Millisecond)
	s.expectLine(shutdownReply)
	s.expectEOF()
	awaitShutdown(t, done)
}

// waitServerRead waits until the server's end of the client connection
// c has nothing left in its receive queue (/proc/net/tcp): the server
// read what the client sent.
func waitServerRead(t *testing.T, c net.Conn) {
	t.Helper()
	waitServerSocket(t, c, "read what the client sent", func(_, rxQueue string) bool {
		return strings.TrimLeft(rxQueue, "0") == ""
	})
}

// waitServerSocket waits until ok holds for the state and receive queue
// (hex, as /proc/net/tcp gives them) of the server's end of the client
// connection c.
func waitServerSocket(t *testing.T, c net.Conn, what string, ok func(state, rxQueue string) bool) {
	t.Helper()
	local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	hexAddr := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	// The server's socket: its local address is the client's remote.
	want := hexAddr(remote) + " " + hexAddr(local)
	deadline := time.Now().Add(ioTimeout)
	for {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Skipf("no /proc/net/tcp: %v", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && f[1]+" "+f[2] == want {
				if q := strings.Split(f[4], ":"); len(q) == 2 && ok(f[3], q[1]) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited for the server's socket (%s): %s", want, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
