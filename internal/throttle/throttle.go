package throttle

import (
	"sync/atomic"
	"time"
)

// Throttle lets a log line through at most once per Every and counts the
// lines it held back in between. Events that come in floods (a resolver
// that is down, an overloaded server, descriptors running out) use one per
// kind of line and per process, never per connection. The zero value with
// Every set is ready to use; it is safe for concurrent use.
type Throttle struct {
	Every time.Duration

	last atomic.Int64 // UnixNano of the last line let through
	held atomic.Int64 // lines held back since then
}

// Allow reports whether a line may be written at now. When it may, held
// is the number of lines held back since the previous one.
func (t *Throttle) Allow(now time.Time) (ok bool, held int64) {
	n := now.UnixNano()
	prev := t.last.Load()
	if prev != 0 && n-prev < int64(t.Every) || !t.last.CompareAndSwap(prev, n) {
		t.held.Add(1)
		return false, 0
	}
	return true, t.held.Swap(0)
}
