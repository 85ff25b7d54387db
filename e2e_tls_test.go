package main

// End-to-end tests of STARTTLS, implicit TLS and the PROXY protocol with
// the real binary and real clients from Debian: swaks (STARTTLS, TLS on
// connect, PROXY v1 and v2), openssl s_client (the certificate chosen by
// SNI), and Go's crypto/tls for a certificate renewed with SIGHUP while a
// session is open. The certificates are made by the tests.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eCA signs the server certificates of one test.
type e2eCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newE2ECA(t *testing.T) *e2eCA {
	t.Helper()
	ca := &e2eCA{pool: x509.NewCertPool()}
	ca.key = e2eKey(t)
	tmpl := e2eTemplate(t, "loopmx e2e CA")
	tmpl.KeyUsage = x509.KeyUsageCertSign
	tmpl.BasicConstraintsValid, tmpl.IsCA = true, true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ca.key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	if ca.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	ca.pool.AddCert(ca.cert)
	return ca
}

func e2eKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func e2eTemplate(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

// writeServerCert issues a certificate for name, writes dir/name.crt and
// dir/name.key (replacing them) and returns the certificate's DER.
func (ca *e2eCA) writeServerCert(t *testing.T, dir, name string) []byte {
	t.Helper()
	key := e2eKey(t)
	tmpl := e2eTemplate(t, name)
	tmpl.DNSNames = []string{name}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{
		name + ".crt": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		name + ".key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
	})
	return der
}

// tlsSetup is a maildir config directory whose tls.ini lists one
// certificate per name, the first being the default.
type tlsSetup struct {
	dir   string
	spool string
	ca    *e2eCA
	ders  map[string][]byte
}

func newTLSSetup(t *testing.T, names ...string) *tlsSetup {
	t.Helper()
	spool := t.TempDir()
	s := &tlsSetup{dir: maildirConfig(t, spool), spool: spool, ca: newE2ECA(t), ders: map[string][]byte{}}
	var crts, keys []string
	for _, n := range names {
		s.ders[n] = s.ca.writeServerCert(t, s.dir, n)
		crts, keys = append(crts, n+".crt"), append(keys, n+".key")
	}
	writeFiles(t, s.dir, map[string]string{
		"tls.ini": "cert = " + strings.Join(crts, ", ") + "\nkey = " + strings.Join(keys, ", ") + "\n",
	})
	return s
}

// needTool returns the path of a client program, or skips the test.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed", name)
	}
	return p
}

