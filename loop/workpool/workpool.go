// Package workpool is the bounded pool that runs blocking plugin work off
// the event loops: a fixed number of goroutines (threadpool_size, like
// libuv's UV_THREADPOOL_SIZE) and a bounded queue. When the queue is full,
// Submit refuses and the caller answers 421 4.3.2 instead of piling up.
package workpool

import (
	"sync"
	"sync/atomic"
)

// MaxWorkers is the largest pool size accepted, as in libuv.
const MaxWorkers = 128

// Pool runs submitted functions on a fixed set of goroutines.
//
// The queue is a slice that grows with the jobs waiting and is dropped
// when they are all taken, not a channel of queueLen slots: the garbage
// collector scans every slot of a channel's buffer in every cycle, and a
// default queue of tens of thousands of empty slots was most of a cycle's
// marking work on a server whose blocking work is rare
// (docs/benchmarks.md).
type Pool struct {
	mu      sync.Mutex
	ready   sync.Cond // signalled when a job is queued or the pool closes
	queue   []func()  // waiting jobs; queue[head:] in order
	head    int
	limit   int
	closed  bool
	wg      sync.WaitGroup
	busy    atomic.Int32
	workers int
}

// keptSlots is the queue capacity kept once it is empty again; a burst
// that grew it further gives the memory back.
const keptSlots = 64

// New starts workers goroutines (1..MaxWorkers) sharing a queue of
// queueLen pending jobs.
func New(workers, queueLen int) *Pool {
	if workers < 1 {
		workers = 1
	}
	if workers > MaxWorkers {
		workers = MaxWorkers
	}
	if queueLen < 1 {
		queueLen = 1
	}
	p := &Pool{limit: queueLen, workers: workers}
	p.ready.L = &p.mu
	p.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go p.work()
	}
	return p
}

func (p *Pool) work() {
	defer p.wg.Done()
	for {
		f := p.take()
		if f == nil {
			return
		}
		f()
		p.busy.Add(-1)
	}
}

// take waits for the next job; nil once the pool is closed and empty.
func (p *Pool) take() func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.head == len(p.queue) {
		if p.closed {
			return nil
		}
		p.ready.Wait()
	}
	f := p.queue[p.head]
	p.queue[p.head] = nil
	p.head++
	if p.head == len(p.queue) {
		p.head = 0
		p.queue = p.queue[:0]
		if cap(p.queue) > keptSlots {
			p.queue = nil
		}
	}
	p.busy.Add(1)
	return f
}

// Submit queues f. It returns false, without blocking, when the queue is
// full or the pool is closed.
func (p *Pool) Submit(f func()) bool {
	p.mu.Lock()
	if p.closed || len(p.queue)-p.head >= p.limit {
		p.mu.Unlock()
		return false
	}
	if p.head > 0 && len(p.queue) == cap(p.queue) {
		// Full to the end: move the waiting jobs to the front rather than
		// grow past what is waiting.
		n := copy(p.queue, p.queue[p.head:])
		clear(p.queue[n:])
		p.queue, p.head = p.queue[:n], 0
	}
	p.queue = append(p.queue, f)
	p.mu.Unlock()
	p.ready.Signal()
	return true
}

// Queued is the number of jobs waiting for a worker.
func (p *Pool) Queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue) - p.head
}

// Busy is the number of workers running a job.
func (p *Pool) Busy() int { return int(p.busy.Load()) }

// Workers is the pool size.
func (p *Pool) Workers() int { return p.workers }

// Close stops taking jobs and waits for the queued ones to finish.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ready.Broadcast()
	p.wg.Wait()
}
