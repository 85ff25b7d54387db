package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The histogram is log-linear, in the manner of HdrHistogram: values below
// subCount nanoseconds get a bucket each, and every power of two above that
// is cut into subCount equal buckets. A recorded value is therefore known to
// within 1/subCount (0.8%) of itself, at any magnitude, with a fixed table.
const (
	subBits    = 7
	subCount   = 1 << subBits
	maxBits    = 40 // values are clamped below 2^40 ns, about 18 minutes
	maxValue   = 1<<maxBits - 1
	numBuckets = (maxBits - subBits + 1) * subCount
)

// hist is a latency histogram that many goroutines record into at once.
// Record does not allocate or lock; reading it (quantile, summary) is meant
// for after the writers are done.
type hist struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Uint64
}

// bucketOf returns the index of the bucket that holds v.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	top := bits.Len64(v) - 1 // position of the highest set bit, >= subBits
	shift := top - subBits
	return shift*subCount + int(v>>shift)
}

// bucketBounds returns the lowest and the highest value that share bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < subCount {
		return uint64(i), uint64(i)
	}
	shift := i/subCount - 1
	lo = uint64(i%subCount+subCount) << shift
	return lo, lo + 1<<shift - 1
}

// record adds one observation of d; negative durations count as zero.
func (h *hist) record(d time.Duration) {
	v := uint64(max(d, 0))
	if v > maxValue {
		v = maxValue
	}
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// count returns how many values were recorded.
func (h *hist) count() uint64 { return h.n.Load() }

// quantile returns the value below or at which a fraction q of the recorded
// values lie: the highest value of the bucket holding the value of rank
// ceil(q*n), but never more than the largest value recorded. It returns 0
// for an empty histogram.
func (h *hist) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	mx := h.max.Load()
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			_, hi := bucketBounds(i)
			return time.Duration(min(hi, mx))
		}
	}
	return time.Duration(mx)
}

// Summary is the digest of one histogram that the report shows.
type Summary struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
}

// summary returns the count, mean and usual quantiles, in microseconds.
func (h *hist) summary() Summary {
	n := h.n.Load()
	if n == 0 {
		return Summary{}
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return Summary{
		Count: n,
		Mean:  float64(h.sum.Load()) / float64(n) / 1e3,
		P50:   us(h.quantile(0.50)),
		P90:   us(h.quantile(0.90)),
		P99:   us(h.quantile(0.99)),
		P999:  us(h.quantile(0.999)),
		Max:   us(time.Duration(h.max.Load())),
	}
}
