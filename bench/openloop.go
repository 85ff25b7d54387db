package main

import (
	"sync/atomic"
	"time"
)

// clock is the time source of open-loop pacing, so that tests can drive it.
type clock interface {
	now() time.Time
	sleepUntil(t time.Time)
}

// realClock is the wall clock.
type realClock struct{}

// now returns the current time.
func (realClock) now() time.Time { return time.Now() }

// sleepUntil sleeps until t, or returns at once when t has passed.
func (realClock) sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// pacer hands out the arrivals of an open-loop schedule: arrival i is due at
// start + i*interval whether or not the server kept up with the ones before,
// the way independent senders arrive at an MX.
type pacer struct {
	start    time.Time
	interval time.Duration
	n        int64     // arrivals in the schedule
	end      time.Time // arrivals due at or after end are not started
	next     atomic.Int64
	started  atomic.Int64
}

// newPacer schedules n arrivals at rate per second from start; n = 0 means as
// many as fall before end.
func newPacer(start time.Time, rate float64, n int64, end time.Time) *pacer {
	p := &pacer{start: start, interval: time.Duration(float64(time.Second) / rate), n: n, end: end}
	p.interval = max(p.interval, 1)
	if p.n <= 0 {
		p.n = p.dueBefore(end)
	}
	return p
}

// due returns when arrival i is due.
func (p *pacer) due(i int64) time.Time { return p.start.Add(time.Duration(i) * p.interval) }

// dueBefore counts the arrivals of an unbounded schedule due before t.
func (p *pacer) dueBefore(t time.Time) int64 {
	d := t.Sub(p.start)
	if d <= 0 {
		return 0
	}
	return int64((d + p.interval - 1) / p.interval)
}

// take claims the next arrival and returns when it was due; ok is false when
// the schedule is used up.
func (p *pacer) take() (due time.Time, ok bool) {
	i := p.next.Add(1) - 1
	if i >= p.n {
		return time.Time{}, false
	}
	due = p.due(i)
	if !due.Before(p.end) {
		return time.Time{}, false
	}
	p.started.Add(1)
	return due, true
}

// unsent returns how many arrivals fell due before the end but were never
// started because every connection was busy: load the server was spared
// and the report must not hide.
func (p *pacer) unsent() int64 {
	return max(min(p.n, p.dueBefore(p.end))-p.started.Load(), 0)
}

// openLoop runs one connection's share of an open-loop schedule: take the
// next arrival, wait for its time if that is still ahead, run it. When the
// server falls behind, arrivals are taken late and do measures from when they
// were due, so the wait counts as latency instead of vanishing from the
// record (no coordinated omission).
func openLoop(p *pacer, clk clock, do func(due time.Time)) {
	for clk.now().Before(p.end) {
		due, ok := p.take()
		if !ok {
			return
		}
		clk.sleepUntil(due)
		do(due)
	}
}
