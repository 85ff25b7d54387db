package redisx_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/redisx"
	"loopmx/internal/redisx/redistest"
)

// loadDir writes files (name -> content) into a new config directory and
// loads it.
func loadDir(t *testing.T, files map[string]string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestNotConfigured(t *testing.T) {
	cfg := loadDir(t, nil)
	c, ok, err := redisx.Open(cfg)
	if c != nil || ok || err != nil {
		t.Fatalf("Client without redis.ini = %v, %v, %v; want nil, false, nil", c, ok, err)
	}
	def, err := config.Default(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok, err := redisx.Open(def); c != nil || ok || err != nil {
		t.Fatalf("Open on the built-in default config = %v, %v, %v; want nil, false, nil", c, ok, err)
	}
}

func TestDefaults(t *testing.T) {
	cfg := loadDir(t, map[string]string{"redis.ini": "; all defaults\n"})
	s, ok, err := redisx.Load(cfg)
	if err != nil || !ok {
		t.Fatalf("Load = %v, %v", ok, err)
	}
	want := redisx.Settings{Server: "127.0.0.1:6379", PoolSize: 10, DialTimeout: time.Second,
		ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond,
		MaxInflight: 2, SlowCall: 500 * time.Millisecond, BreakerFailures: 3, BreakerBackoff: time.Second,
		BreakerBackoffMax: 30 * time.Second}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("settings = %+v, want %+v", s, want)
	}
	cfg = loadDir(t, map[string]string{"redis.ini": "server = [::1]:6380\ndb = 3\npassword = s3cret\npool_size = 4\n" +
		"dial_timeout = 2s\nread_timeout = 250ms\nwrite_timeout = 1\n" +
		"max_inflight = 6\nslow_call = 20ms\nbreaker_failures = 5\nbreaker_backoff = 250ms\nbreaker_backoff_max = 1m\n"})
	s, _, err = redisx.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want = redisx.Settings{Server: "[::1]:6380", DB: 3, Password: "s3cret", PoolSize: 4, DialTimeout: 2 * time.Second,
		ReadTimeout: 250 * time.Millisecond, WriteTimeout: time.Second,
		MaxInflight: 6, SlowCall: 20 * time.Millisecond, BreakerFailures: 5, BreakerBackoff: 250 * time.Millisecond, BreakerBackoffMax: time.Minute}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("settings = %+v, want %+v", s, want)
	}
	o := s.Options()
	if o.Addrs[0] != "[::1]:6380" || o.DB != 3 || o.Password != "s3cret" || o.PoolSize != 4 || o.ReadTimeout != 250*time.Millisecond {
		t.Errorf("options = %+v", o)
	}
	// slow_call follows read_timeout unless set.
	cfg = loadDir(t, map[string]string{"redis.ini": "read_timeout = 2s\n"})
	if s, _, _ := redisx.Load(cfg); s.SlowCall != 2*time.Second {
		t.Errorf("read_timeout = 2s: slow_call defaults to %v, want 2s", s.SlowCall)
	}
	// Without max_inflight, a small workpool keeps a worker Redis cannot
	// take: half of threadpool_size, at least 1.
	for pool, inflight := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 64: 2} {
		cfg = loadDir(t, map[string]string{"redis.ini": "", "smtp.ini": fmt.Sprintf("threadpool_size = %d\n", pool)})
		if s, _, _ := redisx.Load(cfg); s.MaxInflight != inflight {
			t.Errorf("threadpool_size = %d: max_inflight defaults to %d, want %d", pool, s.MaxInflight, inflight)
		}
	}
}

