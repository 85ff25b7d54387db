package main

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ledger records, across the rounds of the crash test, every message a
// client started to send and every one the server acknowledged with 250.
type ledger struct {
	mu      sync.Mutex
	sent    map[string][]byte // id -> the message as sent (before dot-stuffing)
	acked   map[string]bool
	partial map[string]bool // ids of messages whose DATA was never finished
}

func newLedger() *ledger {
	return &ledger{sent: map[string][]byte{}, acked: map[string]bool{}, partial: map[string]bool{}}
}

func (l *ledger) addSent(id string, msg []byte) {
	l.mu.Lock()
	l.sent[id] = msg
	l.mu.Unlock()
}

func (l *ledger) addAcked(id string) {
	l.mu.Lock()
	l.acked[id] = true
	l.mu.Unlock()
}

func (l *ledger) addPartial(id string) {
	l.mu.Lock()
	l.partial[id] = true
	l.mu.Unlock()
}

// crashSender is one client that sends messages over one connection, one
// transaction after another, until the connection breaks or stop is set.
// Every 250 it gets is counted in acks.
func crashSender(t *testing.T, addr, prefix string, l *ledger, acks *atomic.Int64, stop *atomic.Bool) {
	cl, err := dialSMTP(addr)
	if err != nil {
		if !stop.Load() {
			t.Errorf("%s: %v", prefix, err)
		}
		return
	}
	defer cl.Close()
	if err := cl.expect("EHLO client.e2e.test", 250); err != nil {
		if !stop.Load() {
			t.Errorf("%s: %v", prefix, err)
		}
		return
	}
	// Sizes vary from a few hundred bytes to 64 KiB, so that the kill may
	// land while the client writes, while the server writes the file, or
	// between transactions.
	sizes := []int{300, 4 << 10, 700, 64 << 10, 16 << 10}
	for n := 0; !stop.Load(); n++ {
		id := fmt.Sprintf("%s-%d", prefix, n)
		msg := testMessage(id, sizes[n%len(sizes)])
		if err := cl.startTx(false, "u@example.com"); err != nil {
			return // the server is gone
		}
		l.addSent(id, msg)
		code, text, err := cl.sendData(msg)
		if err != nil {
			return
		}
		if code != 250 {
			// A refusal while the server is up is not what this test is
			// about, but it must never happen to a well-formed message.
			t.Errorf("%s: end of data got %d %s, want 250", id, code, text)
			return
		}
		l.addAcked(id)
		acks.Add(1)
	}
}

