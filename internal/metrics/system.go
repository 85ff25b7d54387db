package metrics

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"loopmx/internal/breaker"
	"loopmx/internal/dnsx"
	"loopmx/internal/redisx"
)

// Socket is one listening socket whose accept queue is reported.
type Socket struct {
	Listener string // its address, as the listener label says
	// Socket names the socket among those of one address: "shared", or
	// the worker slot with sched_policy = reuseport.
	Socket string
	FD     int
}

var (
	descQueueLen = prometheus.NewDesc("loopmx_listen_queue_length",
		"Connections in the listening socket's accept queue now (TCP_INFO tcpi_unacked): established, waiting for an accept.",
		[]string{"listener", "socket"}, nil)
	descQueueMax = prometheus.NewDesc("loopmx_listen_queue_limit",
		"The accept queue's limit (TCP_INFO tcpi_sacked): backlog, capped by net.core.somaxconn. A full queue drops new connections' SYNs.",
		[]string{"listener", "socket"}, nil)
	descQueuePeak = prometheus.NewDesc("loopmx_listen_queue_recent_max",
		"The longest the accept queue was in the last 10 seconds, sampled every 100 ms: a burst between two scrapes.",
		[]string{"listener", "socket"}, nil)
)

// Sampling of the accept queues between scrapes: a queue that lasts
// 100 ms makes senders wait as long as the banner SLO allows; a shorter
// one need not wake the process more often.
const (
	sampleEvery = 100 * time.Millisecond
	peakSlots   = 10 // one a second: the peak covers the last 10 s
)

// socketCollector reads the accept queue of each listening socket, and
// samples it between scrapes for the recent peak.
type socketCollector struct {
	list func() []Socket
	done chan struct{}
	once sync.Once

	mu    sync.Mutex
	peaks map[[2]string]*[peakSlots]uint32 // by listener and socket: the peak of each second
	cur   int64                            // the second being sampled
}

func newSocketCollector(list func() []Socket) *socketCollector {
	c := &socketCollector{list: list, done: make(chan struct{}), peaks: map[[2]string]*[peakSlots]uint32{}}
	go c.sample()
	return c
}

func (c *socketCollector) stop() { c.once.Do(func() { close(c.done) }) }

// sample reads every queue each sampleEvery and keeps the peak of each
// second.
func (c *socketCollector) sample() {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			slot := now.Unix() % peakSlots
			c.mu.Lock()
			if now.Unix() != c.cur {
				// A new second: its slot last held the peak of ten seconds ago.
				c.cur = now.Unix()
				for _, p := range c.peaks {
					p[slot] = 0
				}
			}
			for _, s := range c.list() {
				if n, _, ok := listenQueue(s.FD); ok {
					k := [2]string{s.Listener, s.Socket}
					p := c.peaks[k]
					if p == nil {
						p = &[peakSlots]uint32{}
						c.peaks[k] = p
					}
					p[slot] = max(p[slot], n)
				}
			}
			c.mu.Unlock()
		}
	}
}

func (c *socketCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descQueueLen
	ch <- descQueueMax
	ch <- descQueuePeak
}

func (c *socketCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.list() {
		n, limit, ok := listenQueue(s.FD)
		if !ok {
			continue // closed meanwhile, or not a listening socket any more
		}
		ch <- prometheus.MustNewConstMetric(descQueueLen, prometheus.GaugeValue, float64(n), s.Listener, s.Socket)
		ch <- prometheus.MustNewConstMetric(descQueueMax, prometheus.GaugeValue, float64(limit), s.Listener, s.Socket)
		peak := n
		if p := c.peaks[[2]string{s.Listener, s.Socket}]; p != nil {
			for _, v := range p {
				peak = max(peak, v)
			}
		}
		ch <- prometheus.MustNewConstMetric(descQueuePeak, prometheus.GaugeValue, float64(peak), s.Listener, s.Socket)
	}
}

var descHostListen = prometheus.NewDesc("loopmx_host_listen_overflows_total",
	"The host's TCP listen queue overflows (/proc/net/netstat TcpExt ListenOverflows, every socket of the host): each is a connection whose SYN or handshake was dropped because an accept queue was full, and whose banner comes a second or more late.",
	nil, nil)

// hostCollector reads the host's listen queue overflows.
type hostCollector struct{}

