package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestAgainstLoopmx builds the server of this module, starts it with the
// bench config (queue/discard, unlimited connections) the way scripts/bench.sh
// does, and runs a short bench with -pid. It skips when the server does not
// build, so that the generator can be tested on its own.
func TestAgainstLoopmx(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the server")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "loopmx")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("loopmx does not build: %v\n%.2000s", err, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "config")
	if err := os.Mkdir(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	ini := fmt.Sprintf("[main]\nlisten = %s\nmax_connections = 0\nmax_connections_per_ip = 0\n[log]\nlevel = warn\n", addr)
	if err := os.WriteFile(filepath.Join(cfg, "smtp.ini"), []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "plugins"), []byte("queue/discard\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeCert(t, cfg)
	if err := os.WriteFile(filepath.Join(cfg, "tls.ini"), []byte("cert = cert.pem\nkey = key.pem\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	srv := exec.Command(bin, "-c", cfg)
	var logs bytes.Buffer
	srv.Stderr = &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("loopmx after SIGTERM: %v\n%s", err, logs.String())
			}
		case <-time.After(10 * time.Second):
			srv.Process.Kill()
			<-exited
			t.Errorf("loopmx did not stop within 10s of SIGTERM")
		}
	}
	defer stop()

	// run benches the server with args and the server's pid, and stops
	// the test when loopmx-bench fails.
	run := func(args ...string) Report {
		t.Helper()
		args = append(args, "-wait", "10s", "-c", "10", "-pid", fmt.Sprint(srv.Process.Pid), "-label", "loopmx", addr)
		code, out, rep := bench(t, args...)
		if code != 0 {
			stop()
			t.Fatalf("%v: exit %d:\n%s\nserver log:\n%s", args, code, out, logs.String())
		}
		return rep
	}

	rep := run("-warmup", "20", "-scenario", "session,pipeline,idle,mix", "-n", "200")
	for _, r := range rep.Results {
		noErrors(t, r)
		if r.Skipped != "" {
			t.Errorf("%s skipped: %s", r.Params.Scenario, r.Skipped)
		}
		if r.Server == nil || r.Server.Procs < 1 {
			t.Errorf("%s: no server figures for pid %d", r.Params.Scenario, srv.Process.Pid)
		}
	}
	if s := result(t, rep, "session"); s.Messages != 200 {
		t.Errorf("session: %d messages delivered, want 200", s.Messages)
	}
	if idle := result(t, rep, "idle"); idle.Sessions != 200 {
		t.Errorf("idle: held %d connections, want 200", idle.Sessions)
	}

	// -starttls: every session and every held connection goes through a
	// TLS handshake, and the messages still arrive.
	rep = run("-warmup", "10", "-starttls", "-scenario", "session,idle", "-n", "50")
	for _, r := range rep.Results {
		noErrors(t, r)
		if got := r.Latency["starttls"].Count; got != 50 {
			t.Errorf("-starttls %s: %d handshakes, want 50", r.Params.Scenario, got)
		}
		if !r.Params.StartTLS {
			t.Errorf("-starttls %s: the report does not record STARTTLS", r.Params.Scenario)
		}
	}
	if s := result(t, rep, "session"); s.Messages != 50 {
		t.Errorf("-starttls session: %d messages delivered, want 50", s.Messages)
	}
}

// writeCert writes a self-signed ECDSA P-256 certificate for mx.test to
// cert.pem and key.pem in dir.
func writeCert(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.test"},
		DNSNames: []string{"mx.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string]*pem.Block{"cert.pem": {Type: "CERTIFICATE", Bytes: der}, "key.pem": {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