// TestE2EKill9KeepsAcknowledgedMail kills the server with SIGKILL while
// clients are sending, several times over, restarting it on the same
// spool each time. Every message a client got 250 for must be in new/
// exactly as sent; nothing in new/ may be a partial message; a message
// whose DATA never ended must not be delivered.
func TestE2EKill9KeepsAcknowledgedMail(t *testing.T) {
	t.Parallel()
	spool := t.TempDir()
	conf := maildirConfig(t, spool)
	l := newLedger()
	const rounds, senders = 4, 3

	for round := 1; round <= rounds; round++ {
		srv := startBinary(t, conf, "")
		found := verifySpool(t, spool, l, fmt.Sprintf("start %d", round))
		if round > 1 {
			logRound(t, l, found, round-1)
		}

		// Client B stops in the middle of its message and stays there.
		partialID := fmt.Sprintf("r%d-partial", round)
		b, err := dialSMTP(srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.startTx(true, "u@example.com"); err != nil {
			t.Fatal(err)
		}
		if err := b.expect("DATA", 354); err != nil {
			t.Fatal(err)
		}
		whole := testMessage(partialID, 8<<10)
		if err := b.send(whole[:len(whole)/2]); err != nil {
			t.Fatal(err)
		}
		l.addPartial(partialID)

		// Clients A send until the kill.
		var acks atomic.Int64
		var stop atomic.Bool
		var wg sync.WaitGroup
		for k := 0; k < senders; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				crashSender(t, srv.addr, fmt.Sprintf("r%d-a%d", round, k), l, &acks, &stop)
			}()
		}
		// Kill after a different amount of traffic each round.
		target := int64(20 * round)
		deadline := time.Now().Add(30 * time.Second)
		for acks.Load() < target && time.Now().Before(deadline) && !t.Failed() {
			time.Sleep(2 * time.Millisecond)
		}
		if acks.Load() < target {
			stop.Store(true)
			srv.kill9()
			wg.Wait()
			t.Fatalf("round %d: only %d messages acknowledged in 30s", round, acks.Load())
		}
		stop.Store(true) // set first, so senders do not report the kill as an error
		srv.kill9()
		wg.Wait()
		b.Close()
		t.Logf("round %d: killed with SIGKILL after %d acknowledged messages", round, acks.Load())
	}

	// The last restart: everything is still there and the server works.
	srv := startBinary(t, conf, "")
	logRound(t, l, verifySpool(t, spool, l, "after the last restart"), rounds)
	cl, err := dialSMTP(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.startTx(true, "u@example.com"); err != nil {
		t.Fatal(err)
	}
	msg := testMessage("after-crashes", 1000)
	if code, text, err := cl.sendData(msg); err != nil || code != 250 {
		t.Fatalf("delivery after the crashes: %d %s %v", code, text, err)
	}
	l.addSent("after-crashes", msg)
	l.addAcked("after-crashes")
	verifySpool(t, spool, l, "after a delivery on the restarted server")
}

// logRound logs what became of the messages sent in one round.
func logRound(t *testing.T, l *ledger, found map[string]int, round int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	prefix := fmt.Sprintf("r%d-", round)
	var sent, acked, ackedFound, unackedFound int
	for id := range l.sent {
		if !strings.HasPrefix(id, prefix) {
			continue
		}
		sent++
		switch {
		case l.acked[id]:
			acked++
			if found[id] > 0 {
				ackedFound++
			}
		case found[id] > 0:
			unackedFound++
		}
	}
	t.Logf("round %d: %d messages started, %d acknowledged, %d of those found in new/; %d more in new/ whose 250 the kill cut off; partial DATA in new/: %v",
		round, sent, acked, ackedFound, unackedFound, found[prefix+"partial"] > 0)
}

// verifySpool checks new/ against the ledger, logs the totals and returns
// how often each id was found in new/.
func verifySpool(t *testing.T, spool string, l *ledger, when string) map[string]int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	found := map[string]int{}
	unacked := 0
	for _, f := range readMaildir(t, spool, "new") {
		switch {
		case f.id == "":
			t.Errorf("%s: new/%s has no Message-ID of ours; it is not a whole message (%d bytes)", when, f.name, len(f.data))
			continue
		case l.partial[f.id]:
			t.Errorf("%s: new/%s is %s, whose DATA never ended", when, f.name, f.id)
			continue
		case l.sent[f.id] == nil:
			t.Errorf("%s: new/%s carries id %s, which no client sent", when, f.name, f.id)
			continue
		}
		if found[f.id]++; found[f.id] == 2 {
			t.Errorf("%s: %s is in new/ more than once", when, f.id)
		}
		if !l.acked[f.id] {
			unacked++
		}
		checkStored(t, f, l.sent[f.id])
	}
	lost := 0
	for id := range l.acked {
		if found[id] == 0 {
			lost++
			if lost <= 10 {
				t.Errorf("%s: %s was acknowledged with 250 but is not in new/", when, id)
			}
		}
	}
	tmp := readMaildir(t, spool, "tmp")
	t.Logf("%s: sent %d, acknowledged %d, in new/ %d (%d of them never acknowledged), lost %d, leftovers in tmp/ %d",
		when, len(l.sent), len(l.acked), len(found), unacked, lost, len(tmp))
	return found
}
