package results_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/plugins"
)

// TestStalledRedis stops redis-server with SIGSTOP under a server that
// publishes results: mail keeps flowing, the first publication that times
// out opens the Redis client's circuit breaker (one line says so), and
// from then on the hooks that would publish run inline on the event loop
// and drop their results instead of waiting for a worker and for Redis.
func TestStalledRedis(t *testing.T) {
	rs := redistest.Start(t)
	dir := configDir(t, "redis_publish = true\n")
	rs.WriteINI(dir, "read_timeout = 100ms", "breaker_backoff = 1h")
	srv := servertest.StartDir(t, dir)

	rs.Pause()
	defer rs.Resume()
	for range 5 {
		c := dialer.Hello(t, srv.Addr)
		c.Mail("s@example.org", "a@example.com")
		c.Quit()
	}
	servertest.Eventually(t, poll, "the breaker opens", func() bool {
		return srv.Log.Count("circuit open: calls fail at once") == 1
	})

	var buf bytes.Buffer
	log := zerolog.New(&buf)
	c := &plugins.Conn{ID: "t.1", RemoteIP: netip.MustParseAddr("192.0.2.1"), RemotePort: 40000,
		Hostname: "mx.test", Log: &log, Started: time.Now()}
	for _, h := range []plugins.Hook{plugins.HookMail, plugins.HookDisconnect} {
		if _, _, done := srv.Chain.Step(c, &plugins.Call{Hook: h, Arg: "s@example.org"}, 0); !done {
			t.Errorf("%s with the breaker open went to the workpool", h)
		}
	}
	if n := srv.Log.Count("circuit open"); n != 1 {
		t.Errorf("the stall logged %d circuit open lines, want 1:\n%s", n, srv.Log)
	}
	if n := srv.Log.Count(`"plugin":"results"`, "redis unavailable"); n > 1 {
		t.Errorf("results logged redis unavailable %d times, want at most once:\n%s", n, srv.Log)
	}
}
