package main

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// With -metrics URL the bench reads the server's own figures from its
// Prometheus endpoint (docs/metrics.md): the banner histogram before and
// after each scenario, whose difference gives the server's banner
// percentiles for exactly that scenario, and the accept queue of its
// listening sockets every queueEvery meanwhile. The text format is read
// with the few lines of parsing below; the bench imports nothing but the
// standard library.

// queueEvery is how often the listen queue is sampled during a scenario.
const queueEvery = 100 * time.Millisecond

// ServerBanner is the server's view of one scenario's banners.
type ServerBanner struct {
	Count float64 `json:"count"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p99_9_us"`
	// QueuePeak is the longest accept queue seen, QueueLimit its limit.
	QueuePeak  float64 `json:"listen_queue_peak"`
	QueueLimit float64 `json:"listen_queue_limit"`
	// Width99 is the width of the histogram bucket that holds the
	// client's greet p99: how far apart the two p99s may be and still
	// agree, given the server's resolution.
	Width99 float64 `json:"bucket_width_at_p99_us"`
}

// promHist is a histogram as the text format gives it: cumulative counts
// by upper bound, +Inf last.
type promHist struct {
	le  []float64
	cum []float64
}

// scrapeState is what one scrape gives the bench.
type scrapeState struct {
	banner      promHist
	queue, qmax float64
}

// scrape reads the server's endpoint.
func scrape(url string) (scrapeState, error) {
	var st scrapeState
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s: %s", url, resp.Status)
	}
	buckets := map[float64]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, labels, v, ok := sampleLine(sc.Text())
		if !ok {
			continue
		}
		switch name {
		case "loopmx_banner_seconds_bucket":
			le, err := strconv.ParseFloat(labelValue(labels, "le"), 64)
			if err == nil {
				buckets[le] += v
			}
		case "loopmx_listen_queue_length", "loopmx_listen_queue_recent_max":
			st.queue = max(st.queue, v)
		case "loopmx_listen_queue_limit":
			st.qmax = max(st.qmax, v)
		}
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	for le := range buckets {
		st.banner.le = append(st.banner.le, le)
	}
	sort.Float64s(st.banner.le)
	for _, le := range st.banner.le {
		st.banner.cum = append(st.banner.cum, buckets[le])
	}
	return st, nil
}

// sampleLine splits `name{labels} value [timestamp]`.
func sampleLine(line string) (name, labels string, v float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	rest := line
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", "", 0, false
		}
		name, labels, rest = line[:i], line[i+1:j], line[j+1:]
	} else {
		sp := strings.IndexByte(line, ' ')
		if sp < 0 {
			return "", "", 0, false
		}
		name, rest = line[:sp], line[sp:]
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	return name, labels, v, err == nil
}

// labelValue finds a label's value in `a="x",b="y"`.
func labelValue(labels, name string) string {
	for _, part := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(part, "=")
		if ok && strings.TrimSpace(k) == name {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// minus returns h - o, bucket by bucket; o may be empty.
func (h promHist) minus(o promHist) promHist {
	out := promHist{le: h.le, cum: make([]float64, len(h.cum))}
	for i, le := range h.le {
		out.cum[i] = h.cum[i]
		for j, ole := range o.le {
			if ole == le {
				out.cum[i] -= o.cum[j]
			}
		}
	}
	return out
}

// count is the number of observations.
func (h promHist) count() float64 {
	if len(h.cum) == 0 {
		return 0
	}
	return h.cum[len(h.cum)-1]
}

// quantile estimates the q-quantile in seconds as Prometheus'
// histogram_quantile does: linear within the bucket that holds the rank,
// from 0 below the first bound, and the highest finite bound when the
// rank falls in +Inf.
func (h promHist) quantile(q float64) float64 {
	n := h.count()
	if n == 0 {
		return math.NaN()
	}
	rank := q * n
	for i, c := range h.cum {
		if c < rank {
			continue
		}
		if math.IsInf(h.le[i], 1) {
			if i == 0 {
				return math.NaN()
			}
			return h.le[i-1]
		}
		lo, below := 0.0, 0.0
		if i > 0 {
			lo, below = h.le[i-1], h.cum[i-1]
		}
		if c == below {
			return h.le[i]
		}
		return lo + (h.le[i]-lo)*(rank-below)/(c-below)
	}
	return h.le[len(h.le)-1]
}

// width is the width of the bucket that holds the value v (seconds).
func (h promHist) width(v float64) float64 {
	lo := 0.0
	for _, le := range h.le {
		if v <= le {
			return le - lo
		}
		lo = le
	}
	return math.Inf(1)
}

// metricsWatch samples the listen queue while a scenario runs.
type metricsWatch struct {
	url    string
	before scrapeState
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	peak   float64
	limit  float64
}

// watchMetrics reads the server's state before a scenario and samples its
// listen queue until finish.
func watchMetrics(url string) (*metricsWatch, error) {
	before, err := scrape(url)
	if err != nil {
		return nil, fmt.Errorf("-metrics: %w", err)
	}
	m := &metricsWatch{url: url, before: before, stop: make(chan struct{}), limit: before.qmax}
	m.wg.Go(func() {
		t := time.NewTicker(queueEvery)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
			if st, err := scrape(url); err == nil {
				m.mu.Lock()
				m.peak, m.limit = max(m.peak, st.queue), max(m.limit, st.qmax)
				m.mu.Unlock()
			}
		}
	})
	return m, nil
}

// finish stops the sampling and returns the server's banner figures for
// the scenario, beside the client's greet phase.
func (m *metricsWatch) finish(greet *hist) (*ServerBanner, error) {
	close(m.stop)
	m.wg.Wait()
	after, err := scrape(m.url)
	if err != nil {
		return nil, fmt.Errorf("-metrics: %w", err)
	}
	d := after.banner.minus(m.before.banner)
	us := func(s float64) float64 { return s * 1e6 }
	sb := &ServerBanner{Count: d.count(), P50: us(d.quantile(0.5)), P99: us(d.quantile(0.99)), P999: us(d.quantile(0.999)),
		QueuePeak: max(m.peak, after.queue), QueueLimit: max(m.limit, after.qmax)}
	if greet.count() > 0 {
		sb.Width99 = us(d.width(greet.quantile(0.99).Seconds()))
	}
	return sb, nil
}
