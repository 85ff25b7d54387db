package limit

import (
	"hash/maphash"
	"testing"
	"time"
)

func TestWindowsExpire(t *testing.T) {
	w := newWindows()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if n := w.incr("192.0.2.1", time.Minute, now); n != int64(i+1) {
			t.Fatalf("count %d, want %d", n, i+1)
		}
	}
	now = now.Add(59 * time.Second)
	if n := w.incr("192.0.2.1", time.Minute, now); n != 4 {
		t.Fatalf("inside the window: %d, want 4", n)
	}
	now = now.Add(time.Second)
	if n := w.incr("192.0.2.1", time.Minute, now); n != 1 {
		t.Fatalf("after the window: %d, want a new window at 1", n)
	}

	// Keys that are seen no more are swept: the table does not grow with
	// every address that ever connected.
	for i := range 1000 {
		w.incr(string(rune(0x100+i)), time.Minute, now)
	}
	if w.size() < 1000 {
		t.Fatalf("size %d", w.size())
	}
	now = now.Add(2 * time.Minute)
	for i := range 1000 {
		w.incr(string(rune(0x10000+i)), time.Minute, now)
	}
	if n := w.size(); n != 1000 {
		t.Fatalf("%d keys held, want only the 1000 of the current windows", n)
	}
}

func TestOpenCounts(t *testing.T) {
	o := openCounts{seed: maphash.MakeSeed()}
	if n, ok := o.acquire("a", 2); n != 1 || !ok {
		t.Fatal(n, ok)
	}
	if n, ok := o.acquire("a", 2); n != 2 || !ok {
		t.Fatal(n, ok)
	}
	if n, ok := o.acquire("a", 2); n != 3 || ok {
		t.Fatal(n, ok)
	}
	o.release("a")
	o.release("a")
	o.release("a") // one too many is harmless
	for i := range shardCount {
		if len(o.shards[i].m) != 0 {
			t.Fatalf("shard %d still holds %v", i, o.shards[i].m)
		}
	}
}

// size is the number of keys w holds.
func (w *windows) size() int {
	n := 0
	for i := range w.shards {
		sh := &w.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
