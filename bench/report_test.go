package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestRatesAndCostsPerSessionAndMessage(t *testing.T) {
	st := &stats{}
	st.sessions.Store(2000)
	st.messages.Store(1500)
	st.errs[errReply4].Store(3)
	srv := &serverDelta{
		pid:    42,
		before: procTree{CPU: 1 * time.Second, RSS: 10 << 20, Procs: 2},
		after:  procTree{CPU: 1500 * time.Millisecond, RSS: 11 << 20, Procs: 2},
	}
	p := params{Scenario: "mix"}
	r := buildResult(p, st, 2*time.Second, 300*time.Millisecond, srv)
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"sessions/s", r.SessionsPerSec, 1000},
		{"messages/s", r.MessagesPerSec, 750},
		{"server CPU/session µs", r.Server.CPUPerSessionUS, 250},
		{"server CPU/message µs", r.Server.CPUPerMessageUS, 500.0 * 1000 / 1500},
		{"client CPU/session µs", r.Client.CPUPerSessionUS, 150},
		{"client CPU/message µs", r.Client.CPUPerMessageUS, 200},
		{"server RSS peak KB", r.Server.RSSPeakKB, 11 * 1024},
	} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if r.errorCount() != 3 || r.Errors["4xx"] != 3 {
		t.Errorf("errors = %v, want 3 of 4xx", r.Errors)
	}

	// Kept sessions are counted per message only: CPU per session of 50
	// long sessions would mean nothing.
	st.sessions.Store(50)
	k := buildResult(params{Scenario: "keepalive"}, st, time.Second, time.Second, srv)
	if k.Server.CPUPerSessionUS != 0 || k.Client.CPUPerSessionUS != 0 || k.Server.CPUPerMessageUS == 0 {
		t.Errorf("keepalive: server %+v client %+v; want per message only", k.Server, k.Client)
	}
}

func TestRSSPerIdleConnection(t *testing.T) {
	st := &stats{}
	st.sessions.Store(1000)
	srv := &serverDelta{
		before:    procTree{RSS: 10 << 20},
		held:      &procTree{RSS: 10<<20 + 1000*11*1024}, // 11 KB more per connection
		heldConns: 1000,
		after:     procTree{RSS: 12 << 20},
	}
	r := buildResult(params{Scenario: "idle"}, st, time.Second, 0, srv)
	if !near(r.Server.RSSPerConnKB, 11) {
		t.Errorf("RSS per connection = %v KB, want 11", r.Server.RSSPerConnKB)
	}
	if !near(r.Server.RSSPeakKB, r.Server.RSSHeldKB) {
		t.Errorf("peak RSS %v KB is not the held one %v KB", r.Server.RSSPeakKB, r.Server.RSSHeldKB)
	}
}

func TestFormats(t *testing.T) {
	for _, c := range []struct {
		us   float64
		want string
	}{{0, "-"}, {4.25, "4.2µs"}, {812.4, "812µs"}, {1234, "1.23ms"}, {45678, "45.7ms"}, {456789, "457ms"}, {2.5e6, "2.50s"}} {
		if got := fmtUS(c.us); got != c.want {
			t.Errorf("fmtUS(%v) = %q, want %q", c.us, got, c.want)
		}
	}
}

func TestMedianAndRatio(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{0, 5, 0}, 5}, {nil, 0}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := ratio(150, 300); got != "0.50x" {
		t.Errorf("ratio(150, 300) = %q", got)
	}
	if got := ratio(150, 0); got != "-" {
		t.Errorf("ratio against a missing figure = %q, want -", got)
	}
}

