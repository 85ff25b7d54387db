package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// metric is one line of the comparison: a figure taken from one scenario.
type metric struct {
	scenario string
	name     string
	format   func(float64) string
	get      func(Result) float64 // 0 means not measured
}

// serverGet reads a server figure from a result, 0 when the run had no -pid.
func serverGet(f func(*ServerStats) float64) func(Result) float64 {
	return func(r Result) float64 {
		if r.Server == nil {
			return 0
		}
		return f(r.Server)
	}
}

// latencyGet reads the p99 of a phase from a result.
func latencyGet(phase string) func(Result) float64 {
	return func(r Result) float64 { return r.Latency[phase].P99 }
}

// rate formats a figure per second.
func rate(v float64) string { return fmt.Sprintf("%.0f/s", v) }

// metrics are the lines compare prints, the figures issue 5 asks to see as
// ratios first: server CPU per session and per message, banner p99 under a
// flood, RSS per idle connection.
var metrics = []metric{
	{"session", "server CPU/session", fmtUS, serverGet(func(s *ServerStats) float64 { return s.CPUPerSessionUS })},
	{"keepalive", "server CPU/message", fmtUS, serverGet(func(s *ServerStats) float64 { return s.CPUPerMessageUS })},
	{"pipeline", "server CPU/message", fmtUS, serverGet(func(s *ServerStats) float64 { return s.CPUPerMessageUS })},
	{"flood", "banner p99", fmtUS, latencyGet("banner")},
	{"idle", "RSS/connection", fmtKB, serverGet(func(s *ServerStats) float64 { return s.RSSPerConnKB })},
	{"session", "sessions/s", rate, func(r Result) float64 { return r.SessionsPerSec }},
	{"session", "session p99", fmtUS, latencyGet("session")},
	{"keepalive", "messages/s", rate, func(r Result) float64 { return r.MessagesPerSec }},
	{"pipeline", "messages/s", rate, func(r Result) float64 { return r.MessagesPerSec }},
	{"flood", "server CPU/connection", fmtUS, serverGet(func(s *ServerStats) float64 { return s.CPUPerSessionUS })},
	{"mix", "server CPU/session", fmtUS, serverGet(func(s *ServerStats) float64 { return s.CPUPerSessionUS })},
	{"mix", "session p99", fmtUS, latencyGet("session")},
	{"session", "client CPU/session", fmtUS, func(r Result) float64 { return r.Client.CPUPerSessionUS }},
}

// median returns the middle of the values that were measured (non-zero), the
// mean of the two middle ones for an even count, and 0 when there are none.
func median(vs []float64) float64 {
	var m []float64
	for _, v := range vs {
		if v > 0 {
			m = append(m, v)
		}
	}
	if len(m) == 0 {
		return 0
	}
	slices.Sort(m)
	if len(m)%2 == 1 {
		return m[len(m)/2]
	}
	return (m[len(m)/2-1] + m[len(m)/2]) / 2
}

// ratio formats a/b, or "-" when either is missing.
func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// compareMain reads reports written with -json, one per run of one server,
// and prints for each metric the median over each server's runs, their
// spread, and the ratio of base to each other server.
func compareMain(files []string, base string, w io.Writer) error {
	_, err := compareSpread(files, base, 0, w)
	return err
}

// headlineMetrics is how many of metrics (the first ones) -max-spread watches:
// server CPU per session and per kept-session message.
const headlineMetrics = 2

// spreadOf returns the lowest and highest measured (non-zero) value.
func spreadOf(vs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), 0
	for _, v := range vs {
		if v > 0 {
			lo, hi = min(lo, v), max(hi, v)
		}
	}
	return lo, hi
}

// roundResult is one server's result of a scenario, with the round it ran in.
type roundResult struct {
	round int
	res   Result
}

