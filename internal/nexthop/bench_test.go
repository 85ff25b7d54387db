package nexthop

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"loopmx/internal/nexthop/nexthoptest"
	"loopmx/plugins"
)

// BenchmarkForward forwards 1 KiB messages over one pooled, pipelined
// session to a nexthoptest backend: the cost of a delivery on our side
// plus one loopback round trip for the envelope and one for the message.
func BenchmarkForward(b *testing.B) {
	be := nexthoptest.Start(b, nexthoptest.Options{})
	f := New("bench/forward", SMTP, Settings{
		Hosts: []string{be.Addr}, Helo: "mx.test",
		ConnectTimeout: time.Second, CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second,
		IdleTimeout: time.Minute, PoolSize: 1, MaxMessages: 1 << 30, Budget: 10 * time.Second,
	})
	defer f.Close()
	c := &plugins.Conn{ID: "b.1", RemoteIP: netip.MustParseAddr("192.0.2.1"), RemotePort: 40000, Hostname: "mx.test", Helo: "client.test"}
	c.BeginTx("alice@example.org", time.Now())
	c.Tx.Rcpts = []string{"bob@example.com"}
	msg := plugins.NewMessage([]byte("Subject: bench\r\n\r\n"+strings.Repeat(strings.Repeat("x", 62)+"\r\n", 16)), "ESMTP")
	b.SetBytes(msg.Size())
	b.ReportAllocs()
	for b.Loop() {
		if r := f.Queue(c, msg); r.Action != plugins.Accept {
			b.Fatalf("result %s %v", r.Action, r.Reply)
		}
	}
}
