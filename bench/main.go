// Command loopmx-bench is a black-box SMTP load generator for loopmx and
// its peers. It speaks SMTP over TCP to a server on this machine, drives one
// or more scenarios (whole sessions, kept sessions, PIPELINING, a connection
// flood, idle connections, a realistic inbound mix) in a closed or an open
// loop, and reports rates, latency per phase from a log-linear histogram,
// errors by reply class and kind, its own CPU and, given the server's pid,
// the server's CPU per session and per message and its memory per
// connection. docs/benchmarks.md explains how to read the table.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// main runs the command with the process's arguments and exits with its status.
func main() { os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr)) }

// standard is the set of scenarios `make bench` runs, in order. Idle comes
// first, right after the warm-up: a server whose heap earlier scenarios grew
// (a flood of 1,000 connections, say) holds idle connections in memory it
// already had, and its RSS per connection would read near zero.
var standard = []string{"idle", "session", "keepalive", "pipeline", "flood", "mix"}

// scenarioDefault holds what a scenario uses for a flag left unset.
type scenarioDefault struct {
	conc int
	n    int64
	rate float64
	size string
}

// defaults per scenario, sized so that the standard set takes well under a
// minute on a 2-core machine against a server that does 3,000 sessions/s.
var defaults = map[string]scenarioDefault{
	"session":   {conc: 50, n: 20000, size: "1k"},
	"keepalive": {conc: 50, n: 50000, size: "1k"},
	"pipeline":  {conc: 50, n: 50000, size: "1k"},
	"flood":     {conc: 1000, n: 5000, size: "1k"},
	"idle":      {conc: 100, n: 5000, size: "1k"},
	"mix":       {conc: 50, n: 5000, rate: 500, size: "1k:50,4k:25,16k:15,64k:8,256k:2"},
}

// procDir is where the server's processes are read from.
const procDir = "/proc"

// settle is how long to wait after a scenario before reading the server's
// CPU, so that the closing of the last connections is counted.
const settle = 100 * time.Millisecond

const usage = `usage: loopmx-bench [flags] HOST:PORT
       loopmx-bench -compare [-base LABEL] RESULT.json...
       loopmx-bench -free-port

Sends SMTP load to a server on this machine (loopback only) and reports
rates, latency per phase, errors, and the server's and its own CPU.

Scenarios (-scenario, comma-separated, or "standard" for all, in this order):
  idle       open -n connections (-c at a time), hold them, read server RSS
             (with -starttls: EHLO, STARTTLS, EHLO first, so TLS sessions)
  session    connect, banner, EHLO, MAIL, RCPT x rcpts, DATA, QUIT; -n sessions
  keepalive  many messages per session, one command at a time; -n messages
  pipeline   like keepalive, MAIL+RCPT+DATA sent as one PIPELINING group
  flood      -c connections opened at once, banner, QUIT; -n connections
  mix        inbound MX mix (-mix shares: rejected RCPT, hang-ups, early
             talkers; the rest deliver) with sizes from -size; open loop
Flags left unset take each scenario's default (see docs/benchmarks.md);
flags that are set apply to every scenario listed.

The report. A header names the server, its pid and process count, and the
machine (CPUs, kernel, Go, load average, and how many CPUs' worth of other
work ran in the -load-check second before the run); a "warning:" line
follows when that was enough to make the figures unreliable. Then the
summary table, one row per scenario:
  scenario   the scenario
  conc       connections at once (-c), or the arrival rate (500/s) of an
             open loop
  sessions   sessions completed; for flood and idle, connections greeted
  msgs       messages the server answered with 2xx after the final dot
  errs       everything that went wrong; the errors table breaks it down
  sess/s     sessions completed per second while the load lasted (idle: the
             time to open them all); "-" for keepalive and pipeline, where
             a kept session is not a rate
  msg/s      messages per second, likewise
  latency    the phase the next three columns describe: session (connect
             to the reply to QUIT), message (MAIL to the reply after the
             dot), banner (connect to the greeting)
  p50 p99 p99.9  quantiles of that phase (log-linear histogram, within 0.8%)
  srv/sess   the server's CPU (user + system, summed over -pid and all its
             descendants, from /proc) over the scenario, per session; the
             figure to compare servers by, since it does not depend on how
             fast this client was or where the scheduler ran the two
  srv/msg    the same per message
  srv RSS    the server's largest resident memory seen (sampled every 0.5 s)
  RSS/conn   idle only: (RSS with every connection open - RSS before) /
             connections held
  cli/sess   this program's own CPU per session: on a small machine client
             and server share the cores, and this is the client's share
  cli/msg    the same per message
  A "-" is a figure not measured: no -pid, or a unit the scenario has not.
With -metrics URL, "server banner" sets, per scenario, the server's own
banner percentiles (loopmx_banner_seconds over the scenario) beside the
client's banner (which includes the TCP handshake and any SYN retry) and
greet (handshake done to greeting: the server's figure plus the time in
the accept queue), the width of the server's bucket at the client's greet
p99, and the longest listen queue seen (sampled every 100 ms) of its limit.
Below it: "latency by phase", count and p50/p90/p99/p99.9/max of each
phase (connect: the TCP handshake; banner; ehlo; starttls: STARTTLS to the
end of the TLS handshake; eod: the final dot to the server's reply;
message; session); "errors", per scenario, replies of the wrong class
(4xx, 5xx) and failures by kind (refused, reset, timeout, closed by the
server mid-dialog, other, and unsent: open-loop arrivals no connection was
free to start), with the first one quoted; and for mix, the outcomes
(delivered, recipient rejected or accepted, hung up, early talker rejected
or served), which are the server's choices, not errors.

-compare prints, per figure, the median over the runs of each -label with
the spread of the runs (lowest-highest) and the ratio of -base to every
other: below 1 on CPU, latency or memory, the base uses less; above 1 on a
rate, it is faster. When the runs carry -round, the ratio is the median of
the ratios within each round (a machine that changes speed between rounds
moves both sides of a round), with their spread. With -max-spread F it
exits 3 when the runs of a headline figure (server CPU per session, per
kept-session message) spread by more than F of their median: bench-compare
then runs more rounds.

Flags:
`

