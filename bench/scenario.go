package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// params are the settings of one scenario run.
type params struct {
	Scenario string        `json:"scenario"`
	Conc     int           `json:"concurrency"`
	N        int64         `json:"n"`
	Duration time.Duration `json:"max_duration_ns"`
	Rate     float64       `json:"rate,omitempty"`
	Size     string        `json:"size"`
	Rcpts    int           `json:"rcpts"`
	PerConn  int           `json:"per_conn,omitempty"`
	Mix      string        `json:"mix,omitempty"`
	Hold     time.Duration `json:"hold_ns,omitempty"`
	StartTLS bool          `json:"starttls,omitempty"` // upgrade with STARTTLS after the first EHLO
	Resume   bool          `json:"resume,omitempty"`   // with StartTLS: one session cache for the run, so handshakes resume
	Timeout  time.Duration `json:"timeout_ns"`
}

// stats are the counters a scenario's workers share.
type stats struct {
	phase    [numPhases]hist
	sessions atomic.Int64
	messages atomic.Int64
	resumed  atomic.Int64 // TLS handshakes that resumed a session
	errs     [numErrKinds]atomic.Int64
	outcomes [numOutcomes]atomic.Int64

	mu      sync.Mutex
	samples [numErrKinds]string // the first error of each kind, to show
}

// fail counts an error under its kind.
func (st *stats) fail(err error) {
	k := classify(err)
	st.errs[k].Add(1)
	st.mu.Lock()
	if st.samples[k] == "" {
		st.samples[k] = err.Error()
	}
	st.mu.Unlock()
}

// errTotal returns how many errors of every kind the run had so far.
func (st *stats) errTotal() int64 {
	var n int64
	for i := range st.errs {
		n += st.errs[i].Load()
	}
	return n
}

// run is one scenario in progress.
type run struct {
	p      params
	sc     *script
	dialer *dialer
	st     *stats
	end    time.Time    // no new work starts after this
	left   atomic.Int64 // operations not yet claimed, when p.N > 0
	next   atomic.Uint64
	halt   atomic.Bool // set when the scenario cannot go on
	held   func()      // idle: called while every connection is open
	tls    *tls.Config // set when p.StartTLS

	mu      sync.Mutex
	skipped string
}

// claim takes one operation (a session or a message) if the count and the
// time bound both allow another.
func (r *run) claim() bool {
	if r.halt.Load() || !time.Now().Before(r.end) {
		return false
	}
	return r.p.N <= 0 || r.left.Add(-1) >= 0
}

// skip stops the scenario and says why, for the report.
func (r *run) skip(why string) {
	r.mu.Lock()
	if r.skipped == "" {
		r.skipped = why
	}
	r.mu.Unlock()
	r.halt.Store(true)
}

// runners maps each scenario to the function that drives it; each returns
// how long the load itself lasted.
var runners = map[string]func(*run) time.Duration{
	"session":   runSessions,
	"mix":       runSessions,
	"keepalive": func(r *run) time.Duration { return runKeepalive(r, false) },
	"pipeline":  func(r *run) time.Duration { return runKeepalive(r, true) },
	"flood":     runFlood,
	"idle":      runIdle,
}

// oneSession runs a session and records it; due is when an open-loop arrival
// was due (the zero time in a closed loop, where the session's own start
// counts).
func (w *worker) oneSession(due time.Time) {
	start := time.Now()
	if due.IsZero() {
		due = start
	}
	i := w.r.next.Add(1) - 1
	kind := kindDeliver
	if w.r.p.Scenario == "mix" {
		kind = w.r.sc.kinds.pick(i)
	}
	out, err := w.session(kind, i)
	if err != nil {
		w.r.st.fail(err)
		w.abandon(err)
		return
	}
	st := w.r.st
	st.phase[phSession].record(time.Since(due))
	st.sessions.Add(1)
	st.outcomes[out].Add(1)
	if out == outDelivered {
		st.messages.Add(1)
	}
}

// runSessions drives session and mix: each of Conc connections runs whole
// sessions back to back (closed loop), or, with a rate, takes arrivals off
// an open-loop schedule.
func runSessions(r *run) time.Duration {
	start := time.Now()
	var pc *pacer
	if r.p.Rate > 0 {
		pc = newPacer(start, r.p.Rate, r.p.N, r.end)
	}
	var wg sync.WaitGroup
	for range r.p.Conc {
		wg.Go(func() {
			w := r.newWorker(4096)
			if pc != nil {
				openLoop(pc, realClock{}, w.oneSession)
				return
			}
			for r.claim() {
				w.oneSession(time.Time{})
			}
		})
	}
	wg.Wait()
	if pc != nil {
		r.st.errs[errUnsent].Add(pc.unsent())
	}
	return time.Since(start)
}

