package metrics

import (
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Snapshot is a serving process's state at one scrape: the sum of its
// shards and the gauges read at that moment.
type Snapshot struct {
	Shard
	// Listeners names each listener of Shard.Listeners by its address.
	Listeners []string
	// Open is the connections open now.
	Open int64
	// LoopLag is, per event loop, the longest batch of work of the
	// current or the previous half second.
	LoopLag []time.Duration
	// The workpool now.
	PoolQueued, PoolBusy, PoolWorkers int
}

// Source is a serving process's counts; loop.Server is one.
type Source interface {
	// MetricsSnapshot fills s. It may wait briefly for each event loop
	// to copy out its counts.
	MetricsSnapshot(s *Snapshot)
}

// Options say what a process's registry reports.
type Options struct {
	// Version is loopmx's version, for loopmx_build_info.
	Version string
	// Source is the SMTP server's counts; nil in a supervisor.
	Source Source
	// Sockets lists the listening sockets whose accept queue to report;
	// nil reports none (a worker: its supervisor holds the same sockets
	// and reports them once).
	Sockets func() []Socket
	// Host adds the host's listen queue overflows (/proc/net/netstat).
	Host bool
	// ProcessLabels are added to the Go runtime and process series (a
	// supervisor labels its own worker="supervisor").
	ProcessLabels prometheus.Labels
}

// Registry is a process's registry; Close stops its listen queue sampler.
type Registry struct {
	*prometheus.Registry
	stop func()
}

// Close stops what the registry runs in the background.
func (r *Registry) Close() { r.stop() }

// NewRegistry returns a registry with everything a loopmx process reports:
// build info, the Go runtime and process series, the SMTP server's
// series when o.Source is set, the Redis client's, and the listen queues.
func NewRegistry(o Options) *Registry {
	reg := prometheus.NewRegistry()
	r := &Registry{Registry: reg, stop: func() {}}
	proc := prometheus.WrapRegistererWith(o.ProcessLabels, reg)
	proc.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "loopmx_build_info",
		Help:        "Always 1; the labels say which loopmx runs.",
		ConstLabels: prometheus.Labels{"version": o.Version, "goversion": runtime.Version()},
	}, func() float64 { return 1 }))
	if o.Source != nil {
		reg.MustRegister(&serverCollector{src: o.Source})
		reg.MustRegister(redisCollector{})
		reg.MustRegister(dnsCollector{})
	}
	if o.Sockets != nil {
		sc := newSocketCollector(o.Sockets)
		reg.MustRegister(sc)
		r.stop = sc.stop
	}
	if o.Host {
		reg.MustRegister(hostCollector{})
	}
	return r
}

// The descriptions of the SMTP server's series. docs/metrics.md explains
// each one.
var (
	descBanner = prometheus.NewDesc("loopmx_banner_seconds",
		"Time from accepting a connection to writing its 220 banner, less any delay a connect hook asked for (early_talker's pause).",
		[]string{"listener"}, nil)
	descOpened = prometheus.NewDesc("loopmx_connections_opened_total",
		"Connections accepted and served (given a banner or a connect hook's answer).",
		[]string{"listener"}, nil)
	descClosed = prometheus.NewDesc("loopmx_connections_closed_total",
		"Connections closed, by the reason the connection log line gives (docs/logging.md).",
		[]string{"listener", "reason"}, nil)
	descOpenNow = prometheus.NewDesc("loopmx_connections_open",
		"Connections open now.",
		[]string{"listener"}, nil)
	descRefused = prometheus.NewDesc("loopmx_accept_refused_total",
		"Connections refused right after accept (a 421 or, on implicit TLS and PROXY listeners, a silent close).",
		[]string{"listener", "reason"}, nil)
	descAcceptErr = prometheus.NewDesc("loopmx_accept_errors_total",
		"accept(2) failures; on emfile, enfile, enobufs and enomem the loop stops accepting for 10 ms to 1 s.",
		[]string{"listener", "error"}, nil)
	descReplies = prometheus.NewDesc("loopmx_replies_total",
		"Replies written, by the command they answer and their code class.",
		[]string{"command", "class"}, nil)
	descRefusals = prometheus.NewDesc("loopmx_refusals_total",
		"4xx and 5xx answers decided by a hook, by plugin (none: no plugin decided), hook and code.",
		[]string{"plugin", "hook", "code"}, nil)
	descHook = prometheus.NewDesc("loopmx_hook_duration_seconds",
		"Time one plugin's hook took: inline hooks on the event loop, blocking hooks on the workpool (without the wait for a worker).",
		[]string{"plugin", "hook"}, nil)
	descPoolWait = prometheus.NewDesc("loopmx_workpool_wait_seconds",
		"Time a blocking hook waited in the workpool's queue before a worker ran it.", nil, nil)
	descPoolQueue = prometheus.NewDesc("loopmx_workpool_queue_length",
		"Jobs waiting for a workpool worker now.", nil, nil)
	descPoolBusy = prometheus.NewDesc("loopmx_workpool_busy_workers",
		"Workpool workers running a job now.", nil, nil)
	descPoolSize = prometheus.NewDesc("loopmx_workpool_workers",
		"Workpool workers (threadpool_size).", nil, nil)
	descLag = prometheus.NewDesc("loopmx_event_loop_lag_seconds",
		"The longest batch of work of the event loop in the current or previous half second: how long a new event could have waited.",
		[]string{"loop"}, nil)
	descMessages = prometheus.NewDesc("loopmx_messages_total",
		"Messages answered by the queue hook, by the queue plugin that answered and the outcome (queued: 2xx, deferred: 4xx, rejected: 5xx).",
		[]string{"plugin", "outcome"}, nil)
	descSize = prometheus.NewDesc("loopmx_message_size_bytes",
		"Size of the messages that reached the data_post or queue decision.", nil, nil)
	descQueueTime = prometheus.NewDesc("loopmx_queue_duration_seconds",
		"Time from the first queue plugin's start to the reply after the message.", nil, nil)
	descTLS = prometheus.NewDesc("loopmx_tls_handshakes_total",
		"TLS handshakes (STARTTLS and implicit TLS), by outcome and protocol version.",
		[]string{"outcome", "version"}, nil)
	descProxy = prometheus.NewDesc("loopmx_proxy_headers_total",
		"PROXY protocol headers on proxy_listen addresses, by outcome.",
		[]string{"outcome"}, nil)
)

