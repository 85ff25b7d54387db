package loop_test

import (
	"io"
	"strings"
	"testing"
)

// TestQuitSendsTheLastRepliesBeforeClosing: the 221 leaves with the FIN
// (one packet fewer a session), so nothing may hold it back: a client
// that pipelined its message and QUIT reads the 250 and the 221 and then
// an orderly end of stream, and one that sends more after its QUIT still
// reads the 221 first, though its extra input makes the close a reset.
func TestQuitSendsTheLastRepliesBeforeClosing(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, nil, 1, 8, hostList(), rec)

	c := connect(t, ts.addr)
	c.cmd("EHLO client.example", "250")
	c.write("MAIL FROM:<a@client.example>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	c.expectAll("250 2.1.0", "250 2.1.5", "354")
	c.write("Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n")
	c.expectAll("250 2.0.0", "221 2.0.0")
	if b, err := c.r.ReadByte(); err != io.EOF {
		t.Errorf("after the 221: read %q, %v; want the end of the stream", b, err)
	}
	c.conn.Close()
	rec.only(t)

	// More than one read takes: the server reads the QUIT and leaves the
	// rest unread in the kernel when it closes.
	c = connect(t, ts.addr)
	c.cmd("EHLO client.example", "250")
	c.write("QUIT\r\n" + strings.Repeat("NOOP\r\n", 64<<10/6))
	c.expect("221 2.0.0")
	c.conn.Close()
}
