package metrics

import "time"

// DurationBuckets are the upper bounds, in seconds, of every duration
// histogram loopmx exports: fine below a millisecond for inline hooks and
// the workpool's wait, and through 0.1 s (the banner SLO) up to 30 s for
// a queue that forwards. Fixed bounds let each event loop keep its own
// counts and the scrape add them up.
var DurationBuckets = []float64{
	.00001, .00005, .0001, .00025, .0005,
	.001, .0025, .005, .01, .025, .05, .1,
	.25, .5, 1, 2.5, 5, 10, 30,
}

// SizeBuckets are the upper bounds, in bytes, of the message size
// histogram.
var SizeBuckets = []float64{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20}

const (
	numDur  = 19 // len(DurationBuckets)
	numSize = 9  // len(SizeBuckets)
)

// durBounds and sizeBounds are the bounds in the units recorded.
var (
	durBounds  [numDur]int64
	sizeBounds [numSize]int64
)

func init() {
	if len(DurationBuckets) != numDur || len(SizeBuckets) != numSize {
		panic("metrics: bucket tables and their lengths disagree")
	}
	for i, b := range DurationBuckets {
		durBounds[i] = int64(b * float64(time.Second))
	}
	for i, b := range SizeBuckets {
		sizeBounds[i] = int64(b)
	}
}

// DurHist counts durations into DurationBuckets. It is a plain value:
// one goroutine writes it, and readers get a copy.
type DurHist struct {
	Counts [numDur + 1]uint64 // per bucket, not cumulative; the last is +Inf
	SumNs  int64
}

// Observe adds one duration; a negative one counts as zero.
func (h *DurHist) Observe(d time.Duration) {
	v := max(int64(d), 0)
	h.Counts[bucket(durBounds[:], v)]++
	h.SumNs += v
}

// Add adds o's counts to h.
func (h *DurHist) Add(o *DurHist) {
	addCounts(h.Counts[:], o.Counts[:])
	h.SumNs += o.SumNs
}

// Count is the number of observations.
func (h *DurHist) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// SizeHist counts sizes into SizeBuckets.
type SizeHist struct {
	Counts [numSize + 1]uint64
	Sum    int64
}

// Observe adds one size.
func (h *SizeHist) Observe(n int64) {
	h.Counts[bucket(sizeBounds[:], n)]++
	h.Sum += n
}

// Add adds o's counts to h.
func (h *SizeHist) Add(o *SizeHist) {
	addCounts(h.Counts[:], o.Counts[:])
	h.Sum += o.Sum
}

// bucket is the index of the first bound v does not exceed, or
// len(bounds) for +Inf.
func bucket(bounds []int64, v int64) int {
	i := 0
	for i < len(bounds) && v > bounds[i] {
		i++
	}
	return i
}

// addCounts adds src to dst, bucket by bucket.
func addCounts(dst, src []uint64) {
	for i := range dst {
		dst[i] += src[i]
	}
}

// cumulative turns per-bucket counts into the cumulative map a constant
// Prometheus histogram takes, and returns the total count.
func cumulative(bounds []float64, counts []uint64) (map[float64]uint64, uint64) {
	m := make(map[float64]uint64, len(bounds))
	var n uint64
	for i, b := range bounds {
		n += counts[i]
		m[b] = n
	}
	return m, n + counts[len(bounds)]
}
