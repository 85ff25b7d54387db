package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"loopmx/internal/dnsx"
	"loopmx/internal/dnsx/dnstest"
)

// dnsSeries gathers the DNS collector and returns its series by name and
// label value.
func dnsSeries(t *testing.T) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(dnsCollector{})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// The DNS layer's lookups and queries show on the endpoint: a first
// lookup sends a query, a second one is a cache hit.
func TestDNSCollector(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Add(t, "mx.example.org. 300 IN A 192.0.2.25")
	r := dnsx.New(dnsx.Settings{Servers: []string{srv.Addr}, Timeout: time.Second, Attempts: 1, MaxTTL: time.Hour, CacheSize: 100})
	lookup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := r.LookupIP(ctx, "ip4", "mx.example.org"); err != nil {
			t.Fatal(err)
		}
	}
	lookup()
	before := dnsSeries(t)
	lookup()
	after := dnsSeries(t)
	if after["loopmx_dns_lookups_total/cache"] != before["loopmx_dns_lookups_total/cache"]+1 {
		t.Errorf("cache hits %v then %v: the cached lookup was not counted", before["loopmx_dns_lookups_total/cache"], after["loopmx_dns_lookups_total/cache"])
	}
	if after["loopmx_dns_queries_total/ok"] < 1 {
		t.Errorf("no query counted ok: %v", after)
	}
	if after["loopmx_dns_lookups_total/query"] != before["loopmx_dns_lookups_total/query"] {
		t.Error("a cached lookup counted as a query")
	}
}
