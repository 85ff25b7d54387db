package main

// End-to-end tests of the metrics endpoint (docs/metrics.md): one scrape
// of a supervisor shows every worker, a worker killed with SIGKILL drops
// out while the sums go on growing, and the exposition is what promtool
// and a real Prometheus accept.

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// exposition is one /metrics answer: the value of every series, by the
// series as written ("name{labels}").
type exposition struct {
	text   string
	series map[string]float64
}

// scrapeMetrics fetches u and parses the Prometheus text format.
func scrapeMetrics(t *testing.T, u string) exposition {
	t.Helper()
	e, err := fetchMetrics(u)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func fetchMetrics(u string) (exposition, error) {
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(u)
	if err != nil {
		return exposition{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return exposition{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return exposition{}, fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	e := exposition{text: string(b), series: map[string]float64{}}
	for _, line := range strings.Split(e.text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return exposition{}, fmt.Errorf("bad sample line %q", line)
		}
		e.series[line[:i]] = v
	}
	return e, nil
}

// sum adds the series of metric name whose labels contain every one of
// match (`worker="exited"`, say).
func (e exposition) sum(name string, match ...string) float64 {
	var total float64
	for s, v := range e.series {
		if s != name && !strings.HasPrefix(s, name+"{") {
			continue
		}
		all := true
		for _, m := range match {
			all = all && strings.Contains(s, m)
		}
		if all {
			total += v
		}
	}
	return total
}

var workerLabel = regexp.MustCompile(`worker="([^"]*)"`)

// workers lists the worker label values of metric name, but "exited" and
// "supervisor".
func (e exposition) workers(name string) []string {
	seen := map[string]bool{}
	for s := range e.series {
		if !strings.HasPrefix(s, name+"{") {
			continue
		}
		if m := workerLabel.FindStringSubmatch(s); m != nil && m[1] != "exited" && m[1] != "supervisor" {
			seen[m[1]] = true
		}
	}
	var out []string
	for w := range seen {
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}

// waitMetrics scrapes u until ok holds, for up to 20 s.
func waitMetrics(t *testing.T, u string, what string, ok func(exposition) bool) exposition {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		e, err := fetchMetrics(u)
		if err == nil && ok(e) {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in 20s (last error %v); last scrape:\n%s", what, err, tail(e.text, 3000))
		}
		time.Sleep(20 * time.Millisecond) // a poll interval
	}
}

// runSessions runs n whole sessions (EHLO, MAIL, RCPT, DATA, QUIT)
// against addr, conc at a time.
func runSessions(t *testing.T, addr string, n, conc int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range conc {
		wg.Go(func() {
			for i := range next {
				errs <- oneSession(addr, i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func oneSession(addr string, i int) error {
	cl, err := dialSMTP(addr)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.startTx(true, "user@example.com"); err != nil {
		return err
	}
	code, text, err := cl.sendData(testMessage(fmt.Sprintf("metrics-%d", i), 300))
	if err != nil || code != 250 {
		return fmt.Errorf("message %d: %d %s %v", i, code, text, err)
	}
	return cl.expect("QUIT", 221)
}

// startMetricsServer starts loopmx with nodes = 2 and the endpoint on, and
// waits until both workers answer on it.
func startMetricsServer(t *testing.T) (*server, string) {
	t.Helper()
	mport := freePort(t)
	srv := startSupervised(t, discardConfig(t), fmt.Sprintf("nodes = 2\nloops = 1\nmetrics_listen = 127.0.0.1:%d\n", mport))
	u := fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	waitMetrics(t, u, "two workers on the endpoint", func(e exposition) bool {
		return len(e.workers("loopmx_connections_opened_total")) == 2
	})
	return srv, u
}

// TestE2EMetricsEveryWorker: with nodes = 2, one scrape of the
// supervisor's endpoint counts every session of either worker, once. A
// worker killed with SIGKILL drops out of the scrapes (no zeros in its
// name), its replacement appears under a new worker label, and the sums
// over workers never go down meanwhile: the dead worker's last counts
// move to worker="exited".
func TestE2EMetricsEveryWorker(t *testing.T) {
	srv, u := startMetricsServer(t)
	before := scrapeMetrics(t, u)

	const n = 40
	runSessions(t, srv.addr, n, 4)
	after := scrapeMetrics(t, u)
	opened := after.sum("loopmx_connections_opened_total") - before.sum("loopmx_connections_opened_total")
	banners := after.sum("loopmx_banner_seconds_count") - before.sum("loopmx_banner_seconds_count")
	queued := after.sum("loopmx_messages_total", `outcome="queued"`) - before.sum("loopmx_messages_total", `outcome="queued"`)
	if opened != n || banners != n || queued != n {
		t.Fatalf("after %d sessions one scrape counts %v connections, %v banners and %v queued messages over the workers %v; want %d each",
			n, opened, banners, queued, after.workers("loopmx_connections_opened_total"), n)
	}
	ws := after.workers("loopmx_connections_opened_total")
	if len(ws) != 2 {
		t.Fatalf("workers on the endpoint: %v, want two", ws)
	}
	t.Logf("after %d sessions: %v connections over workers %v", n, opened, ws)

	// Watch the sums from before the kill until the replacement served.
	var (
		mu       sync.Mutex
		scrapes  int
		dips     []string
		lastOpen float64
		lastBan  float64
		stop     = make(chan struct{})
		watching sync.WaitGroup
	)
	victim := ws[0]
	pid, _ := strconv.Atoi(victim[strings.IndexByte(victim, '-')+1:])
	slot := victim[:strings.IndexByte(victim, '-')]
	var deadSeen []string // scrapes that still showed the victim after it was gone
	watching.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			e, err := fetchMetrics(u)
			if err != nil {
				continue
			}
			o, b := e.sum("loopmx_connections_opened_total"), e.sum("loopmx_banner_seconds_count")
			mu.Lock()
			scrapes++
			if o < lastOpen || b < lastBan {
				dips = append(dips, fmt.Sprintf("connections %v -> %v, banners %v -> %v", lastOpen, o, lastBan, b))
			}
			lastOpen, lastBan = max(lastOpen, o), max(lastBan, b)
			if gone(pid) && strings.Contains(e.text, `worker="`+victim+`"`) {
				deadSeen = append(deadSeen, fmt.Sprint(e.sum("loopmx_connections_opened_total", `worker="`+victim+`"`)))
			}
			mu.Unlock()
		}
	})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for !gone(pid) {
		time.Sleep(5 * time.Millisecond) // a poll interval
	}
	repl := waitMetrics(t, u, "a replacement for worker "+victim, func(e exposition) bool {
		for _, w := range e.workers("loopmx_connections_opened_total") {
			if strings.HasPrefix(w, slot+"-") && w != victim {
				return !strings.Contains(e.text, `worker="`+victim+`"`)
			}
		}
		return false
	})
	t.Logf("workers after the kill: %v", repl.workers("loopmx_connections_opened_total"))
	const m = 20
	runSessions(t, srv.addr, m, 4)
	final := scrapeMetrics(t, u)
	close(stop)
	watching.Wait()

	if len(dips) > 0 {
		t.Errorf("the sums over workers went down in %d of %d scrapes: %v", len(dips), scrapes, dips)
	}
	if len(deadSeen) > 0 {
		t.Errorf("worker %s still shown after it died, in %d scrapes (values %v)", victim, len(deadSeen), deadSeen)
	}
	if got := final.sum("loopmx_connections_opened_total") - before.sum("loopmx_connections_opened_total"); got != n+m {
		t.Errorf("after %d + %d sessions and a SIGKILL between them, the scrape counts %v connections; want %d", n, m, got, n+m)
	}
	if final.sum("loopmx_connections_opened_total", `worker="exited"`) == 0 {
		t.Errorf("no worker=\"exited\" series after a worker died:\n%s", tail(final.text, 2000))
	}
	if c := final.sum("loopmx_supervisor_worker_crashes_total"); c != 1 {
		t.Errorf("loopmx_supervisor_worker_crashes_total = %v, want 1", c)
	}
	t.Logf("%d scrapes while the worker died and was replaced; final sum %v", scrapes, final.sum("loopmx_connections_opened_total"))
}

// TestE2EMetricsPrometheus: the supervisor's exposition passes `promtool
// check metrics` (which reads the text format), the OpenMetrics answer
// ends as it must, and a real Prometheus scraping it (in OpenMetrics, its
// first choice) answers the banner p99 query with what the histogram
// says.
func TestE2EMetricsPrometheus(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus, or make deps as root)")
	}
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (apt-get install prometheus, or make deps as root)")
	}
	srv, u := startMetricsServer(t)
	runSessions(t, srv.addr, 10, 2)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(fetchAccept(t, u, "text/plain;version=0.0.4"))
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if om := fetchAccept(t, u, "application/openmetrics-text;version=1.0.0"); !strings.HasSuffix(om, "# EOF\n") ||
		!strings.Contains(om, "# TYPE loopmx_banner_seconds histogram") {
		t.Errorf("the OpenMetrics answer lacks the banner histogram or its # EOF:\n%s", tail(om, 500))
	}

	api := startPrometheus(t, prom, strings.TrimPrefix(strings.TrimSuffix(u, "/metrics"), "http://"))
	// Let Prometheus see the workers before the traffic, so that a rate
	// over the window has a sample on either side of it.
	waitQuery(t, api, `count(loopmx_banner_seconds_count)`, func(v float64) bool { return v >= 2 })
	runSessions(t, srv.addr, 60, 4)
	e := scrapeMetrics(t, u)
	want := e.sum("loopmx_banner_seconds_count")
	waitQuery(t, api, `sum(loopmx_banner_seconds_count)`, func(v float64) bool { return v == want })

	p99 := waitQuery(t, api, `histogram_quantile(0.99, sum by (le) (loopmx_banner_seconds_bucket))`, finite)
	if mine := bannerQuantile(e, 0.99); math.Abs(p99-mine) > 1e-9*max(1, mine) {
		t.Errorf("Prometheus says the banner p99 is %v s, the scrape's buckets say %v s", p99, mine)
	}
	rate99 := waitQuery(t, api, `histogram_quantile(0.99, sum by (le) (rate(loopmx_banner_seconds_bucket[1m])))`, finite)
	t.Logf("banner p99 from Prometheus: %.3g s over all %v banners, %.3g s over the last minute", p99, want, rate99)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v > 0 }

// fetchAccept GETs u asking for a format, and returns the body.
func fetchAccept(t *testing.T, u, accept string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bannerQuantile computes histogram_quantile over every series of the
// banner histogram in e, as Prometheus does.
func bannerQuantile(e exposition, q float64) float64 {
	byLE := map[float64]float64{}
	for s, v := range e.series {
		if !strings.HasPrefix(s, "loopmx_banner_seconds_bucket{") {
			continue
		}
		m := regexp.MustCompile(`le="([^"]*)"`).FindStringSubmatch(s)
		le, err := strconv.ParseFloat(m[1], 64)
		if err == nil {
			byLE[le] += v
		}
	}
	var les []float64
	for le := range byLE {
		les = append(les, le)
	}
	sort.Float64s(les)
	total := byLE[math.Inf(1)]
	rank := q * total
	lo, below := 0.0, 0.0
	for _, le := range les {
		c := byLE[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return lo
			}
			return lo + (le-lo)*(rank-below)/(c-below)
		}
		lo, below = le, c
	}
	return math.NaN()
}

// startPrometheus runs Prometheus scraping target every second and
// returns its API's base URL. It is stopped by pid when the test ends.
func startPrometheus(t *testing.T, bin, target string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: loopmx\n    static_configs:\n      - targets: ['%s']\n", target)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", tail(out.String(), 3000))
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		select {
		case <-done:
			t.Fatalf("prometheus exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond) // a poll interval
	}
}

// waitQuery runs an instant PromQL query until its one value satisfies
// ok (up to 30 s) and returns the value.
func waitQuery(t *testing.T, api, q string, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		v, raw, err := query(api, q)
		if err == nil && ok(v) {
			return v
		}
		last = fmt.Sprint(raw, err)
		if time.Now().After(deadline) {
			t.Fatalf("query %s: no satisfying answer in 30s; last: %s", q, last)
		}
		time.Sleep(200 * time.Millisecond) // a poll interval, beside the 1 s scrapes
	}
}

// query runs an instant query that should return one sample.
func query(api, q string) (float64, string, error) {
	resp, err := http.Get(api + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, string(b), err
	}
	if r.Status != "success" || len(r.Data.Result) != 1 {
		return 0, string(b), fmt.Errorf("want one sample")
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, string(b), err
}