// compareSpread is compareMain that also reports, with maxSpread > 0,
// whether a headline figure's runs spread by more than maxSpread of their
// median (and says which under the table).
func compareSpread(files []string, base string, maxSpread float64, w io.Writer) (bool, error) {
	if len(files) == 0 {
		return false, fmt.Errorf("-compare: name the RESULT.json files to compare")
	}
	type key struct{ label, scenario string }
	runs := map[key][]roundResult{}
	count := map[string]int{}
	var labels []string
	var machine Machine
	loadLo, loadHi := math.Inf(1), math.Inf(-1)
	busyHi := 0.0
	warned, warning := 0, ""
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return false, fmt.Errorf("-compare: %w", err)
		}
		var rep Report
		if err := json.Unmarshal(b, &rep); err != nil {
			return false, fmt.Errorf("-compare: %s: %w", f, err)
		}
		machine = rep.Machine
		if rep.Machine.Warning != "" {
			warned++
			if warning == "" {
				warning = rep.Machine.Warning
			}
		}
		if b := rep.Machine.OtherBusy; b > 0 {
			busyHi = max(busyHi, b)
		}
		if l, err := strconv.ParseFloat(rep.Machine.Load1, 64); err == nil {
			loadLo, loadHi = min(loadLo, l), max(loadHi, l)
		}
		if !slices.Contains(labels, rep.Label) {
			labels = append(labels, rep.Label)
		}
		count[rep.Label]++
		for _, res := range rep.Results {
			if res.Skipped == "" {
				k := key{rep.Label, res.Params.Scenario}
				runs[k] = append(runs[k], roundResult{rep.Round, res})
			}
		}
	}
	// The base goes first; the peers follow in the order they were seen.
	if i := slices.Index(labels, base); i > 0 {
		labels = append(append([]string{base}, labels[:i]...), labels[i+1:]...)
	}

	t := &table{}
	head := []string{"scenario", "metric", labels[0]}
	for _, l := range labels[1:] {
		head = append(head, l, labels[0]+"/"+l)
	}
	t.row(head...)
	var wide []string
	for mi, m := range metrics {
		vals := make([]float64, len(labels))
		spans := make([]string, len(labels))
		byRound := make([]map[int]float64, len(labels))
		any := false
		for i, l := range labels {
			var vs []float64
			byRound[i] = map[int]float64{}
			for _, r := range runs[key{l, m.scenario}] {
				v := m.get(r.res)
				vs = append(vs, v)
				if r.round > 0 && v > 0 {
					byRound[i][r.round] = v
				}
			}
			vals[i] = median(vs)
			any = any || vals[i] > 0
			if lo, hi := spreadOf(vs); hi > lo {
				spans[i] = " (" + strings.TrimSuffix(m.format(lo), unitOf(m.format(lo))) + "-" + m.format(hi) + ")"
				if mi < headlineMetrics && maxSpread > 0 && (hi-lo)/vals[i] > maxSpread {
					wide = append(wide, fmt.Sprintf("%s %s %s: %s-%s, %.0f%% of the median", l, m.scenario, m.name, m.format(lo), m.format(hi), 100*(hi-lo)/vals[i]))
				}
			}
		}
		if !any {
			continue
		}
		show := func(i int) string {
			if vals[i] <= 0 {
				return "-"
			}
			return m.format(vals[i]) + spans[i]
		}
		cells := []string{m.scenario, m.name, show(0)}
		for i := range labels[1:] {
			cells = append(cells, show(i+1), roundRatio(vals[0], vals[i+1], byRound[0], byRound[i+1]))
		}
		t.row(cells...)
	}
	var n []string
	for _, l := range labels {
		n = append(n, fmt.Sprintf("%s %d", l, count[l]))
	}
	machine.Load1 = ""
	if loadLo <= loadHi {
		machine.Load1 = fmt.Sprintf("%.2f-%.2f over the runs", loadLo, loadHi)
	}
	machine.OtherBusy = -1
	fmt.Fprintf(w, "median of runs per server (%s); %s", strings.Join(n, ", "), machine)
	if busyHi > 0 {
		fmt.Fprintf(w, ", other work up to %.2f CPUs before a run", busyHi)
	}
	fmt.Fprintln(w)
	if warned > 0 {
		fmt.Fprintf(w, "warning: %d of %d runs started on a busy machine; the first said: %s\n", warned, len(files), warning)
	}
	fmt.Fprintln(w)
	t.write(w)
	fmt.Fprintf(w, "\n%s/peer below 1 means %s uses less (CPU, latency, memory); above 1 on a rate means it is faster.\n", labels[0], labels[0])
	fmt.Fprintln(w, "Each figure is the median of the runs, with the lowest and highest in brackets; a ratio with a range is the median of the ratios within each round.")
	for _, l := range wide {
		fmt.Fprintf(w, "spread wider than %.0f%%: %s\n", 100*maxSpread, l)
	}
	return len(wide) > 0, nil
}

// roundRatio is the ratio of a to b: the median of the ratios of the
// rounds both ran in, with their spread, when there are two or more such
// rounds; else the ratio of the medians.
func roundRatio(a, b float64, ra, rb map[int]float64) string {
	var rs []float64
	for r, va := range ra {
		if vb := rb[r]; vb > 0 {
			rs = append(rs, va/vb)
		}
	}
	if len(rs) < 2 {
		return ratio(a, b)
	}
	lo, hi := spreadOf(rs)
	return fmt.Sprintf("%.2fx (%.2f-%.2f)", median(rs), lo, hi)
}

// unitOf is the unit at the end of a formatted figure ("µs", "KB", "/s").
func unitOf(s string) string {
	i := len(s)
	for i > 0 && (s[i-1] < '0' || s[i-1] > '9') {
		i--
	}
	return s[i:]
}