// options are the parsed command line.
type options struct {
	scenarios []string
	set       map[string]bool
	conc      int
	n         int64
	dur       time.Duration
	rate      float64
	size      string
	rcpts     int
	perConn   int
	mix       string
	hold      time.Duration
	timeout   time.Duration
	sources   int
	pid       int
	label     string
	round     int
	jsonPath  string
	warmup    int
	wait      time.Duration
	loadCheck time.Duration
	scale     float64
	progress  string
	helo      string
	from      string
	to        string
	rejectTo  string
	starttls  bool
	metrics   string
	resume    bool
}

// realMain is the program with its arguments and outputs passed in, for
// tests; it returns the exit status.
func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loopmx-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var o options
	scen := fs.String("scenario", "session", "scenarios to run, comma-separated, or standard")
	fs.IntVar(&o.conc, "c", 0, "concurrency: connections at once (flood: per burst; idle: opening at a time)")
	fs.Int64Var(&o.n, "n", 0, "total sessions (messages for keepalive/pipeline, connections for flood/idle); 0 = until -d")
	fs.DurationVar(&o.dur, "d", 60*time.Second, "time bound of each scenario")
	fs.Float64Var(&o.rate, "rate", 0, "open loop: session arrivals per second (session, mix); 0 = closed loop")
	fs.StringVar(&o.size, "size", "", `message payload bytes, or a distribution "1k:60,16k:30,256k:10"`)
	fs.IntVar(&o.rcpts, "rcpts", 1, "recipients per message")
	fs.IntVar(&o.perConn, "per-conn", 0, "keepalive/pipeline: messages per session; 0 = until the run ends")
	fs.StringVar(&o.mix, "mix", "reject=10,hangup=10,early=5", "mix: percent of sessions per kind; the rest deliver")
	fs.DurationVar(&o.hold, "hold", 0, "idle: how long to hold the connections once all are open")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "bound on each session (each message when kept)")
	fs.IntVar(&o.sources, "sources", 16, "source addresses 127.0.0.2, 127.0.0.3, ... to spread connections over; 0 = kernel's choice")
	fs.IntVar(&o.pid, "pid", 0, "server pid: report its CPU (with all descendants) and RSS")
	fs.StringVar(&o.label, "label", "server", "name of the server in the report")
	fs.IntVar(&o.round, "round", 0, "the round this run belongs to (bench-compare): -compare divides runs of the same round")
	fs.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	fs.IntVar(&o.warmup, "warmup", 200, "unmeasured sessions before the first scenario")
	fs.DurationVar(&o.wait, "wait", 0, "wait up to this long for the server's greeting before starting")
	fs.DurationVar(&o.loadCheck, "load-check", time.Second, "before the run, measure for this long how busy other programs keep the machine, and warn when it is too busy; 0 = skip")
	fs.Float64Var(&o.scale, "scale", 1, "multiply each scenario's default -n by this")
	fs.StringVar(&o.progress, "progress", "auto", "progress line on stderr: auto (when a terminal), on, off")
	fs.StringVar(&o.helo, "helo", "loopmx-bench.test", "EHLO name")
	fs.StringVar(&o.from, "from", "bench@loopmx.test", "MAIL FROM address")
	fs.StringVar(&o.to, "to", "bench@example.com", "RCPT TO address (with -rcpts > 1, local+N@domain)")
	fs.StringVar(&o.rejectTo, "reject-to", "nobody@unknown.invalid", "mix: the recipient a real MX refuses")
	fs.StringVar(&o.metrics, "metrics", "", "the server's Prometheus endpoint (http://127.0.0.1:9125/metrics): print its banner percentiles for each scenario beside the client's, and its listen queue")
	fs.BoolVar(&o.resume, "resume", false, "with -starttls: one TLS session cache for each scenario, so every handshake after the first resumes a session (a sender that comes back) instead of a full one")
	fs.BoolVar(&o.starttls, "starttls", false, "after EHLO, upgrade with STARTTLS (a full handshake each time) and say EHLO again; idle then holds TLS sessions; flood ignores it")
	compare := fs.Bool("compare", false, "compare mode: read RESULT.json files and print medians and ratios to -base")
	base := fs.String("base", "loopmx", "compare mode: the label every other is divided into")
	maxSpread := fs.Float64("max-spread", 0, "compare mode: exit 3 when a headline figure's runs (CPU per session and per kept-session message) spread by more than this fraction of its median, e.g. 0.1")
	freePort := fs.Bool("free-port", false, "print a free TCP port on 127.0.0.1 and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// Asked for: the help goes to stdout, so it can be paged.
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, usage)
			fs.PrintDefaults()
			return 0
		}
		return 2
	}
	switch {
	case *freePort:
		return printFreePort(stdout, stderr)
	case *compare:
		wide, err := compareSpread(fs.Args(), *base, *maxSpread, stdout)
		if err != nil {
			fmt.Fprintln(stderr, "loopmx-bench:", err)
			return 1
		}
		if wide {
			return 3
		}
		return 0
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	o.scenarios = strings.Split(*scen, ",")
	if *scen == "standard" {
		o.scenarios = standard
	}
	if err := run1(fs.Arg(0), o, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "loopmx-bench:", err)
		if errors.Is(err, errNoProgress) {
			return 3
		}
		return 1
	}
	return 0
}