// runTool runs a client program with stdin and returns its combined
// output and exit error; it is killed after a minute.
func runTool(t *testing.T, stdin string, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// swaksArgs is a swaks delivery of one message to u@example.com at addr.
func swaksArgs(swaks, addr string, extra ...string) []string {
	return append([]string{swaks, "--server", addr, "--to", "u@example.com", "--from", "sender@e2e.test",
		"--ehlo", "client.e2e.test", "--header", "Subject: e2e tls"}, extra...)
}

// receivedLine returns the unfolded Received field of a stored message.
func receivedLine(t *testing.T, f spoolFile) string {
	t.Helper()
	s := string(f.data)
	i := strings.Index(s, "Received: ")
	if i < 0 {
		t.Fatalf("new/%s has no Received header", f.name)
	}
	end := strings.IndexByte(s[i:], ';')
	if end < 0 {
		t.Fatalf("new/%s: unterminated Received header", f.name)
	}
	return strings.Join(strings.Fields(s[i:i+end]), " ")
}

// onlyStored returns the single message in new/ (maildir stores it before
// the 250, so it is there when the client has its answer).
func onlyStored(t *testing.T, spool string) spoolFile {
	t.Helper()
	files := readMaildir(t, spool, "new")
	if len(files) != 1 {
		t.Fatalf("maildir new/ holds %d messages, want 1", len(files))
	}
	return files[0]
}

func TestE2ETLSSwaksStartTLS(t *testing.T) {
	swaks := needTool(t, "swaks")
	setup := newTLSSetup(t, "mx.test")
	s := startBinary(t, setup.dir, "me = mx.test\n")
	out, err := runTool(t, "", swaksArgs(swaks, s.addr, "--tls")...)
	if err != nil {
		t.Fatalf("swaks --tls: %v\n%s", err, out)
	}
	// swaks marks plaintext lines "<-" and lines read over TLS "<~".
	if !regexp.MustCompile(`(?m)^<-  250[- ]STARTTLS\r?$`).MatchString(out) || !strings.Contains(out, "TLS started") {
		t.Errorf("swaks output does not show STARTTLS offered and started:\n%s", out)
	}
	if regexp.MustCompile(`(?m)^<~  250[- ]STARTTLS`).MatchString(out) {
		t.Errorf("STARTTLS still offered over TLS:\n%s", out)
	}
	rcv := receivedLine(t, onlyStored(t, setup.spool))
	if !regexp.MustCompile(`with ESMTPS \(TLSv1\.3 with cipher TLS_[A-Z0-9_]+\)`).MatchString(rcv) {
		t.Errorf("Received header %q does not name the TLS version and cipher", rcv)
	}
}

func TestE2ETLSOpenSSLShowsCertificate(t *testing.T) {
	openssl := needTool(t, "openssl")
	setup := newTLSSetup(t, "mx.test", "mx2.test")
	s := startBinary(t, setup.dir, "me = mx.test\n")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: setup.ca.cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"mx.test", "mx2.test"} {
		// -ign_eof makes s_client send the QUIT line instead of reading
		// it as its own command, and wait for the server to close.
		out, err := runTool(t, "QUIT\n", openssl, "s_client", "-starttls", "smtp", "-crlf", "-ign_eof",
			"-connect", s.addr, "-servername", name,
			"-CAfile", caFile, "-verify_hostname", name, "-verify_return_error")
		if err != nil {
			t.Fatalf("openssl s_client -servername %s: %v\n%s", name, err, out)
		}
		subject := regexp.MustCompile(`(?m)^subject=\s*CN\s*=\s*` + regexp.QuoteMeta(name) + `\s*$`)
		if !subject.MatchString(out) {
			t.Errorf("s_client -servername %s does not show subject CN = %s:\n%s", name, name, out)
		}
		if !strings.Contains(out, "Verify return code: 0 (ok)") {
			t.Errorf("s_client could not verify the certificate for %s:\n%s", name, out)
		}
		if !strings.Contains(out, "221 2.0.0") {
			t.Errorf("QUIT over TLS was not answered:\n%s", out)
		}
	}
}

