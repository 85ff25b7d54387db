package loop_test

// Conversations over real TCP: greeting, capabilities, delivery through
// net/smtp, pipelining, smuggling, BDAT, size limits and protocol errors.

import (
	"fmt"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/loop"
	"loopmx/plugins"
	"loopmx/plugins/queue/maildir"
	inhostlist "loopmx/plugins/rcpt_to.in_host_list"
)

// hostList is the real recipient plugin accepting mail for example.com.
func hostList() plugins.Plugin { return inhostlist.New([]string{"example.com"}) }

func TestBannerAndCapabilities(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.Proto.MaxMessageSize = 123456 }, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	r := c.hello()
	want := []string{
		"250-mx.test",
		"250-PIPELINING",
		"250-SIZE 123456",
		"250-8BITMIME",
		"250-ENHANCEDSTATUSCODES",
		"250-SMTPUTF8",
		"250 CHUNKING",
	}
	if !slices.Equal(r.Lines, want) {
		t.Fatalf("EHLO reply:\n%s\nwant:\n%s", strings.Join(r.Lines, "\n"), strings.Join(want, "\n"))
	}
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()
}

// sendWithNetSMTP delivers one message with the standard library client and
// returns the server's raw output.
func sendWithNetSMTP(t *testing.T, addr, from string, to []string, body string) []byte {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	tap := &tapConn{Conn: nc}
	sc, err := smtp.NewClient(tap, "mx.test")
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	defer sc.Close()
	if err := sc.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	if err := sc.Mail(from); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	for _, r := range to {
		if err := sc.Rcpt(r); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := sc.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatalf("writing the body: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	if err := sc.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	return tap.received()
}

// A body with a leading dot (stuffed by net/smtp, unstuffed by the server)
// and LF line ends (turned into CRLF by net/smtp).
const netSMTPBody = "Subject: hello\n\nfirst line\n.leading dot\nlast line\n"

const netSMTPWire = "Subject: hello\r\n\r\nfirst line\r\n.leading dot\r\nlast line\r\n"

func TestNetSMTPDeliversToRecorder(t *testing.T) {
	rec := &recorder{block: true}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	out := sendWithNetSMTP(t, ts.addr, "sender@client.test", []string{"a@example.com", "b@EXAMPLE.com"}, netSMTPBody)
	replies := checkTranscript(t, out)
	if len(replies) != 8 { // banner EHLO MAIL RCPT RCPT DATA queued QUIT
		t.Errorf("got %d replies, want 8: %v", len(replies), replies)
	}
	m := rec.only(t)
	if m.From != "sender@client.test" {
		t.Errorf("envelope sender %q", m.From)
	}
	if !slices.Equal(m.Rcpts, []string{"a@example.com", "b@EXAMPLE.com"}) {
		t.Errorf("envelope recipients %q", m.Rcpts)
	}
	if m.Body != netSMTPWire {
		t.Errorf("body %q, want %q", m.Body, netSMTPWire)
	}
	// net/smtp offers SMTPUTF8 on MAIL when the server announces it.
	if m.Protocol != "UTF8SMTP" {
		t.Errorf("protocol %q, want UTF8SMTP", m.Protocol)
	}
}

func TestNetSMTPDeliversToMaildir(t *testing.T) {
	dir := t.TempDir()
	md, err := maildir.Open(dir, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	ts := startServer(t, nil, 2, 16, hostList(), md)
	out := sendWithNetSMTP(t, ts.addr, "sender@client.test", []string{"a@example.com"}, netSMTPBody)
	replies := checkTranscript(t, out)
	if q := replies[len(replies)-2]; !strings.HasPrefix(q.Last(), "250 2.0.0 Ok: queued as ") {
		t.Errorf("queue reply %q", q)
	}

	files, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 {
		t.Fatalf("new/ holds %d files, want 1", len(files))
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ still holds %d files", len(tmp))
	}
	raw, err := os.ReadFile(filepath.Join(dir, "new", files[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	got := string(raw)
	for _, want := range []string{
		"Return-Path: <sender@client.test>\r\n",
		"X-Envelope-To: <a@example.com>\r\n",
		"Received: from client.test ([127.0.0.1])",
		"\tby mx.test (loopmx) with UTF8SMTP id ",
		"\tfor <a@example.com>;",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("stored file lacks %q:\n%s", want, got)
		}
	}
	if !strings.HasPrefix(got, "Return-Path: ") {
		t.Errorf("stored file does not start with Return-Path:\n%s", got)
	}
	if !strings.HasSuffix(got, "\r\n"+netSMTPWire) {
		t.Errorf("stored file does not end with the message:\n%q", got)
	}
}

// A whole conversation in one write: every reply comes, in order.
func TestPipelinedTransactionInOneWrite(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	c := connect(t, ts.addr)
	c.write("EHLO client.test\r\n" +
		"MAIL FROM:<s@client.test>\r\n" +
		"RCPT TO:<a@example.com>\r\n" +
		"RCPT TO:<nobody@elsewhere.test>\r\n" +
		"RCPT TO:<b@example.com>\r\n" +
		"DATA\r\n" +
		"Subject: p\r\n\r\nhi\r\n.\r\n" +
		"NOOP\r\n" +
		"QUIT\r\n")
	if r := c.next(); !r.isEHLO() {
		t.Fatalf("first reply %q, want the EHLO reply", r)
	}
	c.expectAll("250 2.1.0", "250 2.1.5", "550 5.7.1", "250 2.1.5", "354 ", "250 2.0.0 Ok: queued", "250 2.0.0 Ok", "221 2.0.0")
	c.expectEOF()
	m := rec.only(t)
	if !slices.Equal(m.Rcpts, []string{"a@example.com", "b@example.com"}) || m.Body != "Subject: p\r\n\r\nhi\r\n" {
		t.Errorf("stored %+v", m)
	}
}

// twoTransactions is two pipelined transactions and what they answer.
const twoTransactions = "EHLO client.test\r\n" +
	"MAIL FROM:<one@client.test>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nfirst\r\n.\r\n" +
	"NOOP\r\n" +
	"MAIL FROM:<two@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nsecond\r\n.\r\n" +
	"QUIT\r\n"

var twoTransactionReplies = []string{
	"250 2.1.0", "250 2.1.5", "354 ", "250 2.0.0 Ok: queued", "250 2.0.0 Ok",
	"250 2.1.0", "250 2.1.5", "354 ", "250 2.0.0 Ok: queued", "221 2.0.0",
}

func checkTwoMessages(t *testing.T, rec *recorder) {
	t.Helper()
	msgs := rec.messages()
	if len(msgs) != 2 ||
		msgs[0].From != "one@client.test" || msgs[0].Body != "first\r\n" ||
		msgs[1].From != "two@client.test" || msgs[1].Body != "second\r\n" {
		t.Fatalf("stored %+v", msgs)
	}
}

func TestPipelinedTwoTransactionsInOneWrite(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	c := connect(t, ts.addr)
	c.write(twoTransactions)
	c.expectEHLO()
	c.expectAll(twoTransactionReplies...)
	c.expectEOF()
	checkTwoMessages(t, rec)
}

// With a queue hook on the workpool, input after the end of data waits and
// is answered after the queue reply, in order.
func TestPipelinedWithBlockingQueue(t *testing.T) {
	g := newGate()
	rec := &recorder{block: true, gate: g, entered: newSignal()}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	c := connect(t, ts.addr)
	c.write(twoTransactions)
	c.expectEHLO()
	c.expectAll(twoTransactionReplies[:3]...)
	rec.entered.await(t, "the first queue hook")
	// Neither the queue reply nor the answer to the NOOP behind it may
	// come while the hook runs.
	c.expectSilence(300 * time.Millisecond)
	g.open()
	c.expectAll(twoTransactionReplies[3:]...)
	c.expectEOF()
	checkTwoMessages(t, rec)
}

// The SMTP smuggling endings (CVE-2023-51764/5/6): none ends the message.
var smugglingEndings = map[string]string{
	"LF.LF":     "\n.\n",
	"CR.CR":     "\r.\r",
	"LF.CRLF":   "\n.\r\n",
	"CRLF.LF":   "\r\n.\n",
	"CR.CRLF":   "\r.\r\n",
	"CRLF.CR":   "\r\n.\r",
	"LF.CR":     "\n.\r",
	"CRLF.CRCR": "\r\n.\r\r\n",
}

const smuggled = "MAIL FROM:<evil@x>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nsmuggled text\r\n.\r\nQUIT\r\n"

func smugglingInput(ending string) string {
	return "EHLO client.test\r\nMAIL FROM:<good@client.test>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" +
		"Subject: innocent\r\n\r\nhello" + ending + smuggled
}

func TestSmugglingRefusedByDefault(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	for name, ending := range smugglingEndings {
		for _, split := range []bool{false, true} {
			t.Run(name+map[bool]string{false: "/whole", true: "/bytewise"}[split], func(t *testing.T) {
				c := connect(t, ts.addr)
				in := smugglingInput(ending)
				if split {
					// Send the part around the ending one octet at a time.
					i := strings.Index(in, "hello") + 5
					c.write(in[:i])
					for j := i; j < i+40; j++ {
						c.write(in[j : j+1])
					}
					c.write(in[i+40:])
				} else {
					c.write(in)
				}
				c.expectEHLO()
				c.expectAll("250 2.1.0", "250 2.1.5", "354 ",
					"550 5.6.0 Message refused: bare CR or LF",
					"221 2.0.0")
				c.expectEOF()
			})
		}
	}
	if msgs := rec.messages(); len(msgs) != 0 {
		t.Fatalf("queued %d messages, want none: %+v", len(msgs), msgs)
	}
}

func TestSmugglingKeptAsOneMessage(t *testing.T) {
	for name, ending := range smugglingEndings {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{block: true}
			ts := startServer(t, func(o *loop.Options) { o.Proto.KeepBareLineEndings = true }, 2, 16, hostList(), rec)
			c := connect(t, ts.addr)
			c.write(smugglingInput(ending))
			c.expectEHLO()
			c.expectAll("250 2.1.0", "250 2.1.5", "354 ", "250 2.0.0 Ok: queued", "221 2.0.0")
			c.expectEOF()
			m := rec.only(t)
			if m.From != "good@client.test" {
				t.Errorf("the message came from %q", m.From)
			}
			for _, part := range []string{"Subject: innocent\r\n\r\nhello", "MAIL FROM:<evil@x>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nsmuggled text\r\n"} {
				if !strings.Contains(m.Body, part) {
					t.Errorf("body %q lacks %q", m.Body, part)
				}
			}
			if !strings.HasSuffix(m.Body, "smuggled text\r\n") {
				t.Errorf("body %q does not end at the real terminator", m.Body)
			}
		})
	}
}

func TestBDATChunksAreData(t *testing.T) {
	rec := &recorder{block: true}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	chunk1 := "Subject: bdat\r\n\r\nfirst\r\n.\r\nMAIL FROM:<evil@x>\r\nQUIT\r\n"
	chunk2 := "..two dots stay\r\n.\r\nlast line\r\n"
	c := connect(t, ts.addr)
	c.write("EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.com>\r\n" +
		"BDAT " + strconv.Itoa(len(chunk1)) + "\r\n" + chunk1 +
		"BDAT " + strconv.Itoa(len(chunk2)) + " LAST\r\n" + chunk2 +
		"NOOP\r\n")
	c.expectEHLO()
	c.expectAll("250 2.1.0", "250 2.1.5", "250 2.0.0 Ok: chunk received", "250 2.0.0 Ok: queued", "250 2.0.0 Ok")

	// A second transaction on the same connection, its chunk trickling in
	// small writes, closed by an empty last chunk.
	chunk3 := "Subject: slow\r\n\r\n" + strings.Repeat("0123456789", 30) + "\r\n"
	c.write("MAIL FROM:<t@client.test>\r\nRCPT TO:<b@example.com>\r\nBDAT " + strconv.Itoa(len(chunk3)) + "\r\n")
	for i := 0; i < len(chunk3); i += 37 {
		c.write(chunk3[i:min(i+37, len(chunk3))])
	}
	c.write("BDAT 0 LAST\r\nQUIT\r\n")
	c.expectAll("250 2.1.0", "250 2.1.5", "250 2.0.0 Ok: chunk received", "250 2.0.0 Ok: queued", "221 2.0.0")
	c.expectEOF()

	msgs := rec.messages()
	if len(msgs) != 2 {
		t.Fatalf("queued %d messages, want 2", len(msgs))
	}
	if msgs[0].Body != chunk1+chunk2 {
		t.Errorf("first body %q, want %q", msgs[0].Body, chunk1+chunk2)
	}
	if msgs[1].Body != chunk3 || msgs[1].From != "t@client.test" {
		t.Errorf("second message %+v", msgs[1])
	}
}

func TestOversizeMessageThenNextTransaction(t *testing.T) {
	rec := &recorder{block: true}
	ts := startServer(t, func(o *loop.Options) { o.Proto.MaxMessageSize = 2048 }, 2, 16, hostList(), rec)
	big := strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100) // 10000 octets
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.write(big + ".\r\n")
	c.expect("552 5.3.4")

	// The same connection goes on: a message that fits is queued.
	c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.write("small\r\n.\r\n")
	c.expect("250 2.0.0 Ok: queued")

	// Too big by BDAT: the chunk is read and refused.
	c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.write("BDAT " + strconv.Itoa(len(big)) + " LAST\r\n" + big)
	c.expect("552 5.3.4")

	// Too big by declaration: refused at MAIL.
	c.cmd("MAIL FROM:<s@client.test> SIZE=4096", "552 5.3.4")
	c.cmd("MAIL FROM:<s@client.test> SIZE=100", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.write("BDAT 6 LAST\r\nfits\r\n")
	c.expect("250 2.0.0 Ok: queued")
	c.cmd("QUIT", "221 2.0.0")

	msgs := rec.messages()
	if len(msgs) != 2 || msgs[0].Body != "small\r\n" || msgs[1].Body != "fits\r\n" {
		t.Fatalf("stored %+v", msgs)
	}
}

func TestSequenceAndSyntaxErrors(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(o *loop.Options) { o.Proto.MaxErrors = 50 }, 2, 16, hostList(), rec)
	c := connect(t, ts.addr)
	steps := []struct{ in, want string }{
		{"MAIL FROM:<a@client.test>", "503 5.5.1"}, // before EHLO
		{"EHLO", "501 5.5.4"},
		{"EHLO two words", "501 5.5.4"},
		{"HELO", "501 5.5.4"},
		{"EHLO client.test", "250 CHUNKING"},
		{"RCPT TO:<a@example.com>", "503 5.5.1"},
		{"DATA", "503 5.5.1"},
		{"BDAT 0 LAST", "503 5.5.1"},
		{"MAIL FROM:a@client.test", "501 5.5.4"},
		{"MAIL TO:<a@client.test>", "501 5.5.4"},
		{"MAIL FROM:<not an address>", "501 5.1.7"},
		{"MAIL FROM:<a@client.test> FOO=BAR", "555 5.5.4"},
		{"MAIL FROM:<a@client.test> BODY=9BIT", "501 5.5.4"},
		{"MAIL FROM:<a@client.test>", "250 2.1.0"},
		{"MAIL FROM:<a@client.test>", "503 5.5.1"},
		{"DATA", "554 5.5.1"},
		{"RCPT TO:<>", "501 5.1.3"},
		{"RCPT TO:<a@example.com> NOTIFY=NEVER", "555 5.5.4"},
		{"RCPT TO:<a@elsewhere.test>", "550 5.7.1"},
		{"RCPT TO:<postmaster>", "250 2.1.5"},
		{"DATA now", "501 5.5.4"},
		{"RSET x", "501 5.5.4"},
		{"RSET", "250 2.0.0"},
		{"VRFY someone", "252 2.5.0"},
		{"HELP", "214 2.0.0"},
		{"EXPN list", "502 5.5.1"},
		{"STARTTLS", "502 5.5.1"},
		{"AUTH PLAIN", "502 5.5.1"},
		{"FOO", "500 5.5.1"},
		{"Subject: hi", "500 5.5.1"},
		{"NOOP\x01", "500 5.5.2"},
		{"noop", "250 2.0.0"},
	}
	for _, s := range steps {
		c.cmd(s.in, s.want)
	}
	// A bare LF ends nothing: the line is refused.
	c.write("NOOP\n")
	c.expect("500 5.5.2")
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()
	if n := len(rec.messages()); n != 0 {
		t.Fatalf("queued %d messages", n)
	}
}

func TestTooManyErrorsCloses(t *testing.T) {
	ts := startServer(t, func(o *loop.Options) { o.Proto.MaxErrors = 3 }, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("FOO", "500 5.5.1")
	c.cmd("NOOP", "250 2.0.0")
	// The third error is answered, then 421 closes the connection; the
	// pipelined command after it is not run.
	c.write("BAR\r\nBAZ\r\nNOOP\r\n")
	c.expectAll("500 5.5.1", "500 5.5.1", "421 4.7.0")
	c.expectEOF()
}

func TestHTTPRequestRefused(t *testing.T) {
	ts := startServer(t, nil, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	for i := 0; i < 3; i++ {
		if r := c.expect("500 5.5.1"); strings.Contains(r.String(), "Host") {
			t.Errorf("reply echoes the request: %q", r)
		}
	}
	c.cmd("QUIT", "221 2.0.0")

	// A proxy-style request after EHLO gets the same, with enhanced codes.
	c = connect(t, ts.addr)
	c.hello()
	c.write("POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
	c.expectAll("500 5.5.1 Error: this is an SMTP server, not HTTP", "500 5.5.1", "500 5.5.1")
	c.cmd("QUIT", "221 2.0.0")
}

// An overlong command line gets one 500 5.5.2; nothing in its tail runs.
func TestLongCommandLine(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, nil, 2, 16, hostList(), rec)
	lines := map[string]string{
		// 600 octets, "QUIT" somewhere in the tail.
		"tail": "NOOP " + strings.Repeat("x", 300) + "QUIT" + strings.Repeat("y", 285) + "QUIT\r\n",
		// "QUIT\r\n" starts exactly at the 512-octet limit.
		"boundary": "NOOP " + strings.Repeat("x", 507) + "QUIT\r\n",
		// the tail looks like a whole transaction.
		"commands": "NOOP " + strings.Repeat("x", 520) + "\rMAIL FROM:<e@x>\rRCPT TO:<a@example.com>\rQUIT\r\n",
	}
	for name, line := range lines {
		for _, split := range []int{0, 100, 511, 512, 513} {
			t.Run(name+"/"+strconv.Itoa(split), func(t *testing.T) {
				c := connect(t, ts.addr)
				c.hello()
				if split == 0 {
					c.write(line)
				} else {
					c.write(line[:split])
					time.Sleep(5 * time.Millisecond)
					c.write(line[split:])
				}
				c.expect("500 5.5.2 Error: line too long")
				c.cmd("NOOP", "250 2.0.0")
				c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
				c.cmd("QUIT", "221 2.0.0")
				c.expectEOF()
			})
		}
	}
	// A line of exactly 512 octets with its CRLF is fine.
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("NOOP "+strings.Repeat("z", 512-7), "250 2.0.0")
	c.cmd("QUIT", "221 2.0.0")
}

// TestEnhancedCodesAfterEHLO walks a dialog that meets most replies the
// server can give and checks each of them (every client of the other
// tests does the same check on what it reads).
func TestEnhancedCodesAfterEHLO(t *testing.T) {
	rec := &recorder{block: true}
	ts := startServer(t, func(o *loop.Options) {
		o.Proto.MaxMessageSize = 4000
		o.Proto.MaxRecipients = 2
		o.Proto.MaxErrors = 100
	}, 2, 16, hostList(), rec)
	c := connect(t, ts.addr)
	c.write("EHLO client.test\r\n" +
		"MAIL FROM:<s@client.test> SIZE=5000\r\n" +
		"MAIL FROM:<s@client.test> BODY=8BITMIME SMTPUTF8\r\n" +
		"RCPT TO:<a@example.com>\r\nRCPT TO:<bad@nowhere.test>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n" +
		"DATA\r\nline\r\n.\r\n" +
		"MAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nbare\nLF\r\n.\r\n" +
		"MAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" + strings.Repeat("l", 1200) + "\r\n.\r\n" +
		"MAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nBDAT 3\r\nabcDATA\r\n" +
		"RSET\r\nBDAT 3 FIRST\r\nxyzNOOP\r\nVRFY x\r\nHELP\r\nEXPN x\r\nBLAH\r\nX-Header: y\r\n" +
		"HELO again.test\r\nRCPT TO:<a@example.com>\r\n" +
		"EHLO client.test\r\nQUIT\r\n")
	want := []string{
		"250 CHUNKING",
		"552 5.3.4", "250 2.1.0", "250 2.1.5", "550 5.7.1", "250 2.1.5", "452 4.5.3", "354 ", "250 2.0.0 Ok: queued",
		"250 2.1.0", "250 2.1.5", "354 ", "550 5.6.0",
		"250 2.1.0", "250 2.1.5", "354 ", "550 5.5.2",
		"250 2.1.0", "250 2.1.5", "250 2.0.0 Ok: chunk", "503 5.5.1",
		"250 2.0.0", "501 5.5.4", "250 2.0.0", "252 2.5.0", "214 2.0.0", "502 5.5.1", "500 5.5.1", "500 5.5.1",
		"250 mx.test", "503 5.5.1",
		"250 CHUNKING", "221 2.0.0",
	}
	c.expectAll(want...)
	c.expectEOF()
	if len(c.reads) != len(want)+1 {
		t.Fatalf("read %d replies, want %d", len(c.reads), len(want)+1)
	}
}

// A message the protocol refuses at its end (too big, bare line ending,
// long line) ends the transaction for the plugins and the log too: the
// next MAIL hook sees its own new transaction (not the old one), and the
// refused one has its own transaction log line.
func TestRefusedMessageEndsTransaction(t *testing.T) {
	var mu sync.Mutex
	var staleAt []string
	seen := &hooks{
		name: "test/sees-tx",
		mail: func(c *plugins.Conn, from string) plugins.Result {
			if c.Tx == nil || c.Tx.From != from || len(c.Tx.Rcpts) > 0 {
				mu.Lock()
				staleAt = append(staleAt, fmt.Sprintf("%s saw %+v", from, c.Tx))
				mu.Unlock()
			}
			return plugins.NoOpinion()
		},
	}
	ts := startServer(t, func(o *loop.Options) { o.Proto.MaxMessageSize = 100 }, 2, 16, seen, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("MAIL FROM:<big@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.cmd(strings.Repeat("x", 200)+"\r\n.", "552 5.3.4")
	c.cmd("MAIL FROM:<bare@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<a@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.cmd("bare\nLF\r\n.", "550 5.6.0")
	c.cmd("MAIL FROM:<next@client.test>", "250 2.1.0")
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()
	ts.waitConnections(t, 0)

	mu.Lock()
	defer mu.Unlock()
	if len(staleAt) > 0 {
		t.Errorf("MAIL hooks did not see their own new transaction: %q", staleAt)
	}
	logs := ts.log.String()
	for _, code := range []string{`"code":552`, `"code":550`} {
		if !strings.Contains(logs, code) {
			t.Errorf("no transaction log line with %s:\n%s", code, logs)
		}
	}
}

// TestTransactionLineNamesRefusals: a recipient refused for relaying shows
// in the transaction's log line with its code and the refusing plugin, so
// one line tells an operator what happened to the message.
func TestTransactionLineNamesRefusals(t *testing.T) {
	ts := startServer(t, nil, 2, 16, hostList(), &recorder{})
	c := connect(t, ts.addr)
	c.hello()
	c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0")
	c.cmd("RCPT TO:<victim@elsewhere.test>", "550 ")
	c.cmd("RCPT TO:<user@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.cmd("Subject: x\r\n\r\nhi\r\n.", "250 2.0.0")
	c.cmd("QUIT", "221 2.0.0")
	c.expectEOF()
	ts.waitConnections(t, 0)
	want := `"refused":["rcpt 550 rcpt_to.in_host_list"]`
	if !strings.Contains(ts.log.String(), want) {
		t.Errorf("the transaction line lacks %s:\n%s", want, ts.log.String())
	}
}
