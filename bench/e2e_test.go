package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// tinyServer is a minimal SMTP sink for the end-to-end tests: it greets,
// answers EHLO (with PIPELINING unless told not to), refuses recipients at
// unknown.invalid, reads DATA up to the lone dot, and counts what it saw.
type tinyServer struct {
	ln           net.Listener
	greeting     string
	noPipelining bool

	conns, messages, pipelined atomic.Int64
	open, maxOpen              atomic.Int64
	wg                         sync.WaitGroup
}

func startTiny(t *testing.T, configure func(*tinyServer)) *tinyServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tinyServer{ln: ln, greeting: "220 tiny ESMTP"}
	if configure != nil {
		configure(s)
	}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *tinyServer) addr() string { return s.ln.Addr().String() }

func (s *tinyServer) serve(c net.Conn) {
	defer c.Close()
	s.conns.Add(1)
	n := s.open.Add(1)
	defer s.open.Add(-1)
	for m := s.maxOpen.Load(); n > m && !s.maxOpen.CompareAndSwap(m, n); m = s.maxOpen.Load() {
	}
	say := func(lines ...string) { fmt.Fprint(c, strings.Join(lines, "\r\n")+"\r\n") }
	say(s.greeting)
	if !strings.HasPrefix(s.greeting, "220") {
		return
	}
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			if s.noPipelining {
				say("250-tiny", "250 8BITMIME")
			} else {
				say("250-tiny", "250-PIPELINING", "250 8BITMIME")
			}
		case strings.HasPrefix(cmd, "MAIL FROM:"):
			if br.Buffered() > 0 { // RCPT and DATA came in the same write
				s.pipelined.Add(1)
			}
			say("250 2.1.0 ok")
		case strings.HasPrefix(cmd, "RCPT TO:"):
			if strings.Contains(cmd, "@UNKNOWN.INVALID>") {
				say("550 5.1.1 no such user")
			} else {
				say("250 2.1.5 ok")
			}
		case cmd == "DATA":
			say("354 go ahead")
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			s.messages.Add(1)
			say("250 2.0.0 queued")
		case cmd == "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("500 5.5.2 what?")
		}
	}
}

// bench runs the command line as a user would, with JSON output, and
// returns the exit status, what it printed and the parsed report.
func bench(t *testing.T, args ...string) (int, string, Report) {
	t.Helper()
	js := filepath.Join(t.TempDir(), "out.json")
	full := append([]string{"-progress", "off", "-sources", "4", "-d", "20s", "-json", js}, args...)
	var out, errOut bytes.Buffer
	code := realMain(full, &out, &errOut)
	var rep Report
	if b, err := os.ReadFile(js); err == nil {
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatalf("report JSON: %v", err)
		}
	}
	return code, out.String() + errOut.String(), rep
}

func result(t *testing.T, rep Report, scenario string) Result {
	t.Helper()
	for _, r := range rep.Results {
		if r.Params.Scenario == scenario {
			return r
		}
	}
	t.Fatalf("no %s result in report", scenario)
	return Result{}
}

func noErrors(t *testing.T, r Result) {
	t.Helper()
	if r.errorCount() != 0 {
		t.Errorf("%s: errors %v (%v)", r.Params.Scenario, r.Errors, r.ErrorSamples)
	}
}