// serverCollector turns a Source's snapshot into the server's series.
type serverCollector struct {
	src Source
}

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBanner, descOpened, descClosed, descOpenNow, descRefused, descAcceptErr,
		descReplies, descRefusals, descHook, descPoolWait, descPoolQueue, descPoolBusy, descPoolSize, descLag,
		descMessages, descSize, descQueueTime, descTLS, descProxy} {
		ch <- d
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	var s Snapshot
	c.src.MetricsSnapshot(&s)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for i, name := range s.Listeners {
		if i >= len(s.Shard.Listeners) {
			break
		}
		st := &s.Shard.Listeners[i]
		ch <- durHistogram(descBanner, &st.Banner, name)
		counter(descOpened, st.Opened, name)
		var closed uint64
		for why, n := range st.Closed {
			counter(descClosed, n, name, why)
			closed += n
		}
		gauge(descOpenNow, float64(int64(st.Opened-closed)), name)
		for r, n := range st.Refused {
			counter(descRefused, n, name, refusalNames[r])
		}
		for e, n := range st.Errors {
			counter(descAcceptErr, n, name, acceptErrorNames[e])
		}
	}
	for cmd := range s.Replies {
		for cl, n := range s.Replies[cmd] {
			if n > 0 {
				counter(descReplies, n, Command(cmd).String(), classNames[cl])
			}
		}
	}
	for k, n := range s.Refusals {
		counter(descRefusals, n, k.Plugin, k.Hook, strconv.Itoa(k.Code))
	}
	for k, h := range s.Hooks {
		ch <- durHistogram(descHook, h, k.Plugin, k.Hook)
	}
	ch <- durHistogram(descPoolWait, &s.PoolWait)
	gauge(descPoolQueue, float64(s.PoolQueued))
	gauge(descPoolBusy, float64(s.PoolBusy))
	gauge(descPoolSize, float64(s.PoolWorkers))
	for i, d := range s.LoopLag {
		gauge(descLag, d.Seconds(), strconv.Itoa(i))
	}
	for k, n := range s.Messages {
		counter(descMessages, n, k.Plugin, k.Outcome)
	}
	sizes, count := cumulative(SizeBuckets, s.Size.Counts[:])
	ch <- prometheus.MustNewConstHistogram(descSize, count, float64(s.Size.Sum), sizes)
	ch <- durHistogram(descQueueTime, &s.QueueTime)
	for k, n := range s.TLS {
		counter(descTLS, n, k.Outcome, k.Version)
	}
	for o, n := range s.Proxy {
		counter(descProxy, n, proxyNames[o])
	}
}

// durHistogram turns h into a constant Prometheus histogram in seconds.
func durHistogram(d *prometheus.Desc, h *DurHist, labels ...string) prometheus.Metric {
	b, n := cumulative(DurationBuckets, h.Counts[:])
	return prometheus.MustNewConstHistogram(d, n, float64(h.SumNs)/1e9, b, labels...)
}
