package main

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is everything one invocation measured; -json writes it.
type Report struct {
	Label   string    `json:"label"`
	Round   int       `json:"round,omitempty"` // -round: runs of one round pair up in -compare
	Target  string    `json:"target"`
	Started time.Time `json:"started"`
	Machine Machine   `json:"machine"`
	Results []Result  `json:"results"`
}

// Result is what one scenario measured.
type Result struct {
	Params         params             `json:"params"`
	Skipped        string             `json:"skipped,omitempty"`
	Seconds        float64            `json:"seconds"`
	Sessions       int64              `json:"sessions"`
	Messages       int64              `json:"messages"`
	Resumed        int64              `json:"resumed,omitempty"` // TLS handshakes that resumed (-resume)
	SessionsPerSec float64            `json:"sessions_per_sec"`
	MessagesPerSec float64            `json:"messages_per_sec"`
	Errors         map[string]int64   `json:"errors"`
	ErrorSamples   map[string]string  `json:"error_samples,omitempty"`
	Outcomes       map[string]int64   `json:"outcomes,omitempty"`
	Latency        map[string]Summary `json:"latency"`
	Server         *ServerStats       `json:"server,omitempty"`
	ServerBanner   *ServerBanner      `json:"server_banner,omitempty"`
	Client         ClientStats        `json:"client"`
}

// ServerStats is the server's cost over one scenario, read from /proc.
type ServerStats struct {
	PID             int     `json:"pid"`
	Procs           int     `json:"procs"`
	CPUSec          float64 `json:"cpu_sec"`
	CPUPerSessionUS float64 `json:"cpu_per_session_us,omitempty"`
	CPUPerMessageUS float64 `json:"cpu_per_message_us,omitempty"`
	RSSBeforeKB     float64 `json:"rss_before_kb"`
	RSSPeakKB       float64 `json:"rss_peak_kb"`
	RSSAfterKB      float64 `json:"rss_after_kb"`
	RSSHeldKB       float64 `json:"rss_held_kb,omitempty"`
	RSSPerConnKB    float64 `json:"rss_per_conn_kb,omitempty"`
}

// ClientStats is this program's own CPU over one scenario.
type ClientStats struct {
	CPUSec          float64 `json:"cpu_sec"`
	CPUPerSessionUS float64 `json:"cpu_per_session_us,omitempty"`
	CPUPerMessageUS float64 `json:"cpu_per_message_us,omitempty"`
}

// serverDelta is the server's state before, during and after a scenario.
type serverDelta struct {
	pid           int
	before, after procTree
	peakRSS       int64
	held          *procTree // idle: with every connection open
	heldConns     int64
}

// perSession reports whether a scenario is counted in sessions (as opposed
// to messages on kept sessions).
func perSession(scenario string) bool {
	return scenario != "keepalive" && scenario != "pipeline"
}

// headline is the phase whose latency sums up a scenario.
func headline(scenario string) int {
	switch scenario {
	case "keepalive", "pipeline":
		return phMessage
	case "flood", "idle":
		return phBanner
	}
	return phSession
}

// buildResult turns a scenario's counters and samples into figures: rates
// over the time the load lasted, CPU per session and per message, memory per
// held connection.
func buildResult(p params, st *stats, active, client time.Duration, srv *serverDelta) Result {
	res := Result{
		Params:   p,
		Seconds:  active.Seconds(),
		Sessions: st.sessions.Load(),
		Messages: st.messages.Load(),
		Resumed:  st.resumed.Load(),
		Errors:   map[string]int64{},
		Latency:  map[string]Summary{},
	}
	if s := active.Seconds(); s > 0 {
		res.SessionsPerSec = float64(res.Sessions) / s
		res.MessagesPerSec = float64(res.Messages) / s
	}
	for k, name := range errNames {
		res.Errors[name] = st.errs[k].Load()
		if st.samples[k] != "" {
			if res.ErrorSamples == nil {
				res.ErrorSamples = map[string]string{}
			}
			res.ErrorSamples[name] = st.samples[k]
		}
	}
	if p.Scenario == "mix" {
		res.Outcomes = map[string]int64{}
		for k, name := range outcomeNames {
			res.Outcomes[name] = st.outcomes[k].Load()
		}
	}
	for k, name := range phaseNames {
		if st.phase[k].count() > 0 {
			res.Latency[name] = st.phase[k].summary()
		}
	}
	perOp := func(d time.Duration, n int64) float64 {
		if n <= 0 {
			return 0
		}
		return float64(d) / 1e3 / float64(n)
	}
	res.Client = ClientStats{CPUSec: client.Seconds(), CPUPerMessageUS: perOp(client, res.Messages)}
	if perSession(p.Scenario) {
		res.Client.CPUPerSessionUS = perOp(client, res.Sessions)
	}
	if srv != nil {
		cpu := srv.after.CPU - srv.before.CPU
		kb := func(b int64) float64 { return float64(b) / 1024 }
		ss := &ServerStats{
			PID:             srv.pid,
			Procs:           srv.after.Procs,
			CPUSec:          cpu.Seconds(),
			CPUPerMessageUS: perOp(cpu, res.Messages),
			RSSBeforeKB:     kb(srv.before.RSS),
			RSSPeakKB:       kb(max(srv.peakRSS, srv.before.RSS, srv.after.RSS)),
			RSSAfterKB:      kb(srv.after.RSS),
		}
		if perSession(p.Scenario) {
			ss.CPUPerSessionUS = perOp(cpu, res.Sessions)
		}
		if srv.held != nil {
			ss.RSSHeldKB = kb(srv.held.RSS)
			ss.RSSPeakKB = max(ss.RSSPeakKB, ss.RSSHeldKB)
			if srv.heldConns > 0 {
				ss.RSSPerConnKB = kb(srv.held.RSS-srv.before.RSS) / float64(srv.heldConns)
			}
		}
		res.Server = ss
	}
	return res
}

