package nexthop

import (
	"sync"
	"time"
)

// pool keeps idle sessions per next hop so that messages from many client
// connections share a few backend sessions. The newest idle session is
// used first; so the ones below it have been idle longer, and when the
// top one has expired all have.
type pool struct {
	max    int           // idle sessions kept per host
	ttl    time.Duration // idle_timeout
	maxTxs int           // max_messages_per_connection
	bye    time.Duration // how long a QUIT may take

	mu     sync.Mutex
	idle   map[string][]*conn
	closed bool

	stop     chan struct{}
	sweeping sync.WaitGroup
	quitting sync.WaitGroup // sessions being closed politely
}

func newPool(max int, ttl time.Duration, maxTxs int, bye time.Duration) *pool {
	p := &pool{max: max, ttl: ttl, maxTxs: maxTxs, bye: bye, idle: map[string][]*conn{}, stop: make(chan struct{})}
	p.sweeping.Go(p.sweep)
	return p
}

// get returns an idle session with host, or nil when there is none that
// is still fresh.
func (p *pool) get(host string, now time.Time) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[host]
	if len(list) == 0 {
		return nil
	}
	c := list[len(list)-1]
	if now.Sub(c.idleSince) >= p.ttl {
		p.idle[host] = nil
		p.retire(list...)
		return nil
	}
	p.idle[host] = list[:len(list)-1]
	return c
}

// put returns a session after a delivery. A broken session is closed; one
// that has carried max_messages_per_connection messages, or that finds
// the pool full or closed, is ended with QUIT.
func (p *pool) put(c *conn, now time.Time) {
	if c.unusable {
		c.close()
		return
	}
	if c.switched {
		// XCLIENT made it the session of one client, and the next hop
		// allows no second switch (the client it now sees is not one it
		// trusts with XCLIENT).
		p.retire(c)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		// close may be waiting for the goodbyes it started; this one is
		// said here rather than added to them.
		c.quit(p.bye)
		return
	}
	defer p.mu.Unlock()
	if c.txs >= p.maxTxs || len(p.idle[c.host]) >= p.max {
		p.retire(c)
		return
	}
	c.idleSince, c.limit = now, time.Time{}
	p.idle[c.host] = append(p.idle[c.host], c)
}

// flush closes every idle session with host: one of them turned out dead,
// and the others have been idle at least as long.
func (p *pool) flush(host string) {
	p.mu.Lock()
	list := p.idle[host]
	p.idle[host] = nil
	p.mu.Unlock()
	for _, c := range list {
		c.close()
	}
}

// retire ends sessions with QUIT in the background, so that the delivery
// that let go of them does not wait for the goodbye.
func (p *pool) retire(cs ...*conn) {
	for _, c := range cs {
		p.quitting.Go(func() { c.quit(p.bye) })
	}
}

// sweep ends sessions that have been idle for idle_timeout, so that the
// next hop does not keep them open for nothing.
func (p *pool) sweep() {
	t := time.NewTicker(max(p.ttl/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.mu.Lock()
			for host, list := range p.idle {
				n := 0
				for n < len(list) && now.Sub(list[n].idleSince) >= p.ttl {
					n++
				}
				p.retire(list[:n]...)
				p.idle[host] = append(list[:0:0], list[n:]...)
			}
			p.mu.Unlock()
		}
	}
}

// close ends every idle session with QUIT and waits for the goodbyes;
// sessions still in use are ended when they come back.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	for _, list := range p.idle {
		p.retire(list...)
	}
	p.idle = map[string][]*conn{}
	p.mu.Unlock()
	close(p.stop)
	p.sweeping.Wait()
	p.quitting.Wait()
}
