package metrics

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// WorkerLabel is the label a supervisor adds to each worker's series.
// Its value is "<slot>-<pid>": a worker that replaces another (after a
// crash, a reload, an upgrade) is a new series, so rate() never mistakes
// a restart for a counter that went down. ExitedWorker is the value of
// the series that add up the final counts of every worker that exited.
const (
	WorkerLabel  = "worker"
	ExitedWorker = "exited"
)

// gatherTimeout bounds the wait for one worker's answer; a worker that
// takes longer is left out of that scrape.
const gatherTimeout = 2 * time.Second

// Workers gathers the metrics of a supervisor's workers over their
// channels. It is a prometheus.Gatherer: each scrape asks every live
// worker at once and labels what each one sends with its worker label.
//
// A worker that exits drops out of the scrape (its series end: missing,
// not zeros), and its last counters and histograms are added to the
// worker="exited" series, so that a sum over workers never goes down
// when one dies. What a worker killed with SIGKILL counted after the
// scrape before its death is lost; one that drains sends its final
// counts before it exits.
type Workers struct {
	mu     sync.Mutex // serializes scrapes and the folding of exited workers
	links  map[int]*link
	exited map[string]*dto.MetricFamily // by name; counters and histograms only
}

// NewWorkers returns an empty set.
func NewWorkers() *Workers {
	return &Workers{links: map[int]*link{}, exited: map[string]*dto.MetricFamily{}}
}

// link is the supervisor's end of one worker's channel.
type link struct {
	name string
	conn *net.UnixConn
	done chan struct{} // closed when the worker's end is gone

	mu      sync.Mutex
	last    []*dto.MetricFamily // the newest frame
	seq     uint64              // frames received
	changed chan struct{}       // closed and replaced on every frame
	folded  bool                // its counts went to the exited series (under Workers.mu)
}

// Add starts gathering from the worker with pid in slot over f, the
// supervisor's end of its channel (Add takes f over).
func (w *Workers) Add(slot, pid int, f *os.File) error {
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("metrics: channel of worker %d: %w", slot, err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return fmt.Errorf("metrics: channel of worker %d is not a Unix socket", slot)
	}
	l := &link{name: strconv.Itoa(slot) + "-" + strconv.Itoa(pid), conn: uc, done: make(chan struct{}), changed: make(chan struct{})}
	w.mu.Lock()
	w.links[pid] = l
	w.mu.Unlock()
	go w.read(pid, l)
	return nil
}

// read takes in the worker's frames until its end closes, then folds its
// last frame into the exited series.
func (w *Workers) read(pid int, l *link) {
	r := bufio.NewReaderSize(l.conn, 64<<10)
	for {
		mfs, err := readFrame(r)
		if err != nil {
			break
		}
		l.mu.Lock()
		l.last, l.seq = mfs, l.seq+1
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	close(l.done)
	l.conn.Close()
	w.mu.Lock()
	w.fold(l)
	delete(w.links, pid)
	w.mu.Unlock()
}

// fold adds l's last counters and histograms to the exited series, once.
// w.mu is held.
func (w *Workers) fold(l *link) {
	if l.folded {
		return
	}
	l.folded = true
	l.mu.Lock()
	last := l.last
	l.mu.Unlock()
	for _, mf := range last {
		switch mf.GetType() {
		case dto.MetricType_COUNTER, dto.MetricType_HISTOGRAM:
		default:
			continue // a gauge of a dead process means nothing; a summary cannot be added
		}
		acc := w.exited[mf.GetName()]
		if acc == nil {
			acc = &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type}
			w.exited[mf.GetName()] = acc
		}
		for _, m := range mf.Metric {
			addMetric(acc, m)
		}
	}
}

