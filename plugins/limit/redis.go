package limit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"loopmx/internal/redisx"
	"loopmx/plugins"
)

// These are the Redis keys limit uses; every one expires by itself.
const (
	// keyConn counts the connections of an IP in the current window.
	keyConn = "limit:conn:"
	// keyOpen is a sorted set of the open connections of an IP: one member
	// per connection, scored with the time (Unix ms) it stops counting
	// unless its process refreshes it.
	keyOpen = "limit:open:"
	// keySender counts the recipients of a sender in the current window.
	keySender = "limit:rcpt_sender:"
)

// countScript counts one event in a fixed window: the window opens with
// the key's first INCR and ends when the key expires. The PTTL check
// repairs a key that somehow lost its expiry, so no counter lives forever.
//
// KEYS[1] the counter; ARGV[1] the window in ms.
var countScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
`)

// connectScript does the connect checks in one round trip: it counts the
// connection in the IP's rate window and, unless that is over its limit,
// adds the connection to the IP's open set if fewer than the maximum are
// open. Members whose time has passed (connections of a process that
// died) are dropped first.
//
// KEYS[1] the rate counter, KEYS[2] the open set.
// ARGV[1] rate window in ms (0: no rate limit), ARGV[2] rate limit,
// ARGV[3] now in Unix ms, ARGV[4] member lifetime in ms, ARGV[5] member,
// ARGV[6] concurrency limit (0: none).
// It returns {rate count, open count including this one, admitted 0/1}.
var connectScript = redis.NewScript(`
local rate = 0
if tonumber(ARGV[1]) > 0 then
  rate = redis.call('INCR', KEYS[1])
  if rate == 1 or redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
  if rate > tonumber(ARGV[2]) then
    return {rate, 0, 0}
  end
