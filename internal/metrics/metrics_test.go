package metrics

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// TestDurHistBuckets: a duration lands in the first bucket whose bound it
// does not exceed (Prometheus' "le"), so 100 ms exactly is within the
// banner SLO's bucket.
func TestDurHistBuckets(t *testing.T) {
	var h DurHist
	for _, d := range []time.Duration{0, 100 * time.Millisecond, 100*time.Millisecond + 1, time.Minute, -time.Second} {
		h.Observe(d)
	}
	cum, n := cumulative(DurationBuckets, h.Counts[:])
	if n != 5 || cum[0.1] != 3 || cum[0.25] != 4 || cum[30] != 4 {
		t.Errorf("count %d, at 0.1s %d, at 0.25s %d, at 30s %d; want 5, 3 (0, -1s, 100ms), 4, 4 (a minute is +Inf)", n, cum[0.1], cum[0.25], cum[30])
	}
	if h.SumNs != int64(200*time.Millisecond+1+time.Minute) {
		t.Errorf("sum %v", time.Duration(h.SumNs))
	}
}

// TestShardAddAndCopy: adding shards sums every count, and a copy does
// not share maps with its source.
func TestShardAddAndCopy(t *testing.T) {
	a, b := NewShard(2), NewShard(2)
	a.Listeners[1].Opened, b.Listeners[1].Opened = 3, 4
	a.Listeners[0].Closed["quit"] = 2
	b.Listeners[0].Closed["quit"] = 1
	a.Hook("p", "rcpt").Observe(time.Millisecond)
	b.Hook("p", "rcpt").Observe(time.Millisecond)
	b.Refusals[Refusal{"p", "rcpt", 550}] = 1
	b.Replies[CmdRcpt][5] = 1
	var sum Shard
	sum.Add(a)
	sum.Add(b)
	if sum.Listeners[1].Opened != 7 || sum.Listeners[0].Closed["quit"] != 3 || sum.Hooks[HookKey{"p", "rcpt"}].Count() != 2 ||
		sum.Refusals[Refusal{"p", "rcpt", 550}] != 1 || sum.Replies[CmdRcpt][5] != 1 {
		t.Errorf("sum %+v", sum)
	}
	var cp Shard
	a.CopyTo(&cp)
	a.Listeners[0].Closed["quit"]++
	a.Hook("p", "rcpt").Observe(time.Millisecond)
	if cp.Listeners[0].Closed["quit"] != 2 || cp.Hooks[HookKey{"p", "rcpt"}].Count() != 1 {
		t.Errorf("the copy changed with its source: %+v", cp)
	}
}

// TestNetstatField reads a field of /proc/net/netstat's layout.
func TestNetstatField(t *testing.T) {
	in := []byte("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 19\nIpExt: InNoRoutes\nIpExt: 5\n")
	if v, ok := netstatField(in, "TcpExt:", "ListenOverflows"); !ok || v != 17 {
		t.Errorf("ListenOverflows = %d %v, want 17", v, ok)
	}
	if _, ok := netstatField(in, "TcpExt:", "Nothing"); ok {
		t.Error("found a field that is not there")
	}
}

// worker is one end of a test channel: a registry with a counter, a
// gauge and a histogram, served as a worker serves its supervisor.
type testWorker struct {
	count prometheus.Counter
	ch    *WorkerChannel
}

func newTestWorker(t *testing.T, w *Workers, slot, pid int) *testWorker {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	tw := &testWorker{count: prometheus.NewCounter(prometheus.CounterOpts{Name: "test_total", Help: "a counter"})}
	open := prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_open", Help: "a gauge"})
	hist := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "test_seconds", Help: "a histogram", Buckets: []float64{1}})
	open.Set(5)
	hist.Observe(0.5)
	reg.MustRegister(tw.count, open, hist)
	if tw.ch, err = ServeWorker(os.NewFile(uintptr(fds[1]), "worker"), reg); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(slot, pid, os.NewFile(uintptr(fds[0]), "supervisor")); err != nil {
		t.Fatal(err)
	}
	return tw
}

// gathered sums the value of family name by worker label.
func gathered(t *testing.T, w *Workers, name string) map[string]float64 {
	t.Helper()
	mfs, err := w.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			var worker string
			for _, l := range m.Label {
				if l.GetName() == WorkerLabel {
					worker = l.GetValue()
				}
			}
			out[worker] += value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// TestWorkersLabelAndFold: each worker's series carry its worker label;
// once a worker's channel ends, its gauges are gone and its last counts
// and histograms are added to worker="exited", with its final frame when
// it sent one.
func TestWorkersLabelAndFold(t *testing.T) {
	w := NewWorkers()
	defer w.Close()
	a := newTestWorker(t, w, 1, 100)
	b := newTestWorker(t, w, 2, 200)
	a.count.Add(3)
	b.count.Add(4)
	if got := gathered(t, w, "test_total"); got["1-100"] != 3 || got["2-200"] != 4 || len(got) != 2 {
		t.Fatalf("counters by worker: %v", got)
	}
	a.count.Add(10) // not yet scraped: the final frame carries it
	a.ch.Final()
	b.ch.conn.Close() // killed: its last scraped counts are what is known
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		n := len(w.links)
		w.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the channels' ends were not noticed")
		}
		time.Sleep(5 * time.Millisecond) // a poll interval
	}
	if got := gathered(t, w, "test_total"); got[ExitedWorker] != 17 || len(got) != 1 {
		t.Errorf("after both exited, counters %v; want exited = 13 + 4", got)
	}
	if got := gathered(t, w, "test_seconds"); got[ExitedWorker] != 2 {
		t.Errorf("after both exited, histogram counts %v; want 2 observations under exited", got)
	}
	if got := gathered(t, w, "test_open"); len(got) != 0 {
		t.Errorf("gauges of exited workers are still reported: %v", got)
	}
	c := newTestWorker(t, w, 2, 300)
	c.count.Add(1)
	got := gathered(t, w, "test_total")
	if got["2-300"] != 1 || got[ExitedWorker] != 17 {
		t.Errorf("with a replacement: %v; want 2-300 = 1 beside exited = 17", got)
	}
	for name := range got {
		if strings.HasSuffix(name, "-200") {
			t.Errorf("the dead worker %s is still shown", name)
		}
	}
}
