package loop

import (
	"container/heap"
	"time"
)

// Timer kinds: what a connection in the timer heap waits for.
const (
	timerNone  uint8 = iota
	timerHook        // a blocking hook's deadline (the plugin's timeout)
	timerDelay       // a Delay asked by a hook (early_talker's pause)
	timerProxy       // the deadline for a PROXY protocol header
)

// The timer heap of a loop orders connections by deadline: blocking hooks
// waiting for their timeout and connections in a Delay.
type timerHeap []*epollConn

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].timerIdx = i
	h[j].timerIdx = j
}
func (h *timerHeap) Push(x any) {
	c := x.(*epollConn)
	c.timerIdx = len(*h)
	*h = append(*h, c)
}
func (h *timerHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.timerIdx = -1
	return c
}

func (el *eventLoop) addTimer(c *epollConn, kind uint8, at time.Time) {
	el.removeTimer(c)
	c.timerKind = kind
	c.deadline = at
	heap.Push(&el.timers, c)
}

func (el *eventLoop) removeTimer(c *epollConn) {
	if c.timerIdx >= 0 {
		heap.Remove(&el.timers, c.timerIdx)
	}
	c.timerKind = timerNone
}

// runTimers fires every due timer.
func (el *eventLoop) runTimers() {
	for len(el.timers) > 0 && !el.now.Before(el.timers[0].deadline) {
		c := heap.Pop(&el.timers).(*epollConn)
		c.timerFired()
	}
}