end
local max = tonumber(ARGV[6])
if max == 0 then
  return {rate, 0, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local open = redis.call('ZCARD', KEYS[2])
if open >= max then
  return {rate, open + 1, 0}
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {rate, open + 1, 1}
`)

// member is one open connection in Redis: the set it is in and its name.
type member struct {
	key, name string
}

// redisStore keeps the counters in Redis, shared by every process and
// host that uses the same Redis database.
//
// The open-connection sets are the part that must not leak when a process
// dies: each member carries its own expiry time, which a keeper goroutine
// (one per plugin instance, not per connection) pushes forward every
// ttl/3 while the connection lives. The keeper also removes the members
// of closed connections, so the disconnect hook never waits for Redis and
// runs inline. A process that dies stops refreshing; its members stop
// counting ttl after their last refresh, and the set itself expires ttl
// after its last change.
type redisStore struct {
	client   *redisx.Client
	instance string // names this process and plugin instance in members
	ttl      time.Duration
	down     *redisx.DownLogger
	log      atomic.Pointer[zerolog.Logger]

	mu       sync.Mutex
	live     map[string]member // by connection id: admitted connections
	inflight map[string]bool   // connection ids whose connect is talking to Redis
	orphans  map[string]bool   // of those, the ones already disconnected
	releases []member          // members to remove from Redis

	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// maxPendingReleases bounds the removals kept while Redis is down; beyond
// it, members are left to expire by themselves.
const maxPendingReleases = 100000

func newRedisStore(client *redisx.Client, ttl time.Duration, down *redisx.DownLogger) *redisStore {
	host, _ := os.Hostname()
	var r [6]byte
	rand.Read(r[:])
	s := &redisStore{
		client:   client,
		instance: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(r[:])),
		ttl:      ttl,
		down:     down,
		live:     make(map[string]member),
		inflight: make(map[string]bool),
		orphans:  make(map[string]bool),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go s.keep()
	return s
}

func (s *redisStore) connect(c *plugins.Conn, ip string, st *settings) (connectCount, error) {
	s.log.CompareAndSwap(nil, c.Log)
	if err := takeDown(c); err != nil {
		return connectCount{}, err
	}
	conc := st.maxConcurrency > 0
	// The braces are a Redis Cluster hash tag: both keys of the connect
	// script hash by the address alone, so they live on one node.
	tag := "{" + ip + "}"
	m := member{key: keyOpen + tag, name: s.instance + "/" + c.ID}
	if conc {
		s.mu.Lock()
		s.inflight[c.ID] = true
		s.mu.Unlock()
	}
	var ratePer int64
	if st.connRate.On() {
		ratePer = st.connRate.Per.Milliseconds()
	}
	// The script's answer is settled inside the call: when Redis answers
	// after slow_call the hook has gone on without it (ErrSlow), and the
	// member it may have added must still be kept or given back.
	var cc connectCount
	err := s.client.Do(c.Log, func(ctx context.Context) error {
		res, err := connectScript.Run(ctx, s.client, []string{keyConn + tag, m.key},
			ratePer, st.connRate.N, time.Now().UnixMilli(), s.ttl.Milliseconds(), m.name, st.maxConcurrency).Int64Slice()
		var got connectCount
		if err == nil && len(res) == 3 {
			got = connectCount{rate: res[0], open: int(res[1]), admitted: res[2] == 1}
		} else if err == nil {
			err = fmt.Errorf("connect script returned %v", res)
		}
		if conc {
			s.settle(c.ID, m, got.admitted)
		}
		cc = got // read by the caller only when the call answered in time
		return err
	})
	if conc && (errors.Is(err, redisx.ErrDown) || errors.Is(err, redisx.ErrBusy) && !errors.Is(err, redisx.ErrSlow)) {
		s.settle(c.ID, m, false) // the call never ran
	}
	if err != nil {
		return connectCount{}, err
	}
	return cc, nil
}

// settle ends the connect call of connection id: its member m is kept
// for the keeper to refresh when Redis admitted it, or given back at once
// when the connection closed meanwhile (its hook had timed out, or had
// gone on after slow_call).
func (s *redisStore) settle(id string, m member, admitted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inflight, id)
	switch {
	case s.orphans[id]:
		delete(s.orphans, id)
		if admitted {
			s.releases = append(s.releases, m)
			s.signal()
		}
	case admitted:
		s.live[id] = m
	}
}

// disconnect hands the connection's member to the keeper for removal. It
// does not wait for Redis.
func (s *redisStore) disconnect(c *plugins.Conn, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.live[c.ID]; ok {
		delete(s.live, c.ID)
		if len(s.releases) < maxPendingReleases {
			s.releases = append(s.releases, m)
		}
		s.signal()
		return
	}
	if s.inflight[c.ID] {
		s.orphans[c.ID] = true
	}
}

// signal wakes the keeper; s.mu is held.
func (s *redisStore) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *redisStore) senderRcpt(sender string, per time.Duration) (int64, error) {
	var n int64
	err := s.client.Do(s.log.Load(), func(ctx context.Context) (err error) {
		n, err = countScript.Run(ctx, s.client, []string{keySender + sender}, per.Milliseconds()).Int64()
		return err
	})
	if err != nil {
		return 0, err // after ErrSlow, n belongs to the call still running
	}
	return n, nil
}

// keep is the keeper goroutine: it removes the members of closed
// connections as soon as it is woken, and refreshes the live ones every
// ttl/3.
func (s *redisStore) keep() {
	defer close(s.done)
	tick := time.NewTicker(s.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
			s.flushReleases()
		case <-tick.C:
			s.flushReleases()
			s.refresh()
		}
	}
}

// flushReleases removes the members of closed connections. On failure
// they are kept for the next try.
func (s *redisStore) flushReleases() {
	s.mu.Lock()
	rel := s.releases
	s.releases = nil
	s.mu.Unlock()
	if len(rel) == 0 {
		return
	}
	err := s.client.Background(s.log.Load(), func(ctx context.Context) error {
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, m := range rel {
				p.ZRem(ctx, m.key, m.name)
			}
			return nil
		})
		return err
	})
	if err != nil {
		s.down.Down(s.log.Load(), err)
		s.mu.Lock()
		if room := maxPendingReleases - len(s.releases); room > 0 {
			s.releases = append(s.releases, rel[:min(len(rel), room)]...)
		}
		s.mu.Unlock()
		return
	}
	s.down.Up(s.log.Load())
}

// refreshBatch is the number of members refreshed per round trip.
const refreshBatch = 1000

// refresh pushes the expiry of every live member ttl ahead, and of its
// set. ZADD without XX also puts back members that a Redis restart lost.
func (s *redisStore) refresh() {
	s.mu.Lock()
	live := make([]member, 0, len(s.live))
	for _, m := range s.live {
		live = append(live, m)
	}
	s.mu.Unlock()
	for len(live) > 0 {
		batch := live[:min(len(live), refreshBatch)]
		live = live[len(batch):]
		until := float64(time.Now().Add(s.ttl).UnixMilli())
		err := s.client.Background(s.log.Load(), func(ctx context.Context) error {
			_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, m := range batch {
					p.ZAdd(ctx, m.key, redis.Z{Score: until, Member: m.name})
					p.PExpire(ctx, m.key, s.ttl)
				}
				return nil
			})
			return err
		})
		if err != nil {
			s.down.Down(s.log.Load(), err)
			return
		}
	}
}

// close removes the members of every connection still counted, stops the
// keeper and hands the client back. Calls after the first do nothing and
// return the first one's error.
func (s *redisStore) close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		for id, m := range s.live {
			s.releases = append(s.releases, m)
			delete(s.live, id)
		}
		s.mu.Unlock()
		close(s.stop)
		<-s.done
		s.flushReleases()
		s.closeErr = redisx.Release(s.client)
	})
	return s.closeErr
}

// downNote carries, from BlocksConn to the hook, why the hook must answer
// without Redis (redisx.ErrDown or redisx.ErrBusy).
const downNote = "limit.redis_down"

// BlocksConn implements plugins.ConnBlocker. A hook goes to the workpool
// to talk to Redis only when Redis can take the call now: while the
// client's circuit breaker is open (Redis timed out or keeps failing), or
// max_inflight calls already wait for Redis, the hook runs inline on the
// event loop and answers at once as fail says, without contacting Redis
// and without a workpool round trip.
func (l *Limit) BlocksConn(c *plugins.Conn, _ plugins.Hook) bool {
	rs, ok := l.store.(*redisStore)
	if !ok {
		return false
	}
	if err := rs.client.Ready(c.Log); err != nil {
		c.SetNote(downNote, err)
		return false
	}
	return true
}

// takeDown returns, and clears, the reason BlocksConn left in c's notes
// for the hook to answer without Redis; nil when the hook may call Redis.
func takeDown(c *plugins.Conn) error {
	err, _ := c.Note(downNote).(error)
	if err != nil {
		c.SetNote(downNote, nil)
	}
	return err
}

var _ plugins.ConnBlocker = (*Limit)(nil)