// errNoProgress marks a run that could not do its job: no session
// completed, or the server went away.
var errNoProgress = errors.New("no progress")

// paramsFor resolves one scenario's parameters: set flags win, unset ones
// take the scenario's default.
func (o options) paramsFor(name string) (params, error) {
	def, ok := defaults[name]
	if !ok {
		return params{}, fmt.Errorf("-scenario: unknown scenario %q (idle, session, keepalive, pipeline, flood, mix, standard)", name)
	}
	p := params{Scenario: name, Conc: def.conc, N: def.n, Duration: o.dur, Rate: def.rate, Size: def.size,
		Rcpts: o.rcpts, PerConn: o.perConn, Hold: o.hold, Timeout: o.timeout}
	if o.scale > 0 && o.scale != 1 {
		p.N = max(int64(float64(p.N)*o.scale), 1)
	}
	if o.set["c"] {
		p.Conc = o.conc
	}
	if o.set["n"] {
		p.N = o.n
	}
	if o.set["rate"] {
		p.Rate = o.rate
	}
	if o.set["size"] {
		p.Size = o.size
	}
	if name == "mix" {
		p.Mix = o.mix
	}
	p.StartTLS = o.starttls && name != "flood"
	p.Resume = p.StartTLS && o.resume
	return p, p.validate()
}