// startTLSSession opens a session at addr and runs STARTTLS with conf; it
// returns the client over TLS and the certificate the server showed.
func startTLSSession(t *testing.T, addr string, conf *tls.Config) (*smtpClient, []byte) {
	t.Helper()
	cl, err := dialSMTP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	if err := cl.expect("EHLO client.e2e.test", 250); err != nil {
		t.Fatal(err)
	}
	if err := cl.expect("STARTTLS", 220); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(cl.c, conf)
	tc.SetDeadline(time.Now().Add(ioTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	sc := &smtpClient{c: tc, r: bufio.NewReader(tc)}
	if err := sc.expect("EHLO client.e2e.test", 250); err != nil {
		t.Fatal(err)
	}
	return sc, tc.ConnectionState().PeerCertificates[0].Raw
}

// A renewed certificate is picked up on SIGHUP; the session that was open
// across the reload still delivers.
func TestE2ETLSHUPReloadsCertificate(t *testing.T) {
	setup := newTLSSetup(t, "mx.test")
	s := startBinary(t, setup.dir, "me = mx.test\n")
	conf := &tls.Config{RootCAs: setup.ca.pool, ServerName: "mx.test"}

	open, got := startTLSSession(t, s.addr, conf)
	if !bytes.Equal(got, setup.ders["mx.test"]) {
		t.Fatal("the first session did not get the configured certificate")
	}
	renewed := setup.ca.writeServerCert(t, setup.dir, "mx.test")
	s.signal(syscall.SIGHUP)
	if !s.waitLog("SIGHUP: TLS certificates reloaded", 10*time.Second) {
		t.Fatal("no reload logged after SIGHUP")
	}
	fresh, got := startTLSSession(t, s.addr, conf)
	if !bytes.Equal(got, renewed) {
		t.Error("a session after SIGHUP did not get the renewed certificate")
	}
	fresh.cmd("QUIT")

	// A broken file is not loaded; the renewed pair stays in use.
	writeFiles(t, setup.dir, map[string]string{"mx.test.crt": "not a certificate\n"})
	s.signal(syscall.SIGHUP)
	if !s.waitLog("config not reloaded", 10*time.Second) { // the certificate is part of the config
		t.Fatal("a broken certificate was not reported on SIGHUP")
	}
	later, got := startTLSSession(t, s.addr, conf)
	if !bytes.Equal(got, renewed) {
		t.Error("after a failed reload a new session did not keep the renewed certificate")
	}
	later.cmd("QUIT")

	msg := testMessage("hup-reload", 2048)
	if err := open.startTx(false, "u@example.com"); err != nil {
		t.Fatal(err)
	}
	if code, text, err := open.sendData(msg); err != nil || code != 250 {
		t.Fatalf("message over the session opened before the reload: %d %s %v", code, text, err)
	}
	if err := open.expect("QUIT", 221); err != nil {
		t.Fatal(err)
	}
	f := onlyStored(t, setup.spool)
	checkStored(t, f, msg)
	if !s.alive() {
		t.Fatal("loopmx exited on SIGHUP")
	}
}

func TestE2ETLSImplicitListener(t *testing.T) {
	swaks := needTool(t, "swaks")
	setup := newTLSSetup(t, "mx.test")
	smtps := "127.0.0.1:" + strconv.Itoa(freePort(t))
	s := startBinary(t, setup.dir, "me = mx.test\nsmtps_listen = "+smtps+"\n")
	out, err := runTool(t, "", swaksArgs(swaks, smtps, "--tls-on-connect")...)
	if err != nil {
		t.Fatalf("swaks --tls-on-connect: %v\n%s", err, out)
	}
	if strings.Contains(out, "STARTTLS") {
		t.Errorf("an implicit-TLS session offers STARTTLS:\n%s", out)
	}
	rcv := receivedLine(t, onlyStored(t, setup.spool))
	if !strings.Contains(rcv, "with ESMTPS (TLSv1.3 with cipher ") {
		t.Errorf("Received header %q", rcv)
	}
	// The plain listener of the same process still offers STARTTLS.
	cl, err := dialSMTP(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.expect("EHLO client.e2e.test", 250); err != nil {
		t.Fatal(err)
	}
	if err := cl.expect("STARTTLS", 220); err != nil {
		t.Fatal(err)
	}
}

// swaks speaks PROXY v1 and v2 as a load balancer would; the address it
// reports is the one in the Received header.
func TestE2ETLSProxyListener(t *testing.T) {
	swaks := needTool(t, "swaks")
	setup := newTLSSetup(t, "mx.test")
	proxy := "127.0.0.1:" + strconv.Itoa(freePort(t))
	startBinary(t, setup.dir, "me = mx.test\nproxy_listen = "+proxy+"\nproxy_trusted = 127.0.0.1\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"v1 TCP4", []string{"--proxy-version", "1", "--proxy-family", "TCP4", "--proxy-source", "192.0.2.7",
			"--proxy-source-port", "40000", "--proxy-dest", "198.51.100.1", "--proxy-dest-port", "25"},
			"from client.e2e.test ([192.0.2.7]) by"},
		{"v2 AF_INET6", []string{"--proxy-version", "2", "--proxy-family", "AF_INET6", "--proxy-source", "2001:db8::7",
			"--proxy-source-port", "40001", "--proxy-dest", "2001:db8::1", "--proxy-dest-port", "25"},
			"from client.e2e.test ([IPv6:2001:db8::7]) by"},
		{"v2 AF_INET then STARTTLS", []string{"--proxy-version", "2", "--proxy-family", "AF_INET", "--proxy-source", "192.0.2.8",
			"--proxy-source-port", "40002", "--proxy-dest", "198.51.100.1", "--proxy-dest-port", "25", "--tls"},
			"from client.e2e.test ([192.0.2.8]) by mx.test (loopmx) with ESMTPS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if slices.Contains(tc.args, "--tls") {
			}
			out, err := runTool(t, "", swaksArgs(swaks, proxy, tc.args...)...)
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
			for _, f := range readMaildir(t, setup.spool, "new") {
				if strings.Contains(receivedLine(t, f), tc.want) {
					return
				}
			}
			t.Errorf("no stored message has a Received header with %q", tc.want)
		})
	}

	// A client that skips the header is closed without a banner.
	nc, err := net.DialTimeout("tcp", proxy, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(ioTimeout))
	nc.Write([]byte("EHLO client.e2e.test\r\n"))
	if out, err := io.ReadAll(nc); len(out) > 0 || err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("a connection without a PROXY header got %q, %v; want it closed without a word", out, err)
	}
}