func TestEndToEndSessionsKeepaliveAndPipeline(t *testing.T) {
	s := startTiny(t, nil)
	code, out, rep := bench(t, "-warmup", "20", "-scenario", "session,keepalive,pipeline", "-n", "300", "-c", "6",
		"-rcpts", "2", "-per-conn", "40", "-pid", fmt.Sprint(os.Getpid()), "-label", "tiny", s.addr())
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for _, want := range []string{"loopmx-bench: tiny at " + s.addr(), "latency by phase", "errors: none",
		"other work", "\ncolumns: conc = "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	sess := result(t, rep, "session")
	noErrors(t, sess)
	if sess.Sessions != 300 || sess.Messages != 300 || sess.Latency["session"].Count != 300 || sess.Latency["banner"].Count != 300 {
		t.Errorf("session: %d sessions, %d messages, latency %v; want 300 of each", sess.Sessions, sess.Messages, sess.Latency)
	}
	if sess.Server == nil || sess.Server.Procs < 1 || sess.Server.RSSPeakKB <= 0 {
		t.Errorf("session: server stats %+v, want this process's", sess.Server)
	}
	keep := result(t, rep, "keepalive")
	noErrors(t, keep)
	if keep.Messages != 300 || keep.Latency["message"].Count != 300 {
		t.Errorf("keepalive: %d messages, want 300", keep.Messages)
	}
	// 300 messages over connections of 40 messages each: at least 8 sessions.
	if keep.Sessions < 8 || keep.Latency["banner"].Count != uint64(keep.Sessions) {
		t.Errorf("keepalive: %d sessions, %d greetings; want at least 8, one each", keep.Sessions, keep.Latency["banner"].Count)
	}
	pipe := result(t, rep, "pipeline")
	noErrors(t, pipe)
	if pipe.Messages != 300 {
		t.Errorf("pipeline: %d messages, want 300", pipe.Messages)
	}
	// Warm-up (20) + session (300) + keepalive (300) + pipeline (300).
	if got := s.messages.Load(); got != 920 {
		t.Errorf("the server received %d messages, want 920", got)
	}
	if got := s.pipelined.Load(); got < 150 {
		t.Errorf("the server saw %d pipelined groups of 300 pipeline transactions", got)
	}
}

func TestEndToEndFloodIdleAndMix(t *testing.T) {
	s := startTiny(t, nil)
	code, out, _ := bench(t, "-warmup", "0", "-scenario", "flood,idle,mix", "-pid", fmt.Sprint(os.Getpid()),
		"-c", "20", "-n", "200", "-rate", "2000", s.addr())
	if code == 0 {
		t.Fatalf("-rate with flood should be refused; got exit 0:\n%s", out)
	}
	code, out, rep := bench(t, "-warmup", "0", "-scenario", "flood,idle", "-pid", fmt.Sprint(os.Getpid()),
		"-c", "20", "-n", "200", s.addr())
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	flood := result(t, rep, "flood")
	noErrors(t, flood)
	if flood.Sessions != 200 || flood.Latency["banner"].Count != 200 {
		t.Errorf("flood: %d connections, %d greetings timed; want 200", flood.Sessions, flood.Latency["banner"].Count)
	}
	idle := result(t, rep, "idle")
	noErrors(t, idle)
	if idle.Sessions != 200 || s.maxOpen.Load() < 200 {
		t.Errorf("idle: %d held, server saw at most %d open at once; want 200", idle.Sessions, s.maxOpen.Load())
	}
	if idle.Server == nil || idle.Server.RSSHeldKB <= 0 {
		t.Errorf("idle: server stats %+v, want the RSS with all connections held", idle.Server)
	}

	before := s.messages.Load()
	code, out, rep = bench(t, "-warmup", "0", "-scenario", "mix", "-c", "8", "-n", "200", "-rate", "2000",
		"-size", "1k:3,64k:1", "-mix", "reject=10,hangup=10,early=5", s.addr())
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	mix := result(t, rep, "mix")
	noErrors(t, mix)
	want := map[string]int64{"delivered": 150, "rcpt_rejected": 20, "rcpt_accepted": 0, "hung_up": 20, "early_rejected": 0, "early_accepted": 10}
	if fmt.Sprint(mix.Outcomes) != fmt.Sprint(want) {
		t.Errorf("mix outcomes %v, want %v", mix.Outcomes, want)
	}
	if got := s.messages.Load() - before; got != 150 {
		t.Errorf("the server received %d messages from the mix, want 150", got)
	}
	if mix.Latency["session"].Count != 200 || !strings.Contains(out, "mix outcomes: delivered 150") {
		t.Errorf("mix: %d sessions timed, want 200; output:\n%s", mix.Latency["session"].Count, out)
	}
}

func TestEndToEndErrorsAreCountedByKind(t *testing.T) {
	busy := startTiny(t, func(s *tinyServer) { s.greeting = "421 4.3.2 too busy" })
	code, out, rep := bench(t, "-warmup", "0", "-n", "20", "-c", "2", busy.addr())
	if code != 3 {
		t.Errorf("a server that refuses every session: exit %d, want 3", code)
	}
	r := result(t, rep, "session")
	if r.Errors["4xx"] != 20 || r.Sessions != 0 || !strings.Contains(out, "banner: 421 4.3.2 too busy") {
		t.Errorf("errors %v, sessions %d; want 20 of 4xx shown with the reply:\n%s", r.Errors, r.Sessions, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	_, _, rep = bench(t, "-warmup", "0", "-n", "10", "-c", "2", closed)
	if got := result(t, rep, "session").Errors["refused"]; got != 10 {
		t.Errorf("a closed port: %d refused, want 10", got)
	}

	plain := startTiny(t, func(s *tinyServer) { s.noPipelining = true })
	code, out, rep = bench(t, "-warmup", "0", "-scenario", "pipeline", "-n", "10", plain.addr())
	if code != 0 || result(t, rep, "pipeline").Skipped == "" || !strings.Contains(out, "skipped: server does not offer PIPELINING") {
		t.Errorf("no PIPELINING: exit %d, want the scenario shown as skipped:\n%s", code, out)
	}
}

func TestRefusesTargetsOffThisMachine(t *testing.T) {
	for _, addr := range []string{"192.0.2.1:25", "10.0.0.1:2525"} {
		code, out, _ := bench(t, "-warmup", "0", "-n", "1", addr)
		if code != 1 || !strings.Contains(out, "not a loopback address") {
			t.Errorf("%s: exit %d, output %q; want a refusal", addr, code, out)
		}
	}
}
