package loop_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"loopmx/loop"
	"loopmx/plugins"
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
	waitLogCount(t, ts, `"message":"connection"`, clients)
	var lines []string
	for _, l := range strings.Split(ts.log.String(), "\n") {
		if strings.Contains(l, `"message":"connection"`) {
			lines = append(lines, l)
		}
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

// marker is an inline plugin that writes into everything a session
// hands plugins: a note on the connection and on the transaction, and a
// header on the message. It notes any of them it finds already marked by
// an earlier connection or transaction.
type marker struct {
	mu     sync.Mutex
	leaked []string
	posts  int // messages marked
}

func (m *marker) Name() string { return "test/marker" }

func (m *marker) leak(what string) {
	m.mu.Lock()
	m.leaked = append(m.leaked, what)
	m.mu.Unlock()
}

func (m *marker) Mail(c *plugins.Conn, from string) plugins.Result {
	if v := c.Note("mark"); v != nil && v != c.ID {
		m.leak(fmt.Sprintf("connection %s starts with the note of %v", c.ID, v))
	}
	if v := c.Tx.Note("mark"); v != nil {
		m.leak(fmt.Sprintf("transaction %s starts with the note of %v", c.Tx.ID, v))
	}
	c.SetNote("mark", c.ID)
	c.Tx.SetNote("mark", c.Tx.ID)
	return plugins.Result{}
}

func (m *marker) DataPost(c *plugins.Conn, msg *plugins.Message) plugins.Result {
	if added := msg.AddedHeaders(); len(added) > 0 {
		m.leak(fmt.Sprintf("message of %s starts with the headers %q", c.Tx.ID, added))
	}
	msg.AddHeader("X-Mark", c.Tx.From)
	m.mu.Lock()
	m.posts++
	m.mu.Unlock()
	return plugins.Result{}
}

// TestReusedMemoryCarriesNothingOver: the connection, transaction and
// message that plugins see come from the memory of ended ones (between
// connections, and between the transactions of one), and no note,
// recipient or added header of the old ones shows in the new.
func TestReusedMemoryCarriesNothingOver(t *testing.T) {
	mark, rec := &marker{}, &recorder{}
	ts := startServer(t, func(o *loop.Options) { o.Loops = 1 }, 1, 8, mark, rec)
	sent := 0
	for i := 0; i < 6 && (i < 3 || ts.srv.ReusedConns() < 2); i++ {
		c := connect(t, ts.addr)
		c.cmd("EHLO client.example", "250")
		for j := 0; j < 2; j++ {
			sent++
			c.cmd(fmt.Sprintf("MAIL FROM:<s%d@client.example>", sent), "250")
			c.cmd(fmt.Sprintf("RCPT TO:<r%d@example.com>", sent), "250")
			c.cmd("DATA", "354")
			c.write("Subject: hello\r\n\r\nbody\r\n.\r\n")
			c.expect("250")
		}
		c.cmd("QUIT", "221")
		ts.waitConnections(t, 0)
	}
	if ts.srv.ReusedConns() < 2 {
		t.Fatalf("%d connections reused the memory of an ended one, want at least 2", ts.srv.ReusedConns())
	}
	mark.mu.Lock()
	for _, l := range mark.leaked {
		t.Error(l)
	}
	if mark.posts != sent {
		t.Errorf("%d messages marked, want %d", mark.posts, sent)
	}
	mark.mu.Unlock()
	msgs := rec.messages()
	if len(msgs) != sent {
		t.Fatalf("queued %d messages, want %d", len(msgs), sent)
	}
	for i, m := range msgs {
		from, rcpt := fmt.Sprintf("s%d@client.example", i+1), fmt.Sprintf("r%d@example.com", i+1)
		if m.From != from || len(m.Rcpts) != 1 || m.Rcpts[0] != rcpt {
			t.Errorf("message %d: envelope %s -> %v, want %s -> [%s]", i+1, m.From, m.Rcpts, from, rcpt)
		}
	}
}
