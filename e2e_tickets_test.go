package main

// End-to-end tests of TLS session resumption across worker processes and
// hosts: the session-ticket keys are shared (docs/tls.md, Session
// resumption), so a ticket issued by one process resumes on another.

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tlsVisit is one STARTTLS session that delivered a message: whether the
// handshake resumed a session, and the pid of the process that served it.
type tlsVisit struct {
	resumed bool
	pid     string
}

var txPid = regexp.MustCompile(`"pid":(\d+)`)

// visitTLS runs EHLO, STARTTLS (with conf, whose session cache carries
// tickets from one visit to the next), EHLO, one message and QUIT at
// addr, and finds the serving process by the transaction's log line in
// srv's output.
func visitTLS(t *testing.T, srv *server, addr string, conf *tls.Config) tlsVisit {
	t.Helper()
	cl, _ := startTLSSession(t, addr, conf)
	defer cl.Close()
	// The EHLO reply comes after the server's ticket (TLS 1.3 sends it
	// once the handshake is done), so the cache holds it from here on.
	if err := cl.startTx(false, "u@example.com"); err != nil {
		t.Fatal(err)
	}
	code, text, err := cl.sendData(testMessage("resume", 512))
	if err != nil || code != 250 {
		t.Fatalf("message over TLS: %d %s %v", code, text, err)
	}
	cl.expect("QUIT", 221)
	id := text[strings.LastIndex(text, " ")+1:]
	want := `"tx":"` + id + `"`
	if !srv.waitLog(want, 10*time.Second) {
		t.Fatalf("no log line with %s", want)
	}
	for _, line := range strings.Split(srv.stderr.String(), "\n") {
		if strings.Contains(line, want) && strings.Contains(line, `"message":"transaction"`) {
			if m := txPid.FindStringSubmatch(line); m != nil {
				return tlsVisit{resumed: cl.c.(*tls.Conn).ConnectionState().DidResume, pid: m[1]}
			}
		}
	}
	t.Fatalf("no pid in the transaction line of %s", id)
	return tlsVisit{}
}

