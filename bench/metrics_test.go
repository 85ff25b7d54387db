package main

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestScrapeAndQuantile: the banner histogram is summed over its series
// (workers, listeners), and its quantile is Prometheus' histogram_quantile:
// linear within the bucket holding the rank.
func TestScrapeAndQuantile(t *testing.T) {
	page := `# HELP loopmx_banner_seconds x
# TYPE loopmx_banner_seconds histogram
loopmx_banner_seconds_bucket{listener="a",worker="1-2",le="0.001"} 50
loopmx_banner_seconds_bucket{listener="a",worker="1-2",le="0.01"} 90
loopmx_banner_seconds_bucket{listener="a",worker="1-2",le="+Inf"} 100
loopmx_banner_seconds_bucket{listener="a",worker="2-3",le="0.001"} 50
loopmx_banner_seconds_bucket{listener="a",worker="2-3",le="0.01"} 90
loopmx_banner_seconds_bucket{listener="a",worker="2-3",le="+Inf"} 100
loopmx_listen_queue_length{listener="a",socket="shared"} 3
loopmx_listen_queue_recent_max{listener="a",socket="shared"} 7
loopmx_listen_queue_limit{listener="a",socket="shared"} 64
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, page) }))
	defer srv.Close()
	st, err := scrape(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if st.banner.count() != 200 || st.queue != 7 || st.qmax != 64 {
		t.Fatalf("count %v, queue %v of %v; want 200, 7 of 64", st.banner.count(), st.queue, st.qmax)
	}
	// Rank 100 of 200 is the 100th: the end of the first bucket.
	if q := st.banner.quantile(0.5); math.Abs(q-0.001) > 1e-12 {
		t.Errorf("p50 = %v, want 0.001", q)
	}
	// Rank 140: 40 of the 80 in (0.001, 0.01]: halfway.
	if q := st.banner.quantile(0.7); math.Abs(q-0.0055) > 1e-12 {
		t.Errorf("p70 = %v, want 0.0055", q)
	}
	// Rank 198 is in +Inf: the highest finite bound.
	if q := st.banner.quantile(0.99); q != 0.01 {
		t.Errorf("p99 = %v, want 0.01", q)
	}
	if w := st.banner.width(0.005); math.Abs(w-0.009) > 1e-12 {
		t.Errorf("width at 5 ms = %v, want 9 ms", w)
	}
	d := st.banner.minus(st.banner)
	if d.count() != 0 || !math.IsNaN(d.quantile(0.99)) {
		t.Errorf("a histogram less itself: count %v, p99 %v", d.count(), d.quantile(0.99))
	}
}