// String describes the machine in one line.
func (m Machine) String() string {
	s := fmt.Sprintf("%d x %s", m.NProc, m.CPU)
	if m.Usable > 0 && m.Usable < m.NProc {
		s += fmt.Sprintf(" (client on %d)", m.Usable)
	}
	s += ", Linux " + m.Kernel + ", " + m.GoVersion
	if m.Load1 != "" {
		s += ", load " + m.Load1
	}
	if m.OtherBusy >= 0 {
		s += fmt.Sprintf(", other work %.2f CPUs", m.OtherBusy)
	}
	return s
}

// summaryColumns heads the summary table; the usage text explains each.
var summaryColumns = []string{"scenario", "conc", "sessions", "msgs", "errs", "sess/s", "msg/s", "latency", "p50", "p99", "p99.9",
	"srv/sess", "srv/msg", "srv RSS", "RSS/conn", "cli/sess", "cli/msg"}

// legend is the one line under the summary table that says what its
// columns are; -h (columnHelp) says it at length.
const legend = "columns: conc = connections at once (or arrivals/s); sessions, msgs = completed; errs = failures (errors table); " +
	"sess/s, msg/s = rates; latency = the phase p50/p99/p99.9 describe; srv/sess, srv/msg = server CPU per session and per message " +
	"(compare servers by these); srv RSS = server peak memory; RSS/conn = memory per idle connection; cli/sess, cli/msg = this client's CPU. " +
	"loopmx-bench -h explains each."

// errorCount is the number of errors of every kind in a result.
func (r Result) errorCount() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// printReport writes the summary table, then latency by phase, then errors.
func printReport(w io.Writer, rep Report) {
	fmt.Fprintf(w, "loopmx-bench: %s at %s", rep.Label, rep.Target)
	for _, r := range rep.Results {
		if r.Server != nil {
			fmt.Fprintf(w, " (pid %d, %d process(es))", r.Server.PID, r.Server.Procs)
			break
		}
	}
	fmt.Fprintf(w, "; %s\n", rep.Machine)
	if rep.Machine.Warning != "" {
		fmt.Fprintf(w, "warning: %s\n", rep.Machine.Warning)
	}
	fmt.Fprintln(w)

	t := &table{}
	t.row(summaryColumns...)
	for _, r := range rep.Results {
		p := r.Params
		conc := fmt.Sprint(p.Conc)
		if p.Rate > 0 {
			conc = fmt.Sprintf("%g/s", p.Rate)
		}
		if r.Skipped != "" {
			t.row(p.Scenario, conc, "skipped: "+r.Skipped)
			continue
		}
		h := phaseNames[headline(p.Scenario)]
		l := r.Latency[h]
		cells := []string{p.Scenario, conc, fmt.Sprint(r.Sessions), fmt.Sprint(r.Messages), fmt.Sprint(r.errorCount()),
			fmtRate(r.SessionsPerSec, perSession(p.Scenario)), fmtRate(r.MessagesPerSec, r.Messages > 0),
			h, fmtUS(l.P50), fmtUS(l.P99), fmtUS(l.P999)}
		if s := r.Server; s != nil {
			cells = append(cells, fmtUS(s.CPUPerSessionUS), fmtUS(s.CPUPerMessageUS),
				fmt.Sprintf("%.1f MB", s.RSSPeakKB/1024), fmtKB(s.RSSPerConnKB))
		} else {
			cells = append(cells, "-", "-", "-", "-")
		}
		cells = append(cells, fmtUS(r.Client.CPUPerSessionUS), fmtUS(r.Client.CPUPerMessageUS))
		t.row(cells...)
	}
	t.write(w)
	fmt.Fprintln(w, legend)

	fmt.Fprintln(w, "\nlatency by phase")
	t = &table{}
	t.row("scenario", "phase", "count", "p50", "p90", "p99", "p99.9", "max")
	for _, r := range rep.Results {
		for _, name := range phaseNames {
			if l, ok := r.Latency[name]; ok {
				t.row(r.Params.Scenario, name, fmt.Sprint(l.Count), fmtUS(l.P50), fmtUS(l.P90), fmtUS(l.P99), fmtUS(l.P999), fmtUS(l.Max))
			}
		}
	}
	t.write(w)

	printServerBanner(w, rep)

	t = &table{}
	t.row(append(append([]string{"errors"}, errNames[:]...), "first seen")...)
	for _, r := range rep.Results {
		if r.errorCount() == 0 {
			continue
		}
		cells := []string{r.Params.Scenario}
		first := ""
		for _, name := range errNames {
			cells = append(cells, fmt.Sprint(r.Errors[name]))
			if first == "" && r.ErrorSamples[name] != "" {
				first = name + ": " + r.ErrorSamples[name]
			}
		}
		t.row(append(cells, first)...)
	}
	if len(t.rows) == 1 {
		fmt.Fprintln(w, "\nerrors: none")
	} else {
		fmt.Fprintln(w)
		t.write(w)
	}
	for _, r := range rep.Results {
		if r.Outcomes != nil {
			var parts []string
			for _, name := range outcomeNames {
				parts = append(parts, fmt.Sprintf("%s %d", strings.ReplaceAll(name, "_", " "), r.Outcomes[name]))
			}
			fmt.Fprintf(w, "\n%s outcomes: %s\n", r.Params.Scenario, strings.Join(parts, ", "))
		}
	}
}