// TestCompareTakesMediansOverRuns writes three runs of two servers, one
// with an outlier, and reads the comparison table.
func TestCompareTakesMediansOverRuns(t *testing.T) {
	dir := t.TempDir()
	var files []string
	write := func(label string, run int, cpuUS, rssKB float64) {
		rep := Report{Label: label, Results: []Result{
			{Params: params{Scenario: "session"}, Server: &ServerStats{CPUPerSessionUS: cpuUS}, SessionsPerSec: 1000},
			{Params: params{Scenario: "idle"}, Server: &ServerStats{RSSPerConnKB: rssKB}},
			{Params: params{Scenario: "pipeline"}, Skipped: "server does not offer PIPELINING"},
		}}
		b, _ := json.Marshal(rep)
		f := filepath.Join(dir, label+string(rune('0'+run))+".json")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	for i, cpu := range []float64{100, 900, 110} { // median 110, not the mean
		write("peer", i, 2*cpu, 10)
		write("loopmx", i, cpu, 2)
	}
	var out bytes.Buffer
	if err := compareMain(files, "loopmx", &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	lines := map[string]string{}
	for l := range strings.Lines(text) {
		f := strings.Fields(l)
		if len(f) > 2 {
			lines[f[0]+" "+f[len(f)-1]] = l
		}
	}
	for _, want := range []string{"session 0.50x", "idle 0.20x", "session 1.00x"} {
		if lines[want] == "" {
			t.Errorf("no line ending %q in\n%s", want, text)
		}
	}
	if !strings.Contains(text, "110µs") || !strings.Contains(text, "loopmx 3, peer 3") {
		t.Errorf("want the median 110µs and the run counts in\n%s", text)
	}
	if strings.Contains(text, "pipeline") {
		t.Errorf("skipped scenarios must not show figures:\n%s", text)
	}
	if strings.Contains(text, "warning") {
		t.Errorf("quiet runs must not warn:\n%s", text)
	}

	// One run on a busy machine: the comparison says how many, and why.
	rep := Report{Label: "peer", Machine: Machine{NProc: 2, Load1: "4.00", Warning: "the machine is busy (load average 4.00 on 2 CPUs)"}}
	b, _ := json.Marshal(rep)
	busy := filepath.Join(dir, "busy.json")
	if err := os.WriteFile(busy, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := compareMain(append(files, busy), "loopmx", &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "warning: 1 of 7 runs started on a busy machine; the first said: the machine is busy (load average 4.00") {
		t.Errorf("no warning for the busy run:\n%s", out.String())
	}
}

// TestReportWarnsAndExplainsColumns: the table is followed by its legend,
// and a run on a busy machine says so under the header.
func TestReportWarnsAndExplainsColumns(t *testing.T) {
	rep := Report{Label: "x", Target: "127.0.0.1:1", Machine: Machine{NProc: 2, OtherBusy: 0.5}}
	rep.Machine.Warning = loadWarning(rep.Machine)
	rep.Results = []Result{{Params: params{Scenario: "session", Conc: 1}, Sessions: 1, Messages: 1}}
	var out bytes.Buffer
	printReport(&out, rep)
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "warning: the machine is busy") {
		t.Errorf("second line should warn of the busy machine:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "\n"+legend+"\n") {
		t.Errorf("no legend line under the table:\n%s", out.String())
	}
}

// TestHelpExplainsEveryColumn: -h exits 0 and its text names every column
// of the summary table.
func TestHelpExplainsEveryColumn(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	help := stdout.String()
	for _, col := range summaryColumns {
		if !strings.Contains(help, "\n  "+col+" ") && !strings.Contains(help, " "+col+" ") {
			t.Errorf("-h does not explain the column %q", col)
		}
	}
	for _, want := range []string{"latency by phase", "errors", "outcomes", "warning:", "-compare"} {
		if !strings.Contains(help, want) {
			t.Errorf("-h does not mention %q", want)
		}
	}
}

// TestCompareRoundsAndSpread: runs that carry their round are divided
// round by round, every median shows the range of its runs, and
// -max-spread flags a headline figure whose runs spread too far.
func TestCompareRoundsAndSpread(t *testing.T) {
	dir := t.TempDir()
	var files []string
	write := func(label string, round int, cpuUS float64) {
		rep := Report{Label: label, Round: round, Results: []Result{
			{Params: params{Scenario: "session"}, Server: &ServerStats{CPUPerSessionUS: cpuUS}},
		}}
		b, _ := json.Marshal(rep)
		f := filepath.Join(dir, fmt.Sprintf("%s.%d.json", label, round))
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	// The machine is 1.5x slower in round 2: both sides move, the ratio
	// within each round stays 1.2.
	for r, speed := range []float64{1, 1.5, 1} {
		write("floor", r+1, 100*speed)
		write("loopmx", r+1, 120*speed)
	}
	var out bytes.Buffer
	wide, err := compareSpread(files, "loopmx", 0.10, &out)
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if !strings.Contains(text, "120µs (120-180µs)") || !strings.Contains(text, "1.20x (1.20-1.20)") {
		t.Errorf("want the median with its range and the per-round ratio in\n%s", text)
	}
	if !wide || !strings.Contains(text, "spread wider than 10%: loopmx session server CPU/session: 120µs-180µs, 50% of the median") {
		t.Errorf("a 50%% spread must be flagged (wide=%v):\n%s", wide, text)
	}
	out.Reset()
	if wide, _ := compareSpread(files, "loopmx", 0.60, &out); wide {
		t.Errorf("a 50%% spread is within 60%%:\n%s", out.String())
	}
}