// run1 runs the listed scenarios against addr and prints the report.
func run1(addr string, o options, stdout, stderr io.Writer) error {
	target, err := checkLoopback(addr)
	if err != nil {
		return err
	}
	var ps []params
	var scripts []*script
	for _, name := range o.scenarios {
		p, err := o.paramsFor(strings.TrimSpace(name))
		if err != nil {
			return err
		}
		sc, err := newScript(scriptOptions{helo: o.helo, from: o.from, to: o.to, rejectTo: o.rejectTo,
			rcpts: p.Rcpts, size: p.Size, mix: p.Mix})
		if err != nil {
			return fmt.Errorf("%s: %w", p.Scenario, err)
		}
		ps, scripts = append(ps, p), append(scripts, sc)
	}
	if limit, err := raiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "loopmx-bench: warning:", err)
	} else {
		for _, p := range ps {
			if need := uint64(p.Conc); p.Scenario == "idle" {
				need = uint64(p.N)
				if need+64 > limit {
					return fmt.Errorf("idle: -n %d needs more open files than the limit %d", p.N, limit)
				}
			} else if need+64 > limit {
				return fmt.Errorf("%s: -c %d needs more open files than the limit %d", p.Scenario, p.Conc, limit)
			}
		}
	}
	e := &env{dialer: newDialer(target, o.sources, o.timeout), pid: o.pid, stderr: stderr, metrics: o.metrics}
	if o.progress == "on" || (o.progress == "auto" && isTerminal(os.Stderr)) {
		e.progress = stderr
	}
	if o.wait > 0 {
		if err := waitReady(e.dialer, o.wait); err != nil {
			return fmt.Errorf("%w: %s: %w", errNoProgress, addr, err)
		}
	}
	if o.pid > 0 {
		if _, err := sampleTree(procDir, o.pid); err != nil {
			return fmt.Errorf("-pid: %w", err)
		}
	}
	busy := -1.0
	if o.loadCheck > 0 {
		if b, err := otherBusy(procDir, o.pid, o.loadCheck); err != nil {
			fmt.Fprintln(stderr, "loopmx-bench: warning: -load-check:", err)
		} else {
			busy = b
		}
	}
	if o.warmup > 0 {
		if err := warmUp(e, o, scripts[0]); err != nil {
			return err
		}
	}
	rep := Report{Label: o.label, Round: o.round, Target: target.String(), Started: time.Now().UTC(), Machine: machineInfo()}
	rep.Machine.OtherBusy = busy
	rep.Machine.Warning = loadWarning(rep.Machine)
	var failed error
	for i, p := range ps {
		res := e.execute(p, scripts[i])
		rep.Results = append(rep.Results, res)
		if res.Skipped == "" && res.Sessions == 0 && res.Messages == 0 && failed == nil {
			failed = fmt.Errorf("%w: %s: nothing completed", errNoProgress, p.Scenario)
		}
		if e.gone != nil {
			failed = fmt.Errorf("%w: %w", errNoProgress, e.gone)
			break
		}
	}
	printReport(stdout, rep)
	if o.jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return failed
}

// env is what every scenario of one invocation shares.
type env struct {
	dialer   *dialer
	pid      int
	progress io.Writer // nil: no progress line
	stderr   io.Writer
	gone     error  // set when the server's process disappeared
	metrics  string // the server's /metrics URL, or ""
}