func (hostCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descHostListen }

func (hostCollector) Collect(ch chan<- prometheus.Metric) {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return
	}
	if v, ok := netstatField(b, "TcpExt:", "ListenOverflows"); ok {
		ch <- prometheus.MustNewConstMetric(descHostListen, prometheus.CounterValue, float64(v))
	}
}

// netstatField finds a field in /proc/net/netstat, where each group is
// a line of names followed by a line of values, both led by prefix.
func netstatField(b []byte, prefix, field string) (uint64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	var names []string
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			names = nil
			continue
		}
		f := strings.Fields(line)[1:]
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == field && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				return v, err == nil
			}
		}
		return 0, false
	}
	return 0, false
}

var (
	descRedisCalls = prometheus.NewDesc("loopmx_redis_calls_total",
		"Calls to Redis by hooks and plugins (ok: Redis answered; error: no answer) and answers given without Redis (down: breaker open; busy: max_inflight slow calls in flight; slow: no answer within slow_call, the call goes on and ends as ok or error).",
		[]string{"outcome"}, nil)
	descRedisBreaker = prometheus.NewDesc("loopmx_redis_breaker_state",
		"Redis clients whose circuit breaker is in each state (1 for the one client of a process).",
		[]string{"state"}, nil)
)

// redisCollector reports the process's Redis clients, when it has any.
type redisCollector struct{}

func (redisCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRedisCalls
	ch <- descRedisBreaker
}

func (redisCollector) Collect(ch chan<- prometheus.Metric) {
	t := redisx.ProcessTotals()
	if t.Clients == 0 && t.OK+t.Failed+t.Down+t.Busy == 0 {
		return // Redis is not configured
	}
	for _, o := range []struct {
		name string
		v    int64
	}{{"ok", t.OK}, {"error", t.Failed}, {"down", t.Down}, {"busy", t.Busy}, {"slow", t.Slow}} {
		ch <- prometheus.MustNewConstMetric(descRedisCalls, prometheus.CounterValue, float64(o.v), o.name)
	}
	for st, n := range t.Breakers {
		ch <- prometheus.MustNewConstMetric(descRedisBreaker, prometheus.GaugeValue, float64(n), breaker.State(st).String())
	}
}

var (
	descDNSLookups = prometheus.NewDesc("loopmx_dns_lookups_total",
		"Lookups plugins made through the shared DNS layer (dns.ini), by how they were answered: cache (a cached answer, positive or negative), joined (waited for the same question already in flight), query (started a query), abandoned (the plugin's lookup_timeout ran out first), breaker (answered at once: the servers were taken to be down).",
		[]string{"answer"}, nil)
	descDNSQueries = prometheus.NewDesc("loopmx_dns_queries_total",
		"Queries the DNS layer sent to its servers, by how they ended: ok (records), nxdomain, nodata, servfail, refused (or another error code), timeout (no server answered).",
		[]string{"outcome"}, nil)
)

// dnsCollector reports the DNS layer's counts, once a plugin used it.
type dnsCollector struct{}

func (dnsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDNSLookups
	ch <- descDNSQueries
}

func (dnsCollector) Collect(ch chan<- prometheus.Metric) {
	c := &dnsx.Counters
	lookups := c.Lookups.Load()
	if lookups == 0 {
		return // no plugin asks the DNS
	}
	queries := c.Queries.Load()
	hits, joined, breaker := c.CacheHits.Load(), c.Joined.Load(), c.BreakerOpen.Load()
	for _, a := range []struct {
		name string
		v    uint64
	}{{"cache", hits}, {"joined", joined}, {"query", queries}, {"abandoned", c.Abandoned.Load()}, {"breaker", breaker}} {
		ch <- prometheus.MustNewConstMetric(descDNSLookups, prometheus.CounterValue, float64(a.v), a.name)
	}
	for _, o := range []struct {
		name string
		v    uint64
	}{{"ok", c.OK.Load()}, {"nxdomain", c.NXDomain.Load()}, {"nodata", c.NoData.Load()}, {"servfail", c.ServFail.Load()}, {"refused", c.Refused.Load()}, {"timeout", c.Timeout.Load()}} {
		ch <- prometheus.MustNewConstMetric(descDNSQueries, prometheus.CounterValue, float64(o.v), o.name)
	}
}
