package main

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestBucketsCoverEveryValueOnce(t *testing.T) {
	// Buckets are contiguous: each starts right after the previous one ends.
	for i := 1; i < numBuckets; i++ {
		lo, _ := bucketBounds(i)
		_, prevHi := bucketBounds(i - 1)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, bucket %d ends at %d", i, lo, i-1, prevHi)
		}
	}
	if got := bucketOf(maxValue); got != numBuckets-1 {
		t.Errorf("bucketOf(maxValue) = %d, want the last bucket %d", got, numBuckets-1)
	}
}

func TestBucketHoldsValueWithinOnePercent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	values := []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 1<<20 - 1, maxValue}
	for range 10000 {
		values = append(values, rng.Uint64N(maxValue))
	}
	for _, v := range values {
		lo, hi := bucketBounds(bucketOf(v))
		if v < lo || v > hi {
			t.Fatalf("value %d put in bucket [%d, %d]", v, lo, hi)
		}
		if width := hi - lo; float64(width) > float64(v)/subCount {
			t.Fatalf("value %d: bucket [%d, %d] is wider than 1/%d of it", v, lo, hi, subCount)
		}
	}
}

func TestQuantilesOfUniformLatencies(t *testing.T) {
	var h hist
	for i := 1; i <= 10000; i++ { // 1 µs .. 10 ms
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.9, 9 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}} {
		got := h.quantile(c.q)
		if rel := math.Abs(float64(got-c.want)) / float64(c.want); rel > 0.01 {
			t.Errorf("p%g = %v, want %v within 1%%", c.q*100, got, c.want)
		}
	}
	s := h.summary()
	if s.Count != 10000 || s.Max != 10000 || s.Mean != 5000.5 {
		t.Errorf("summary = %+v, want count 10000, max 10000µs, mean 5000.5µs", s)
	}
}

func TestQuantileEdges(t *testing.T) {
	var h hist
	if got := h.quantile(0.99); got != 0 {
		t.Errorf("empty histogram: p99 = %v, want 0", got)
	}
	h.record(3 * time.Millisecond)
	for _, q := range []float64{0, 0.5, 0.999, 1} {
		if got := h.quantile(q); got != 3*time.Millisecond {
			t.Errorf("one value of 3ms: quantile(%g) = %v, want exactly 3ms (capped by the max)", q, got)
		}
	}
	var small hist
	for v := range 4 {
		small.record(time.Duration(v + 1)) // 1..4 ns: exact buckets
	}
	if got := small.quantile(0.5); got != 2 {
		t.Errorf("p50 of 1,2,3,4 ns = %v, want 2ns", got)
	}
	var huge hist
	huge.record(time.Hour)
	huge.record(-time.Second)
	if got := huge.quantile(1); got != maxValue {
		t.Errorf("an hour is clamped to %v, got %v", time.Duration(maxValue), got)
	}
	if got := huge.quantile(0.5); got != 0 {
		t.Errorf("a negative duration counts as 0, got %v", got)
	}
}

func TestRecordFromManyGoroutines(t *testing.T) {
	var h hist
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				h.record(time.Duration(g*5000+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	if h.count() != 40000 {
		t.Fatalf("count = %d, want 40000", h.count())
	}
	if got := h.quantile(1); got != 39999*time.Microsecond {
		t.Errorf("max = %v, want 39.999ms", got)
	}
}
