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
type Pool struct {
	jobs    chan func()
	wg      sync.WaitGroup
	busy    atomic.Int32
	workers int
	once    sync.Once
}

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
	p := &Pool{jobs: make(chan func(), queueLen), workers: workers}
	p.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go p.work()
	}
	return p
}

func (p *Pool) work() {
	defer p.wg.Done()
	for f := range p.jobs {
		p.busy.Add(1)
		f()
		p.busy.Add(-1)
	}
}

// Submit queues f. It returns false, without blocking, when the queue is
// full or the pool is closed.
func (p *Pool) Submit(f func()) (ok bool) {
	defer func() {
		if recover() != nil { // send on a closed channel: the pool is stopping
			ok = false
		}
	}()
	select {
	case p.jobs <- f:
		return true
	default:
		return false
	}
}

// Queued is the number of jobs waiting for a worker.
func (p *Pool) Queued() int { return len(p.jobs) }

// Busy is the number of workers running a job.
func (p *Pool) Busy() int { return int(p.busy.Load()) }

// Workers is the pool size.
func (p *Pool) Workers() int { return p.workers }

// Close stops taking jobs and waits for the queued ones to finish.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.jobs) })
	p.wg.Wait()
}
