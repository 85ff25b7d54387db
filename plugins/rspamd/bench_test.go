package rspamd_test

import (
	"net/netip"
	"testing"
	"time"

	"loopmx/internal/servertest"
	"loopmx/plugins"
)

// BenchmarkScan is one scan of a small message through the plugin, as a
// workpool worker runs it, against the package's rspamd: the client
// side's cost per message (go test -bench Scan -cpuprofile cpu.out).
func BenchmarkScan(b *testing.B) {
	rs := rspamd(b)
	ch, err := servertest.Build(b, map[string]string{
		"plugins":    "rspamd\nqueue/discard\n",
		"rspamd.ini": "url = " + rs.URL + "\n",
	})
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	body := []byte(message("bench"))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c := &plugins.Conn{ID: "bench.1", RemoteIP: netip.MustParseAddr("192.0.2.1"), Hostname: "mx.test", Helo: "client.test"}
		c.BeginTx("alice@example.org", time.Now())
		c.Tx.Rcpts = []string{"user@example.com"}
		call := &plugins.Call{Hook: plugins.HookDataPost, Msg: plugins.NewMessage(body, "ESMTP")}
		if res := ch.RunOne(c, call, 0); res.Action != plugins.Continue {
			b.Fatalf("scan: %+v", res)
		}
	}
}