// resumingClient is a client TLS config for mx.test with a session cache:
// the cache is keyed by the server name, so tickets follow the name from
// one address to another, as for several MX hosts of one domain.
func resumingClient(setup *tlsSetup) *tls.Config {
	return &tls.Config{RootCAs: setup.ca.pool, ServerName: "mx.test", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
}

// TestE2ETLSResumeAcrossWorkers: with nodes = 2 a client resumes its TLS
// session on a connection served by the other worker than the one that
// issued its ticket, and again after a HUP has replaced every worker.
// reuseport spreads sequential connections over both workers by hash; with
// the shared policy one idle worker may take them all.
func TestE2ETLSResumeAcrossWorkers(t *testing.T) {
	setup := newTLSSetup(t, "mx.test")
	srv := startSupervised(t, setup.dir, "nodes = 2\nme = mx.test\nsched_policy = reuseport\n")
	conf := resumingClient(setup)

	first := visitTLS(t, srv, srv.addr, conf)
	if first.resumed {
		t.Fatal("the first session resumed with an empty cache")
	}
	prev, pids := first, map[string]bool{first.pid: true}
	crossed := 0
	for i := 0; i < 60 && crossed < 2; i++ {
		v := visitTLS(t, srv, srv.addr, conf)
		if !v.resumed {
			t.Fatalf("visit %d (worker pid %s, ticket from pid %s) did a full handshake", i+2, v.pid, prev.pid)
		}
		if v.pid != prev.pid {
			crossed++
		}
		pids[v.pid], prev = true, v
	}
	if crossed < 2 {
		t.Fatalf("60 sessions never moved between workers (pids %v); cannot tell", pids)
	}

	srv.signal(syscall.SIGHUP)
	if !srv.waitLog(`"message":"reload done"`, 30*time.Second) {
		t.Fatal("no 'reload done' after HUP")
	}
	if countLog(srv, `"message":"session-ticket keys reloaded"`) != 1 {
		t.Error("the reload did not log the ticket keys")
	}
	// Wait for the old workers to be gone so the next session is served
	// by a new one.
	resumesOnNewWorkers(t, srv, conf, pids, "HUP")

	// USR2 execs the binary again; the new image takes the keys over.
	srv.signal(syscall.SIGUSR2)
	if !srv.waitLog(`"message":"upgrade done"`, 60*time.Second) {
		t.Fatal("no 'upgrade done' after USR2")
	}
	resumesOnNewWorkers(t, srv, conf, pids, "USR2")
	if strings.Contains(srv.stderr.String(), "LOOPMX_TICKET_KEYS_FD") {
		t.Error("the log shows the worker environment")
	}
}

// TestE2ETLSResumeAcrossHosts: two independent loopmx processes with the
// same ticket_key_file resume each other's sessions; after one of them is
// given another key file and HUP, it no longer can.
func TestE2ETLSResumeAcrossHosts(t *testing.T) {
	const keyA = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJASM="
	const keyB = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	var hosts []*server
	var setups []*tlsSetup
	shared := newTLSSetup(t, "mx.test")
	for i := 0; i < 2; i++ {
		setup := shared
		if i > 0 {
			// Its own config directory and spool, the same certificate.
			setup = &tlsSetup{spool: t.TempDir(), ca: shared.ca}
			setup.dir = maildirConfig(t, setup.spool)
			for _, f := range []string{"mx.test.crt", "mx.test.key"} {
				copyFile(t, filepath.Join(shared.dir, f), filepath.Join(setup.dir, f))
			}
		}
		keys := filepath.Join(setup.dir, "ticket.keys")
		if err := os.WriteFile(keys, []byte("# shared by every MX host\n"+keyA+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		writeFiles(t, setup.dir, map[string]string{"tls.ini": "cert = mx.test.crt\nkey = mx.test.key\nticket_key_file = ticket.keys\n"})
		setups = append(setups, setup)
		hosts = append(hosts, startBinary(t, setup.dir, "me = mx.test\n"))
	}
	conf := resumingClient(shared)
	if v := visitTLS(t, hosts[0], hosts[0].addr, conf); v.resumed {
		t.Fatal("the first session resumed with an empty cache")
	}
	if v := visitTLS(t, hosts[1], hosts[1].addr, conf); !v.resumed {
		t.Fatal("a ticket of host 1 did not resume on host 2 with the same key file")
	}
	if v := visitTLS(t, hosts[0], hosts[0].addr, conf); !v.resumed {
		t.Fatal("a ticket of host 2 did not resume on host 1")
	}

	// Host 2 gets a key file without host 1's key: its tickets are no
	// longer understood there.
	if err := os.WriteFile(filepath.Join(setups[1].dir, "ticket.keys"), []byte(keyB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hosts[1].signal(syscall.SIGHUP)
	if !hosts[1].waitLog("SIGHUP: config reloaded", 10*time.Second) {
		t.Fatal("host 2 did not reload")
	}
	if v := visitTLS(t, hosts[1], hosts[1].addr, conf); v.resumed {
		t.Error("host 2 resumed a ticket sealed with a key no longer in its file")
	}
	// A broken key file fails the reload and keeps the keys in use.
	if err := os.WriteFile(filepath.Join(setups[1].dir, "ticket.keys"), []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hosts[1].signal(syscall.SIGHUP)
	if !hosts[1].waitLog("config not reloaded", 10*time.Second) {
		t.Fatal("a broken key file was not reported on HUP")
	}
	if n := countLog(hosts[1], "config not reloaded", "ticket_key_file", "line 1"); n != 1 {
		t.Errorf("%d 'config not reloaded' lines naming ticket_key_file and the line, want 1", n)
	}
	if v := visitTLS(t, hosts[1], hosts[1].addr, conf); !v.resumed {
		t.Error("after a failed reload host 2 lost its keys")
	}
}

// resumesOnNewWorkers waits until no worker of pids is left, then checks
// that a session resumes with the ticket of the last visit, on a worker
// started by what (a HUP or USR2), and adds that worker to pids.
func resumesOnNewWorkers(t *testing.T, srv *server, conf *tls.Config, pids map[string]bool, what string) {
	t.Helper()
	waitChildren(t, srv.cmd.Process.Pid, 2, 30*time.Second, func(k []int) bool {
		for _, p := range k {
			if pids[fmt.Sprint(p)] {
				return false
			}
		}
		return true
	})
	v := visitTLS(t, srv, srv.addr, conf)
	if pids[v.pid] {
		t.Fatalf("after %s: served by pid %s of before", what, v.pid)
	}
	if !v.resumed {
		t.Errorf("a ticket from before the %s did not resume on a worker started by it", what)
	}
	pids[v.pid] = true
}