func TestBadSettings(t *testing.T) {
	for _, tc := range []struct{ ini, want string }{
		{"server = localhost", `config: redis.ini: [main] server: "localhost" is not host:port`},
		{"server = :6379", `config: redis.ini: [main] server: ":6379" is not host:port`},
		{"server = localhost:redis", `config: redis.ini: [main] server: "localhost:redis" has no valid port`},
		{"db = -1", `config: redis.ini: [main] db: "-1" is out of range (minimum 0)`},
		{"db = two", `config: redis.ini: [main] db: "two" is not a number`},
		{"pool_size = 0", `config: redis.ini: [main] pool_size: "0" is out of range (minimum 1)`},
		{"read_timeout = 0", `config: redis.ini: [main] read_timeout: "0" must be more than 0`},
		{"max_inflight = 0", `config: redis.ini: [main] max_inflight: "0" is out of range (minimum 1)`},
		{"slow_call = 0", `config: redis.ini: [main] slow_call: "0" must be more than 0`},
		{"breaker_failures = 0", `config: redis.ini: [main] breaker_failures: "0" is out of range (minimum 1)`},
		{"breaker_backoff = 0s", `config: redis.ini: [main] breaker_backoff: "0s" must be more than 0`},
		{"breaker_backoff = 10s\nbreaker_backoff_max = 5s", `config: redis.ini: [main] breaker_backoff_max: "5s" is less than breaker_backoff`},
		{"dial_timeout = soon", `config: redis.ini: [main] dial_timeout: "soon" is not a duration (like 30s, 5m, or 300 for seconds)`},
		{"host = redis.example", `config: redis.ini: [main] unknown key "host"`},
		{"timeout = 5s", `config: redis.ini: [main] unknown key "timeout" (use dial_timeout, read_timeout, write_timeout)`},
	} {
		cfg := loadDir(t, map[string]string{"redis.ini": tc.ini + "\n"})
		c, ok, err := redisx.Open(cfg)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: error %v, want %s", tc.ini, err, tc.want)
		}
		if c != nil || ok {
			t.Errorf("%q: got a client with a bad config", tc.ini)
		}
	}
}

func TestOneClientPerConfigDir(t *testing.T) {
	a := loadDir(t, map[string]string{"redis.ini": "server = 127.0.0.1:1\n"})
	b := loadDir(t, map[string]string{"redis.ini": "server = 127.0.0.1:1\n"})

	// Many plugins set up at once still share one client.
	var wg sync.WaitGroup
	got := make([]any, 8)
	for i := range got {
		wg.Go(func() {
			c, ok, err := redisx.Open(a)
			if err != nil || !ok {
				t.Errorf("Client: %v, %v", ok, err)
			}
			got[i] = c
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("caller %d got another client", i)
		}
	}
	ca, _, _ := redisx.Open(a)
	cb, _, _ := redisx.Open(b)
	if ca == cb {
		t.Fatal("two config directories share a client")
	}

	// The client stays open until its last user releases it.
	for range len(got) {
		if err := redisx.Release(ca); err != nil {
			t.Fatal(err)
		}
	}
	if err := ca.Ping(context.Background()).Err(); err != nil && err.Error() == "redis: client is closed" {
		t.Fatal("client closed while a user still holds it")
	}
	redisx.Release(ca)
	if err := ca.Ping(context.Background()).Err(); err == nil || err.Error() != "redis: client is closed" {
		t.Fatalf("after the last Release, Ping = %v; want the client closed", err)
	}
	if again, _, _ := redisx.Open(a); again == ca {
		t.Fatal("Client handed out a closed client")
	} else {
		redisx.Release(again)
	}
	redisx.Release(cb)
	if err := redisx.Release(cb); err != nil {
		t.Fatalf("a second Release: %v", err)
	}
}

// TestOutageAndRecovery kills Redis under a client in use: commands fail
// with errors (no panic, also from many goroutines at once), and after a
// restart on the same port the same client works again by itself.
func TestOutageAndRecovery(t *testing.T) {
	srv := redistest.Start(t)
	c, _, _ := openGuarded(t, srv)
	ctx := context.Background()
	if err := c.Set(ctx, "redisx:test", "1", time.Minute).Err(); err != nil {
		t.Fatalf("SET with Redis up: %v", err)
	}

	srv.Kill()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if err := c.Incr(ctx, "redisx:test").Err(); err == nil {
				t.Error("INCR succeeded with Redis killed")
			}
		})
	}
	wg.Wait()

	srv.Restart()
	deadline := time.Now().Add(20 * time.Second)
	for c.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the client did not reconnect after Redis came back: %v", c.Ping(ctx).Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Set(ctx, "redisx:test", "2", time.Minute).Err(); err != nil {
		t.Fatalf("SET after the restart: %v", err)
	}
}

// TestContribExample: contrib/config/redis.ini.example, renamed to
// redis.ini as its first line says, loads with the values it shows.
func TestContribExample(t *testing.T) {
	text, err := os.ReadFile("../../contrib/config/redis.ini.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg := loadDir(t, map[string]string{"redis.ini": string(text)})
	s, ok, err := redisx.Load(cfg)
	if err != nil || !ok {
		t.Fatalf("Load: %v, %v", ok, err)
	}
	if s.MaxInflight != 2 || s.SlowCall != 500*time.Millisecond || s.BreakerFailures != 3 || s.BreakerBackoff != time.Second || s.BreakerBackoffMax != 30*time.Second {
		t.Errorf("the example's guards: %+v", s)
	}
}
