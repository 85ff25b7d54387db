package main

import (
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told to; with one worker the
// open loop then runs the same way every time.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) sleepUntil(t time.Time) {
	if t.After(c.t) {
		c.t = t
	}
}

// TestOpenLoopCountsTheStall runs 100 arrivals at 1,000/s through one
// connection to a server that stalls 50 ms on the first and then answers in
// 0.1 ms. Measured from when each session was due, the 55 arrivals that
// queued behind the stall show it; measured from when each started, as a
// closed loop would, only one session looks slow.
func TestOpenLoopCountsTheStall(t *testing.T) {
	t0 := time.Unix(1000, 0)
	clk := &fakeClock{t: t0}
	p := newPacer(t0, 1000, 100, t0.Add(time.Hour))
	var fromDue, fromStart hist
	served := 0
	openLoop(p, clk, func(due time.Time) {
		start := clk.now()
		if served == 0 {
			clk.t = clk.t.Add(50 * time.Millisecond)
		} else {
			clk.t = clk.t.Add(100 * time.Microsecond)
		}
		served++
		fromDue.record(clk.now().Sub(due))
		fromStart.record(clk.now().Sub(start))
	})
	if served != 100 {
		t.Fatalf("served %d arrivals, want 100", served)
	}
	// Arrival k (k <= 55) is done at 50ms + 0.1ms*k and was due at k ms, so
	// its latency is 50ms - 0.9ms*k; from arrival 56 on the server keeps up.
	near := func(name string, got, want time.Duration) {
		t.Helper()
		if d := got - want; d < -want/100 || d > want/100 {
			t.Errorf("%s = %v, want %v within 1%%", name, got, want)
		}
	}
	near("p50 from due", fromDue.quantile(0.50), 5*time.Millisecond)  // rank 50: arrival 50
	near("p90 from due", fromDue.quantile(0.90), 41*time.Millisecond) // rank 90: arrival 10
	near("max from due", fromDue.quantile(1), 50*time.Millisecond)    // arrival 0
	near("p50 from start", fromStart.quantile(0.50), 100*time.Microsecond)
	near("p90 from start", fromStart.quantile(0.90), 100*time.Microsecond)
	// The schedule ran to its end: the last arrival was due at 99 ms and the
	// clock only waited for arrivals still ahead of it.
	if want := t0.Add(99*time.Millisecond + 100*time.Microsecond); !clk.t.Equal(want) {
		t.Errorf("clock ended at %v, want %v", clk.t.Sub(t0), want.Sub(t0))
	}
}

func TestPacerSchedule(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := newPacer(t0, 200, 0, t0.Add(time.Second)) // n = 0: as many as fit in a second
	if p.n != 200 {
		t.Fatalf("200/s for one second schedules %d arrivals, want 200", p.n)
	}
	if got := p.due(3).Sub(t0); got != 15*time.Millisecond {
		t.Errorf("arrival 3 due at %v, want 15ms", got)
	}
	for range 150 {
		if _, ok := p.take(); !ok {
			t.Fatal("take refused an arrival inside the schedule")
		}
	}
	if got := p.unsent(); got != 50 {
		t.Errorf("150 of 200 taken: unsent = %d, want 50", got)
	}
	for range 50 {
		p.take()
	}
	if _, ok := p.take(); ok {
		t.Error("take handed out an arrival past the end of the schedule")
	}
	if got := p.unsent(); got != 0 {
		t.Errorf("all taken: unsent = %d, want 0", got)
	}

	// A count bound shorter than the time bound ends the schedule first.
	q := newPacer(t0, 1000, 10, t0.Add(time.Second))
	n := 0
	for {
		if _, ok := q.take(); !ok {
			break
		}
		n++
	}
	if n != 10 || q.unsent() != 0 {
		t.Errorf("-n 10: took %d, unsent %d; want 10 and 0", n, q.unsent())
	}
}

// TestOpenLoopStopsAtTheTimeBound checks that a server too slow for the
// rate cannot stretch a run past -d, and that the arrivals it made the client
// skip are counted rather than dropped.
func TestOpenLoopStopsAtTheTimeBound(t *testing.T) {
	t0 := time.Unix(1000, 0)
	clk := &fakeClock{t: t0}
	p := newPacer(t0, 1000, 0, t0.Add(100*time.Millisecond)) // 100 due within the bound
	served := 0
	openLoop(p, clk, func(time.Time) {
		clk.t = clk.t.Add(10 * time.Millisecond) // the server manages 100/s
		served++
	})
	if served != 10 {
		t.Errorf("served %d in 100ms at 10ms each, want 10", served)
	}
	if got := p.unsent(); got != 90 {
		t.Errorf("unsent = %d, want the 90 arrivals the server had no time for", got)
	}
}