// runKeepalive drives keepalive and pipeline: Conc connections each send
// message after message (PerConn per session, or until the run ends), like
// smtp-source -d; pipelined, each transaction's commands go as one group.
func runKeepalive(r *run, pipelined bool) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	for range r.p.Conc {
		wg.Go(func() {
			w := r.newWorker(4096)
			sent := 0
			for r.claim() {
				if w.c == nil {
					if err := w.start(pipelined); err != nil {
						r.st.fail(err)
						w.abandon(err)
						continue
					}
					if w.c == nil { // skipped: no PIPELINING
						break
					}
					sent = 0
				}
				if err := w.c.SetDeadline(time.Now().Add(r.p.Timeout)); err != nil {
					r.st.fail(err)
					w.abandon(err)
					continue
				}
				body := r.sc.bodies[r.sc.sizes.pick(r.next.Add(1)-1)]
				if err := w.message(pipelined, body); err != nil {
					r.st.fail(err)
					w.abandon(err)
					continue
				}
				r.st.messages.Add(1)
				if sent++; r.p.PerConn > 0 && sent >= r.p.PerConn {
					w.finish()
				}
			}
			if w.c != nil {
				w.finish()
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// start opens a session for keepalive or pipeline and says EHLO.
func (w *worker) start(pipelined bool) error {
	if err := w.open(); err != nil {
		return err
	}
	if err := w.hello(); err != nil {
		return err
	}
	if pipelined && !w.pipelining {
		w.r.skip("server does not offer PIPELINING")
		_ = w.quit() // leaving anyway; the report names the reason
	}
	return nil
}

// finish QUITs a keepalive session and counts it.
func (w *worker) finish() {
	if err := w.quit(); err != nil {
		w.r.st.fail(err)
		return
	}
	w.r.st.sessions.Add(1)
}

// runFlood opens Conc connections at once, as many times as it takes to make
// N: each waits for the greeting (the banner latency under a flood), then
// QUITs. The next burst starts when the last one is done.
func runFlood(r *run) time.Duration {
	start := time.Now()
	for !r.halt.Load() && time.Now().Before(r.end) {
		burst := r.p.Conc
		if r.p.N > 0 {
			burst = int(min(int64(burst), r.left.Load()))
			r.left.Add(-int64(burst))
		}
		if burst <= 0 {
			break
		}
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() {
				w := r.newWorker(512)
				<-gate
				t0 := time.Now()
				err := w.open()
				if err == nil {
					err = w.quit()
				}
				if err != nil {
					r.st.fail(err)
					w.abandon(err)
					return
				}
				r.st.phase[phSession].record(time.Since(t0))
				r.st.sessions.Add(1)
			})
		}
		close(gate)
		wg.Wait()
	}
	return time.Since(start)
}

// runIdle opens N connections, Conc at a time, reads each greeting and says
// nothing more (with StartTLS: EHLO, STARTTLS, EHLO); with all of them open it lets the server settle, calls
// r.held (which reads the server's memory), holds them for Hold, then QUITs
// them all. One goroutine per held connection would make the client the
// heavier side, so held connections are only a list.
func runIdle(r *run) time.Duration {
	start := time.Now()
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	for range r.p.Conc {
		wg.Go(func() {
			w := r.newWorker(512)
			for r.claim() {
				err := w.open()
				if err == nil && r.p.StartTLS {
					err = w.hello()
				}
				if err != nil {
					r.st.fail(err)
					w.abandon(err)
					continue
				}
				_ = w.c.SetDeadline(time.Time{}) // idle on purpose
				mu.Lock()
				conns = append(conns, w.c)
				mu.Unlock()
				w.c = nil
				r.st.sessions.Add(1)
			}
		})
	}
	wg.Wait()
	opened := time.Since(start)
	time.Sleep(idleSettle)
	if r.held != nil {
		r.held()
	}
	time.Sleep(r.p.Hold)
	for _, c := range conns {
		_, _ = c.Write(r.sc.quit) // closing anyway
		c.Close()
	}
	return opened
}

// idleSettle is how long the idle scenario waits, all connections open,
// before it reads the server's memory, so that work the server does after
// its greeting has landed.
const idleSettle = 300 * time.Millisecond

// validate checks a scenario's parameters before any load is sent.
func (p params) validate() error {
	if _, ok := runners[p.Scenario]; !ok {
		return fmt.Errorf("unknown scenario %q", p.Scenario)
	}
	switch {
	case p.Conc < 1:
		return fmt.Errorf("%s: -c %d: need at least 1", p.Scenario, p.Conc)
	case p.N < 0:
		return fmt.Errorf("%s: -n %d: negative", p.Scenario, p.N)
	case p.Duration <= 0:
		return fmt.Errorf("%s: -d %v: every run needs a time bound", p.Scenario, p.Duration)
	case p.Timeout <= 0:
		return fmt.Errorf("%s: -timeout %v: must be positive", p.Scenario, p.Timeout)
	case p.Rate < 0:
		return fmt.Errorf("%s: -rate %v: negative", p.Scenario, p.Rate)
	case p.Rate > 0 && p.Scenario != "session" && p.Scenario != "mix":
		return fmt.Errorf("%s: -rate applies to session and mix only", p.Scenario)
	case p.Scenario == "idle" && p.N == 0:
		return fmt.Errorf("idle: -n 0: say how many connections to hold")
	}
	return nil
}
