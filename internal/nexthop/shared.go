package nexthop

import (
	"fmt"
	"sync"
	"time"
)

// The pools of the process, shared by every user with the same protocol
// and settings: a forwarder and the prober of rcpt_to.verify that reads
// the same <plugin>.ini use the same idle sessions, and so do the
// plugins of two config generations while a reload (HUP) lets the old
// one finish. A pool is closed when its last user releases it.
var (
	poolsMu sync.Mutex
	pools   = map[string]*sharedEntry{}
	poolKey = map[*pool]string{}
)

type sharedEntry struct {
	p    *pool
	refs int
}

// sharedPool returns the process's pool for proto and s, made on first
// use; each call is matched by one releasePool.
func sharedPool(proto Protocol, s Settings) *pool {
	key := fmt.Sprintf("%d\x00%+v", proto, s)
	poolsMu.Lock()
	defer poolsMu.Unlock()
	e := pools[key]
	if e == nil {
		e = &sharedEntry{p: newPool(s.PoolSize, s.IdleTimeout, s.MaxMessages, min(s.CommandTimeout, 5*time.Second))}
		pools[key] = e
		poolKey[e.p] = key
	}
	e.refs++
	return e.p
}

// releasePool hands back a pool from sharedPool; the last release closes
// it (its idle sessions are ended with QUIT). A pool that is not shared
// is closed at once.
func releasePool(p *pool) {
	poolsMu.Lock()
	key, ok := poolKey[p]
	if ok {
		e := pools[key]
		if e.refs--; e.refs > 0 {
			poolsMu.Unlock()
			return
		}
		delete(pools, key)
		delete(poolKey, p)
	}
	poolsMu.Unlock()
	p.close()
}