// execute runs one scenario and measures it.
func (e *env) execute(p params, sc *script) Result {
	st := &stats{}
	r := &run{p: p, sc: sc, dialer: e.dialer, st: st}
	if p.StartTLS {
		// The certificate is not checked: the target is this machine, test
		// servers use self-signed certificates, and checking would add
		// client work to every handshake. Without -resume there is no
		// session cache: every handshake is a full one, the cost a new
		// sender causes.
		r.tls = &tls.Config{InsecureSkipVerify: true}
		if p.Resume {
			// -resume: the senders come back; tickets make their
			// handshakes abbreviated ones.
			r.tls.ClientSessionCache = tls.NewLRUClientSessionCache(64)
		}
	}
	r.left.Store(p.N)
	var srv *serverDelta
	if e.pid > 0 {
		before, err := sampleTree(procDir, e.pid)
		if err != nil {
			e.gone = err
		} else {
			srv = &serverDelta{pid: e.pid, before: before}
		}
	}
	if srv != nil && p.Scenario == "idle" {
		r.held = func() {
			if t, err := sampleTree(procDir, e.pid); err == nil {
				srv.held, srv.heldConns = &t, st.sessions.Load()
			}
		}
	}
	var mw *metricsWatch
	if e.metrics != "" {
		var err error
		if mw, err = watchMetrics(e.metrics); err != nil {
			fmt.Fprintln(e.stderr, "loopmx-bench: warning:", err)
		}
	}
	cpu0 := selfCPU()
	start := time.Now()
	r.end = start.Add(p.Duration)
	done := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { e.monitor(r, srv, start, done) })
	active := runners[p.Scenario](r)
	close(done)
	bg.Wait()
	client := selfCPU() - cpu0
	if srv != nil {
		time.Sleep(settle)
		after, err := sampleTree(procDir, e.pid)
		if err != nil {
			e.gone = err
			srv = nil
		} else {
			srv.after = after
		}
	}
	res := buildResult(p, st, active, client, srv)
	res.Skipped = r.skipped
	if mw != nil {
		sb, err := mw.finish(&st.phase[phGreet])
		if err != nil {
			fmt.Fprintln(e.stderr, "loopmx-bench: warning:", err)
		}
		res.ServerBanner = sb
	}
	return res
}

// monitor samples the server's memory for its peak and, when wanted, keeps a
// progress line on the terminal, until done is closed.
func (e *env) monitor(r *run, srv *serverDelta, start time.Time, done chan struct{}) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			if e.progress != nil {
				fmt.Fprint(e.progress, "\r\033[K")
			}
			return
		case <-tick.C:
		}
		if srv != nil {
			if t, err := sampleTree(procDir, srv.pid); err == nil {
				srv.peakRSS = max(srv.peakRSS, t.RSS)
			}
		}
		if e.progress != nil {
			el := time.Since(start).Seconds()
			s, m := r.st.sessions.Load(), r.st.messages.Load()
			fmt.Fprintf(e.progress, "\r\033[K%s %5.1fs  sessions %d (%.0f/s)  messages %d (%.0f/s)  errors %d",
				r.p.Scenario, el, s, float64(s)/el, m, float64(m)/el, r.st.errTotal())
		}
	}
}

// warmUp runs unmeasured sessions so that the server has grown its pools and
// heap before the first figures are taken.
func warmUp(e *env, o options, sc *script) error {
	p := params{Scenario: "session", Conc: min(10, o.warmup), N: int64(o.warmup), Duration: 30 * time.Second, Timeout: o.timeout, StartTLS: o.starttls, Resume: o.starttls && o.resume}
	quiet := *e
	quiet.pid, quiet.progress, quiet.metrics = 0, nil, ""
	res := quiet.execute(p, sc)
	if res.Sessions == 0 {
		first := ""
		for _, s := range res.ErrorSamples {
			first = s
		}
		return fmt.Errorf("%w: warm-up: no session completed (%s)", errNoProgress, first)
	}
	return nil
}

// waitReady dials until the server greets, or the time is up.
func waitReady(d *dialer, within time.Duration) error {
	end := time.Now().Add(within)
	var last error
	for time.Now().Before(end) {
		c, err := d.dial()
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second)) // a failed read says the same
			line, rerr := bufio.NewReader(c).ReadString('\n')
			_, _ = c.Write([]byte("QUIT\r\n")) // only probing
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "220") {
				return nil
			}
			err = fmt.Errorf("greeting %q: %v", strings.TrimSpace(line), rerr)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no greeting within %v: %w", within, last)
}

// printFreePort prints a TCP port on 127.0.0.1 that was free a moment ago,
// for scripts that start a server.
func printFreePort(stdout, stderr io.Writer) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(stderr, "loopmx-bench:", err)
		return 1
	}
	defer l.Close()
	fmt.Fprintln(stdout, l.Addr().(*net.TCPAddr).Port)
	return 0
}

// isTerminal reports whether f is a character device, as a terminal is.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