// fmtUS shows a microsecond figure with about three significant digits, in
// the unit that suits it; 0 shows as "-" (not measured).
func fmtUS(us float64) string {
	switch {
	case us <= 0:
		return "-"
	case us < 10:
		return fmt.Sprintf("%.1fµs", us)
	case us < 1000:
		return fmt.Sprintf("%.0fµs", us)
	case us < 10e3:
		return fmt.Sprintf("%.2fms", us/1e3)
	case us < 100e3:
		return fmt.Sprintf("%.1fms", us/1e3)
	case us < 1e6:
		return fmt.Sprintf("%.0fms", us/1e3)
	}
	return fmt.Sprintf("%.2fs", us/1e6)
}

// fmtRate shows a rate, or "-" where the scenario does not count that unit.
func fmtRate(v float64, counted bool) string {
	if !counted {
		return "-"
	}
	return fmt.Sprintf("%.0f", v)
}

// fmtKB shows a size in KB, or "-" when not measured.
func fmtKB(kb float64) string {
	if kb == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f KB", kb)
}

// table lines up text in columns: the first left-aligned, the rest right;
// the header row sets the number of columns.
type table struct{ rows [][]string }

// row adds a row of cells.
func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

// write prints the rows with every column as wide as its widest cell.
func (t *table) write(w io.Writer) {
	if len(t.rows) == 0 {
		return
	}
	ncol := len(t.rows[0])
	width := make([]int, ncol)
	for _, r := range t.rows {
		for i, c := range r {
			if i < ncol && (len(r) == ncol || i < len(r)-1) {
				width[i] = max(width[i], utf8.RuneCountInString(c))
			}
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		for i, c := range r {
			pad := 0
			if i < ncol {
				pad = max(width[i]-utf8.RuneCountInString(c), 0)
			}
			switch {
			case i == 0:
				b.WriteString(c + strings.Repeat(" ", pad))
			case len(r) != ncol && i == len(r)-1: // a short row's last cell spans the rest
				b.WriteString("  " + c)
			default:
				b.WriteString("  " + strings.Repeat(" ", pad) + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// printServerBanner sets the server's banner percentiles (-metrics) beside
// the client's.
func printServerBanner(w io.Writer, rep Report) {
	t := &table{}
	t.row("server banner", "count", "srv p50", "srv p99", "srv p99.9", "cli banner p99", "cli greet p50", "cli greet p99", "bucket at p99", "listen queue")
	for _, r := range rep.Results {
		sb := r.ServerBanner
		if sb == nil || sb.Count == 0 {
			continue
		}
		b, g := r.Latency["banner"], r.Latency["greet"]
		t.row(r.Params.Scenario, fmt.Sprintf("%.0f", sb.Count), fmtUS(sb.P50), fmtUS(sb.P99), fmtUS(sb.P999),
			fmtUS(b.P99), fmtUS(g.P50), fmtUS(g.P99), fmtUS(sb.Width99), fmt.Sprintf("%.0f of %.0f", sb.QueuePeak, sb.QueueLimit))
	}
	if len(t.rows) > 1 {
		fmt.Fprintln(w)
		t.write(w)
	}
}
