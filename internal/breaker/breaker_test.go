package breaker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// clock is a fake time a test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(o Options) (*Breaker, *clock, *bytes.Buffer) {
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	b := New("redis 127.0.0.1:6379", o)
	c := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	b.now = c.now
	b.SetLogger(&log)
	return b, c, &buf
}

func lines(buf *bytes.Buffer) []string {
	s := strings.TrimSpace(buf.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

var (
	refused = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	stalled = AsTimeout(errors.New("read tcp 127.0.0.1:6379: i/o timeout"))
)

// call begins a call and reports err; it returns what Begin said.
func call(b *Breaker, err error) error {
	c, berr := b.Begin()
	if berr != nil {
		return berr
	}
	c.Done(err)
	return nil
}

// TestTimeoutOpensAtOnce: one timeout opens the breaker; while it is open
// every call is refused at once; after the back-off exactly one probe
// goes; a failed probe doubles the back-off, a good one closes it.
func TestTimeoutOpensAtOnce(t *testing.T) {
	b, clk, buf := newTest(Options{Backoff: time.Second, MaxBackoff: 3 * time.Second})
	if err := call(b, nil); err != nil || b.State() != Closed {
		t.Fatalf("a good call: %v, state %v", err, b.State())
	}
	if err := call(b, stalled); err != nil || b.State() != Open {
		t.Fatalf("a timeout: %v, state %v; want the call made and the breaker open", err, b.State())
	}
	if l := lines(buf); len(l) != 1 || !strings.Contains(l[0], `"message":"circuit open: calls fail at once"`) ||
		!strings.Contains(l[0], `"dependency":"redis 127.0.0.1:6379"`) || !strings.Contains(l[0], "i/o timeout") {
		t.Fatalf("opening logged %q", l)
	}
	for range 100 {
		if err := call(b, nil); !errors.Is(err, ErrOpen) {
			t.Fatalf("a call while open: %v, want ErrOpen", err)
		}
	}
	if b.Ready() {
		t.Error("Ready = true within the back-off")
	}

	// The back-off passes: one probe, the others still refused.
	backoffs := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}
	for i, d := range backoffs {
		clk.t = clk.t.Add(d - time.Millisecond)
		if _, err := b.Begin(); !errors.Is(err, ErrOpen) {
			t.Fatalf("probe %d: a call 1ms before the back-off of %v ends: %v", i, d, err)
		}
		clk.t = clk.t.Add(time.Millisecond)
		if !b.Ready() {
			t.Fatalf("probe %d: Ready = false once the back-off of %v is over", i, d)
		}
		probe, err := b.Begin()
		if err != nil || b.State() != HalfOpen {
			t.Fatalf("probe %d: %v, state %v; want the probe let through", i, err, b.State())
		}
		if _, err := b.Begin(); !errors.Is(err, ErrOpen) || b.Ready() {
			t.Fatalf("probe %d: a second call while the probe runs: %v", i, err)
		}
		probe.Done(refused)
		if b.State() != Open {
			t.Fatalf("probe %d failed: state %v, want open", i, b.State())
		}
	}
	// One "still open" line for the four failed probes: they came within a
	// minute.
	if l := lines(buf); len(l) != 2 || !strings.Contains(l[1], `"message":"circuit still open: the probe failed"`) {
		t.Fatalf("failed probes logged %q", l)
	}

	clk.t = clk.t.Add(3 * time.Second)
	if err := call(b, nil); err != nil || b.State() != Closed {
		t.Fatalf("a good probe: %v, state %v; want closed", err, b.State())
	}
	l := lines(buf)
	if len(l) != 3 || !strings.Contains(l[2], `"message":"circuit closed: calls go through again"`) ||
		!strings.Contains(l[2], `"failed_probes":4`) {
		t.Fatalf("closing logged %q", l)
	}
	// Closed again, a new outage starts from the first back-off.
	call(b, stalled)
	clk.t = clk.t.Add(time.Second)
	if !b.Ready() {
		t.Error("after a new timeout the back-off did not start again from 1s")
	}
}

// TestErrorsOpenAfterARow: errors that are not timeouts open the breaker
// only after Failures of them in a row; a good call in between resets
// the count.
func TestErrorsOpenAfterARow(t *testing.T) {
	b, _, buf := newTest(Options{Failures: 3})
	call(b, refused)
	call(b, refused)
	call(b, nil)
	call(b, refused)
	call(b, refused)
	if b.State() != Closed || len(lines(buf)) != 0 {
		t.Fatalf("two errors in a row: state %v, log %q; want closed and silent", b.State(), lines(buf))
	}
	call(b, refused)
	if b.State() != Open {
		t.Fatalf("three errors in a row: state %v, want open", b.State())
	}
	if l := lines(buf); len(l) != 1 || !strings.Contains(l[0], `"failures":3`) || !strings.Contains(l[0], `"timeout":false`) {
		t.Fatalf("opening logged %q", l)
	}
}

// TestLateCallsDoNotDecide: calls begun before the breaker opened report
// after it did; neither their failures nor their successes move it, only
// the probe does.
func TestLateCallsDoNotDecide(t *testing.T) {
	b, clk, _ := newTest(Options{})
	early, _ := b.Begin()
	late, _ := b.Begin()
	call(b, stalled)
	early.Done(nil)
	late.Done(stalled)
	if b.State() != Open {
		t.Fatalf("late reports moved the breaker to %v", b.State())
	}
	clk.t = clk.t.Add(DefaultBackoff)
	probe, err := b.Begin()
	if err != nil {
		t.Fatal(err)
	}
	probe.Done(nil)
	if b.State() != Closed {
		t.Fatalf("a good probe left the breaker %v", b.State())
	}
}

// TestStaleTimeoutAfterRecovery: a call that began before an outage and
// times out after a probe closed the breaker again does not reopen it:
// the probe has seen Redis back since.
func TestStaleTimeoutAfterRecovery(t *testing.T) {
	b, clk, buf := newTest(Options{})
	slow, _ := b.Begin()
	call(b, stalled)
	clk.t = clk.t.Add(DefaultBackoff)
	if err := call(b, nil); err != nil || b.State() != Closed {
		t.Fatalf("a good probe: %v, state %v", err, b.State())
	}
	slow.Done(stalled)
	if b.State() != Closed {
		t.Fatalf("a stale timeout moved the breaker to %v", b.State())
	}
	if err := call(b, stalled); err != nil || b.State() != Open {
		t.Fatalf("a new timeout: %v, state %v; want open", err, b.State())
	}
	if n := strings.Count(buf.String(), "circuit open:"); n != 2 {
		t.Errorf("logged %d circuit open lines, want 2 (one per outage)", n)
	}
}

// TestOneProbeAmongMany: when many callers arrive once the back-off is
// over, exactly one of them is the probe.
func TestOneProbeAmongMany(t *testing.T) {
	b, clk, _ := newTest(Options{})
	call(b, stalled)
	clk.t = clk.t.Add(DefaultBackoff)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		probes []Call
	)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := b.Begin(); err == nil {
				mu.Lock()
				probes = append(probes, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(probes) != 1 {
		t.Fatalf("%d calls let through once the back-off ended, want one probe", len(probes))
	}
}

// TestTimeout recognises the timeouts a network client reports.
func TestTimeout(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{fmt.Errorf("redis: %w", context.DeadlineExceeded), true},
		{stalled, true},
		{fakeNetTimeout{}, true},
		{refused, false},
		{errors.New("ERR unknown command"), false},
	} {
		if got := Timeout(c.err); got != c.want {
			t.Errorf("Timeout(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if AsTimeout(nil) != nil {
		t.Error("AsTimeout(nil) is not nil")
	}
	if !errors.Is(stalled, errors.Unwrap(stalled)) {
		t.Error("AsTimeout hides the error it marks")
	}
}

// fakeNetTimeout is what a net.Conn returns when its deadline passes.
type fakeNetTimeout struct{}

func (fakeNetTimeout) Error() string   { return "i/o timeout" }
func (fakeNetTimeout) Timeout() bool   { return true }
func (fakeNetTimeout) Temporary() bool { return true }