// addMetric adds m to the metric of acc with the same labels.
func addMetric(acc *dto.MetricFamily, m *dto.Metric) {
	key := labelKey(m.Label)
	for _, a := range acc.Metric {
		if labelKey(a.Label) != key {
			continue
		}
		if m.Counter != nil {
			a.Counter.Value = proto.Float64(a.Counter.GetValue() + m.Counter.GetValue())
			return
		}
		h, s := a.Histogram, m.Histogram
		h.SampleCount = proto.Uint64(h.GetSampleCount() + s.GetSampleCount())
		h.SampleSum = proto.Float64(h.GetSampleSum() + s.GetSampleSum())
		for i, b := range s.Bucket {
			if i < len(h.Bucket) && h.Bucket[i].GetUpperBound() == b.GetUpperBound() {
				h.Bucket[i].CumulativeCount = proto.Uint64(h.Bucket[i].GetCumulativeCount() + b.GetCumulativeCount())
			}
		}
		return
	}
	c := &dto.Metric{Label: m.Label}
	switch {
	case m.Counter != nil:
		c.Counter = &dto.Counter{Value: proto.Float64(m.Counter.GetValue())}
	case m.Histogram != nil:
		h := &dto.Histogram{SampleCount: proto.Uint64(m.Histogram.GetSampleCount()), SampleSum: proto.Float64(m.Histogram.GetSampleSum())}
		for _, b := range m.Histogram.Bucket {
			h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: proto.Float64(b.GetUpperBound()), CumulativeCount: proto.Uint64(b.GetCumulativeCount())})
		}
		c.Histogram = h
	default:
		return
	}
	acc.Metric = append(acc.Metric, c)
}

// labelKey identifies a label set.
func labelKey(ls []*dto.LabelPair) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.GetName())
		b.WriteByte(0)
		b.WriteString(l.GetValue())
		b.WriteByte(0)
	}
	return b.String()
}

// ask requests a frame from the worker and waits for it.
func (l *link) ask(timeout time.Duration) ([]*dto.MetricFamily, bool) {
	l.mu.Lock()
	seq, changed := l.seq, l.changed
	l.mu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := l.conn.Write([]byte{'m'}); err != nil {
		return nil, false
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case <-changed:
			l.mu.Lock()
			if l.seq > seq {
				mfs := l.last
				l.mu.Unlock()
				return mfs, true
			}
			changed = l.changed
			l.mu.Unlock()
		case <-l.done:
			return nil, false
		case <-t.C:
			return nil, false
		}
	}
}

// Gather asks every live worker for its metrics, at once, and returns
// them with the worker label, merged by name, with the exited series.
func (w *Workers) Gather() ([]*dto.MetricFamily, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	type answer struct {
		l   *link
		mfs []*dto.MetricFamily
		ok  bool
	}
	links := make([]*link, 0, len(w.links))
	for _, l := range w.links {
		links = append(links, l)
	}
	answers := make([]answer, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		wg.Go(func() {
			mfs, ok := l.ask(gatherTimeout)
			answers[i] = answer{l, mfs, ok}
		})
	}
	wg.Wait()
	byName := map[string]*dto.MetricFamily{}
	var out []*dto.MetricFamily
	family := func(mf *dto.MetricFamily) *dto.MetricFamily {
		f := byName[mf.GetName()]
		if f == nil {
			f = &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type, Unit: mf.Unit}
			byName[mf.GetName()] = f
			out = append(out, f)
		}
		return f
	}
	for _, a := range answers {
		if !a.ok {
			select {
			case <-a.l.done:
				// Died during this scrape: its counts move to the exited
				// series now, so this scrape's sums do not dip.
				w.fold(a.l)
			default:
				// Alive but slow or stuck: missing from this scrape.
			}
			continue
		}
		for _, mf := range a.mfs {
			f := family(mf)
			for _, m := range mf.Metric {
				f.Metric = append(f.Metric, withWorker(m, a.l.name))
			}
		}
	}
	names := make([]string, 0, len(w.exited))
	for n := range w.exited {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		mf := w.exited[n]
		f := family(mf)
		for _, m := range mf.Metric {
			f.Metric = append(f.Metric, withWorker(m, ExitedWorker))
		}
	}
	return out, nil
}

// withWorker returns a copy of m with the worker label added.
func withWorker(m *dto.Metric, worker string) *dto.Metric {
	c := proto.Clone(m).(*dto.Metric)
	c.Label = append(c.Label, &dto.LabelPair{Name: proto.String(WorkerLabel), Value: proto.String(worker)})
	sort.Slice(c.Label, func(i, j int) bool { return c.Label[i].GetName() < c.Label[j].GetName() })
	return c
}

// Close closes every channel; the workers' ends see it.
func (w *Workers) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.links {
		l.conn.Close()
	}
}
