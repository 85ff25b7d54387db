package rcptverify

import (
	"strconv"
	"testing"
	"time"
)

func TestMemCacheExpiresAndStaysBounded(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	mc := newMemCache(100)
	mc.put("bob@example.com", answer{ok: true, expires: now.Add(time.Hour).UnixMilli()}, now)
	mc.put("nobody@example.com", answer{expires: now.Add(time.Minute).UnixMilli()}, now)
	if a, ok := mc.get("nobody@example.com", now.Add(59*time.Second)); !ok || a.ok {
		t.Errorf("a negative answer within its time: %+v, %v", a, ok)
	}
	if _, ok := mc.get("nobody@example.com", now.Add(time.Minute)); ok {
		t.Error("a negative answer outlived its time")
	}
	if a, ok := mc.get("bob@example.com", now.Add(time.Minute)); !ok || !a.ok {
		t.Errorf("a positive answer within its time: %+v, %v", a, ok)
	}
	for i := range 1000 {
		mc.put(strconv.Itoa(i)+"@example.com", answer{ok: true, expires: now.Add(time.Hour).UnixMilli()}, now)
		if len(mc.m) > 100 {
			t.Fatalf("the cache holds %d answers, more than its 100", len(mc.m))
		}
	}
	if newMemCache(0) != nil {
		t.Error("cache_size = 0 keeps a cache")
	}
	var none *memCache
	none.put("x@example.com", answer{ok: true, expires: now.Add(time.Hour).UnixMilli()}, now)
	if _, ok := none.get("x@example.com", now); ok {
		t.Error("the nil cache answered")
	}
}

func TestRedisValue(t *testing.T) {
	for _, a := range []answer{{ok: true, expires: 1893553445000}, {ok: false, expires: 42}} {
		if got, ok := decode(a.encode()); !ok || got != a {
			t.Errorf("decode(%q) = %+v, %v; want %+v", a.encode(), got, ok, a)
		}
	}
	for _, v := range []string{"", "ok", "yes 12", "ok twelve"} {
		if _, ok := decode(v); ok {
			t.Errorf("decode(%q) took a value that is not ours", v)
		}
	}
}
