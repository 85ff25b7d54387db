package workpool

import (
	"sync"
	"testing"
)

// TestBoundedQueueRefuses: with every worker busy and the queue full, a
// submission is refused at once instead of waiting (the loop then answers
// 421 4.3.2); queued jobs still run once workers are free.
func TestBoundedQueueRefuses(t *testing.T) {
	p := New(1, 2)
	release := make(chan struct{})
	started := make(chan struct{})
	var ran sync.WaitGroup
	ran.Add(3)
	if !p.Submit(func() { close(started); <-release; ran.Done() }) {
		t.Fatal("first job refused")
	}
	<-started
	for i := 0; i < 2; i++ {
		if !p.Submit(func() { ran.Done() }) {
			t.Fatalf("job %d refused with room in the queue", i+2)
		}
	}
	if p.Submit(func() {}) {
		t.Fatal("a job was accepted past the queue bound")
	}
	if q, b := p.Queued(), p.Busy(); q != 2 || b != 1 {
		t.Errorf("Queued %d Busy %d, want 2 and 1", q, b)
	}
	close(release)
	ran.Wait()
	p.Close()
	if p.Submit(func() {}) {
		t.Error("a closed pool accepted a job")
	}
}

// TestSizeIsClamped: like UV_THREADPOOL_SIZE, the size is 1..128.
func TestSizeIsClamped(t *testing.T) {
	for _, c := range []struct{ in, want int }{{0, 1}, {4, 4}, {500, MaxWorkers}} {
		p := New(c.in, 1)
		if p.Workers() != c.want {
			t.Errorf("New(%d) has %d workers, want %d", c.in, p.Workers(), c.want)
		}
		p.Close()
	}
}

// TestJobsRunInOrder: one worker runs the queued jobs in the order they
// were submitted, through a queue that is taken from while it fills, and
// the pool then holds nothing.
func TestJobsRunInOrder(t *testing.T) {
	p := New(1, 1000)
	var got []int
	var mu sync.Mutex
	gate := make(chan struct{})
	p.Submit(func() { <-gate })
	for i := 0; i < 300; i++ {
		if i == 100 {
			close(gate) // the worker starts taking while the rest arrive
		}
		if !p.Submit(func() { mu.Lock(); got = append(got, i); mu.Unlock() }) {
			t.Fatalf("job %d refused", i)
		}
	}
	p.Close()
	if len(got) != 300 {
		t.Fatalf("%d jobs ran, want 300", len(got))
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("job %d ran in place %d", v, i)
		}
	}
	if q, b := p.Queued(), p.Busy(); q != 0 || b != 0 {
		t.Errorf("after Close: Queued %d Busy %d", q, b)
	}
}
