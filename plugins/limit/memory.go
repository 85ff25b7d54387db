package limit

import (
	"hash/maphash"
	"sync"
	"time"

	"loopmx/plugins"
)

// shardCount splits each in-memory table so that the event loops seldom
// wait for one another's lock, and a sweep of expired windows walks only
// one shard at a time.
const shardCount = 32

// memory keeps the counters in this process. Its methods hold a shard's
// lock for a map operation only, so the hooks that use it run inline on
// the event loop.
type memory struct {
	now    func() time.Time
	conn   windows // connections per IP per period
	sender windows // recipients per sender per period
	open   openCounts
}

func newMemory() *memory {
	return &memory{now: time.Now, conn: newWindows(), sender: newWindows(), open: openCounts{seed: maphash.MakeSeed()}}
}

// concNote marks, in the connection's notes, a connection that the
// in-memory concurrency count holds, so that disconnect gives it back.
const concNote = "limit.open"

func (m *memory) connect(c *plugins.Conn, ip string, s *settings) (connectCount, error) {
	var cc connectCount
	if s.connRate.On() {
		cc.rate = m.conn.incr(ip, s.connRate.Per, m.now())
		if cc.rate > s.connRate.N {
			return cc, nil
		}
	}
	if s.maxConcurrency > 0 {
		cc.open, cc.admitted = m.open.acquire(ip, s.maxConcurrency)
		if cc.admitted {
			c.SetNote(concNote, true)
		}
	}
	return cc, nil
}

func (m *memory) disconnect(c *plugins.Conn, ip string) {
	if held, _ := c.Note(concNote).(bool); held {
		c.SetNote(concNote, false)
		m.open.release(ip)
	}
}

func (m *memory) senderRcpt(sender string, per time.Duration) (int64, error) {
	return m.sender.incr(sender, per, m.now()), nil
}

func (m *memory) close() error { return nil }

// windows counts events per key in fixed windows: a key's window opens at
// its first event and lasts one period; the next event after that opens a
// new one. Expired windows are swept from a shard at most once a period,
// when the shard is next used, so the table holds only keys seen in about
// the last two periods.
type windows struct {
	seed   maphash.Seed
	shards [shardCount]windowShard
}

type windowShard struct {
	mu    sync.Mutex
	m     map[string]window
	sweep time.Time
}

type window struct {
	n   int64
	end time.Time
}

func newWindows() windows { return windows{seed: maphash.MakeSeed()} }

// incr counts one event for key and returns the count in its window.
func (w *windows) incr(key string, per time.Duration, now time.Time) int64 {
	sh := &w.shards[maphash.String(w.seed, key)%shardCount]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[string]window)
	}
	if !now.Before(sh.sweep) {
		for k, win := range sh.m {
			if !now.Before(win.end) {
				delete(sh.m, k)
			}
		}
		sh.sweep = now.Add(per)
	}
	win, ok := sh.m[key]
	if !ok || !now.Before(win.end) {
		win = window{end: now.Add(per)}
	}
	win.n++
	sh.m[key] = win
	return win.n
}

// openCounts counts open connections per IP. A key is deleted when its
// count drops to zero, so the table holds only IPs with open connections.
type openCounts struct {
	seed   maphash.Seed
	shards [shardCount]openShard
}

type openShard struct {
	mu sync.Mutex
	m  map[string]int
}

// acquire counts one more connection for key unless max are open
// already. It returns the count including the new connection and whether
// it was admitted.
func (o *openCounts) acquire(key string, max int) (int, bool) {
	sh := &o.shards[maphash.String(o.seed, key)%shardCount]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[string]int)
	}
	n := sh.m[key]
	if n >= max {
		return n + 1, false
	}
	sh.m[key] = n + 1
	return n + 1, true
}

// release gives back one connection of key.
func (o *openCounts) release(key string) {
	sh := &o.shards[maphash.String(o.seed, key)%shardCount]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.m[key]; n > 1 {
		sh.m[key] = n - 1
	} else {
		delete(sh.m, key)
	}
}
