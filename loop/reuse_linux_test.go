package loop_test

import (
	"strings"
	"testing"
	"time"

	"loopmx/loop"
)

// TestReusedConnectionStartsClean: a loop gives the memory of a finished
// connection to the next one, and nothing of the old session shows: the
// next client must greet again, starts with no transaction, and its
// connection line has its own values.
func TestReusedConnectionStartsClean(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.Loops = 1 }, 1, 8)
	first := connect(t, ts.addr)
	first.cmd("EHLO first.example", "250")
	first.cmd("MAIL FROM:<a@first.example>", "250")
	first.conn.Close() // gone in the middle of its transaction
	ts.waitConnections(t, 0)

	clients := 1
	for i := 0; i < 3 && ts.srv.ReusedConns() == 0; i++ {
		clients++
		c := connect(t, ts.addr)
		c.cmd("MAIL FROM:<b@second.example>", "503 5.5.1")
		c.cmd("HELO second.example", "250")
		c.cmd("MAIL FROM:<b@second.example>", "250")
		c.cmd("QUIT", "221")
		ts.waitConnections(t, 0)
	}
	if ts.srv.ReusedConns() == 0 {
		t.Fatal("no connection reused the memory of an ended one")
	}
	// The count of connections drops before the connection line is
	// written: wait for the line of every client.
	var lines []string
	deadline := time.Now().Add(ioTimeout)
	for {
		lines = lines[:0]
		for _, l := range strings.Split(ts.log.String(), "\n") {
			if strings.Contains(l, `"message":"connection"`) {
				lines = append(lines, l)
			}
		}
		if len(lines) == clients || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(lines) != clients {
		t.Fatalf("%d connection lines for %d clients", len(lines), clients)
	}
	last := lines[len(lines)-1]
	for _, want := range []string{`"helo":"second.example"`, `"transactions":1`, `"errors":1`, `"end":"quit"`} {
		if !strings.Contains(last, want) {
			t.Errorf("connection line %s lacks %s", last, want)
		}
	}
}
