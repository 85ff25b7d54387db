package redisx_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"loopmx/config"
	"loopmx/internal/redisx"
	"loopmx/internal/redisx/redistest"
)

// openIn opens the client of a config directory whose redis.ini was
// written by write.
func openIn(t *testing.T, write func(dir string)) *redisx.Client {
	t.Helper()
	dir := t.TempDir()
	write(dir)
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, ok, err := redisx.Open(cfg)
	if err != nil || !ok {
		t.Fatalf("Open = %v, %v", ok, err)
	}
	t.Cleanup(func() { redisx.Release(c) })
	return c
}

// A Sentinel set: the client finds the master through the Sentinels and,
// when the master dies, follows the failover to the replica without a
// restart.
func TestSentinelFailover(t *testing.T) {
	ss := redistest.StartSentinels(t)
	c := openIn(t, func(dir string) { ss.WriteINI(dir) })
	ctx := context.Background()
	set := func(v string) error {
		return c.Do(nil, func(ctx context.Context) error { return c.Set(ctx, "k", v, 0).Err() })
	}
	if err := set("before"); err != nil {
		t.Fatalf("SET through the sentinels: %v", err)
	}
	master := ss.Master.Addr
	os.Setenv("LOOPMX_TEST_REDIS", "") // Kill is an outage test: one server
	ss.Master.Kill()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for {
		if err = set("after"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write accepted 30 s after the master died: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: ss.Addrs[0]})
	defer sc.Close()
	now, err := sc.GetMasterAddrByName(ctx, "loopmx").Result()
	if err != nil || len(now) != 2 || now[0]+":"+now[1] == master {
		t.Errorf("the sentinels name %v as master (was %s): no failover?", now, master)
	}
	if got, err := redis.NewClient(&redis.Options{Addr: ss.Replica.Addr}).Get(ctx, "k").Result(); err != nil || got != "after" {
		t.Errorf("the promoted replica holds %q, %v; want the write made after the failover", got, err)
	}
}

// A Redis Cluster: keys spread over the three masters, and a script whose
// keys share a hash tag runs on one of them.
func TestClusterRoutesKeysAndScripts(t *testing.T) {
	rs := redistest.StartCluster(t)
	c := openIn(t, func(dir string) { rs.WriteINI(dir) })
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		if err := c.Do(nil, func(ctx context.Context) error { return c.Set(ctx, k, k, 0).Err() }); err != nil {
			t.Fatalf("SET %s on the cluster: %v", k, err)
		}
	}
	nodes := 0
	for _, a := range rs.Cluster {
		n, _ := redis.NewClient(&redis.Options{Addr: a}).DBSize(ctx).Result()
		if n > 0 {
			nodes++
		}
	}
	if nodes < 2 {
		t.Errorf("six keys on %d node(s): the client does not spread keys over the cluster", nodes)
	}
	two := redis.NewScript(`redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])`)
	err := c.Do(nil, func(ctx context.Context) error {
		return two.Run(ctx, c, []string{"x:{ip}", "y:{ip}"}, "v").Err()
	})
	if err != nil {
		t.Errorf("a script over two keys with one hash tag: %v", err)
	}
}
