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
// and prints for each metric the median over each server's runs and the
// ratio of base to each other server.
func compareMain(files []string, base string, w io.Writer) error {
	if len(files) == 0 {
		return fmt.Errorf("-compare: name the RESULT.json files to compare")
	}
	type key struct{ label, scenario string }
	runs := map[key][]Result{}
	count := map[string]int{}
	var labels []string
	var machine Machine
	loadLo, loadHi := math.Inf(1), math.Inf(-1)
	busyHi := 0.0
	warned, warning := 0, ""
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("-compare: %w", err)
		}
		var rep Report
		if err := json.Unmarshal(b, &rep); err != nil {
			return fmt.Errorf("-compare: %s: %w", f, err)
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
				runs[k] = append(runs[k], res)
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
	for _, m := range metrics {
		vals := make([]float64, len(labels))
		any := false
		for i, l := range labels {
			var vs []float64
			for _, r := range runs[key{l, m.scenario}] {
				vs = append(vs, m.get(r))
			}
			vals[i] = median(vs)
			any = any || vals[i] > 0
		}
		if !any {
			continue
		}
		show := func(v float64) string {
			if v <= 0 {
				return "-"
			}
			return m.format(v)
		}
		cells := []string{m.scenario, m.name, show(vals[0])}
		for i := range labels[1:] {
			cells = append(cells, show(vals[i+1]), ratio(vals[0], vals[i+1]))
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
	return nil
}
