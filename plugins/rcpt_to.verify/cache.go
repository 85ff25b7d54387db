package rcptverify

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"loopmx/internal/redisx"
	"loopmx/plugins"
)

// answer is what the next hop said of a recipient, and until when it
// holds.
type answer struct {
	ok      bool
	expires int64 // Unix ms
}

// memCache keeps answers in the process's memory, so that a recipient
// verified before is answered on the event loop. It holds at most max
// entries: when it is full, expired entries go first, then arbitrary
// ones (a tenth of it), which only costs a probe or a Redis lookup
// later. The nil cache holds nothing.
type memCache struct {
	mu  sync.Mutex
	m   map[string]answer
	max int
}

func newMemCache(max int) *memCache {
	if max <= 0 {
		return nil
	}
	return &memCache{m: make(map[string]answer), max: max}
}

func (mc *memCache) get(key string, now time.Time) (answer, bool) {
	if mc == nil {
		return answer{}, false
	}
	mc.mu.Lock()
	defer mc.mu.Unlock()
	a, ok := mc.m[key]
	if ok && a.expires <= now.UnixMilli() {
		delete(mc.m, key)
		return answer{}, false
	}
	return a, ok
}

func (mc *memCache) put(key string, a answer, now time.Time) {
	if mc == nil {
		return
	}
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if _, ok := mc.m[key]; !ok && len(mc.m) >= mc.max {
		ms := now.UnixMilli()
		for k, v := range mc.m {
			if v.expires <= ms {
				delete(mc.m, k)
			}
		}
		for k := range mc.m {
			if len(mc.m) < mc.max-mc.max/10 {
				break
			}
			delete(mc.m, k)
		}
	}
	mc.m[key] = a
}

// In Redis an answer is a string "ok <expires>" or "no <expires>"
// (expires in Unix ms, so that the copy in memory ends with it), under
// the prefix and the recipient in lower case, expiring by itself.

// encode is the Redis value of a.
func (a answer) encode() string {
	word := "no "
	if a.ok {
		word = "ok "
	}
	return word + strconv.FormatInt(a.expires, 10)
}

// decode reads a Redis value; ok is false for one that is not ours.
func decode(v string) (answer, bool) {
	word, ms, _ := strings.Cut(v, " ")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || word != "ok" && word != "no" {
		return answer{}, false
	}
	return answer{ok: word == "ok", expires: n}, true
}

// redisGet looks the recipient up in Redis. A failure (Redis down, busy,
// slow) is no answer: the recipient is probed instead.
func (v *Verify) redisGet(c *plugins.Conn, key string, now time.Time) (answer, bool) {
	var val string
	err := v.client.Do(c.Log, func(ctx context.Context) (err error) {
		val, err = v.client.Get(ctx, v.prefix+key).Result()
		return err
	})
	switch {
	case errors.Is(err, redis.Nil):
		v.down.Up(c.Log)
		return answer{}, false
	case err != nil:
		v.redisFailed(c, err)
		return answer{}, false // after ErrSlow, val belongs to the call still running
	}
	v.down.Up(c.Log)
	a, ok := decode(val)
	return a, ok && a.expires > now.UnixMilli()
}

// redisPut shares an answer through Redis for the time it holds.
func (v *Verify) redisPut(c *plugins.Conn, key string, a answer, ttl time.Duration) {
	err := v.client.Do(c.Log, func(ctx context.Context) error {
		return v.client.Set(ctx, v.prefix+key, a.encode(), ttl).Err()
	})
	if err != nil {
		v.redisFailed(c, err)
		return
	}
	v.down.Up(c.Log)
}

// redisFailed logs an outage (redisx logs a busy Redis itself).
func (v *Verify) redisFailed(c *plugins.Conn, err error) {
	if !errors.Is(err, redisx.ErrBusy) {
		v.down.Down(c.Log, err)
	}
}
