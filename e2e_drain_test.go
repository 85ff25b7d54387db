package main

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// readyStatus answers GET /readyz's status code, 0 when it cannot ask.
func readyStatus(u string) int {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(u)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A drain a load balancer can follow (drain_grace): on TERM, /readyz
// answers 503 first while new connections are still served, then the
// listeners close and the process exits. With a supervisor (nodes = 1)
// and alone (nodes = 0).
func TestE2EDrainGraceReadyzFirst(t *testing.T) {
	for _, nodes := range []int{1, 0} {
		t.Run(fmt.Sprintf("nodes=%d", nodes), func(t *testing.T) {
			spool := t.TempDir()
			mport := freePort(t)
			ini := fmt.Sprintf("nodes = %d\nmetrics_listen = 127.0.0.1:%d\ndrain_grace = 4s\ngraceful_timeout = 5s\n", nodes, mport)
			srv := startBinary(t, maildirConfig(t, spool), ini)
			ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", mport)
			deadline := time.Now().Add(20 * time.Second)
			for readyStatus(ready) != http.StatusOK {
				if time.Now().After(deadline) {
					t.Fatalf("/readyz never said ready:\n%s", tail(srv.stderr.String(), 20))
				}
				time.Sleep(50 * time.Millisecond)
			}
			srv.signal(syscall.SIGTERM)
			for readyStatus(ready) != http.StatusServiceUnavailable {
				if time.Now().After(deadline) || !srv.alive() {
					t.Fatalf("/readyz did not turn 503 after TERM:\n%s", tail(srv.stderr.String(), 20))
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Not ready, and still serving: a client the balancer sent
			// before its check failed is delivered.
			cl, err := dialSMTP(srv.addr)
			if err != nil {
				t.Fatalf("a new connection during drain_grace: %v", err)
			}
			if err := cl.startTx(true, "bob@example.com"); err != nil {
				t.Fatalf("during drain_grace: %v", err)
			}
			if code, text, err := cl.sendData(testMessage("grace", 300)); err != nil || code != 250 {
				t.Fatalf("a message during drain_grace: %d %s %v", code, text, err)
			}
			cl.Close()
			if !srv.wait(30 * time.Second) {
				t.Fatalf("still running 30 s after TERM:\n%s", tail(srv.stderr.String(), 20))
			}
			if files := readMaildir(t, spool, "new"); len(files) != 1 {
				t.Errorf("the spool holds %d messages, want the one sent during the grace", len(files))
			}
		})
	}
}
