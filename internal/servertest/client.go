package servertest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Strictness says which refusals (4xx and 5xx replies) a Client requires
// to carry, on every line, an enhanced status code of their own class
// (RFC 2034, RFC 3463). A refusal without one fails the test, which goes
// on.
type Strictness int

const (
	// AfterEHLO checks the refusals that follow an EHLO reply, up to a
	// HELO reply: the session in which the server offers
	// ENHANCEDSTATUSCODES.
	AfterEHLO Strictness = iota
	// Always checks every refusal, the banner's included.
	Always
	// Never checks none.
	Never
)

// Dialer makes Clients. Its zero value checks refusals AfterEHLO.
type Dialer struct {
	Enhanced Strictness
}

// Dial connects to addr without reading the banner.
func (d Dialer) Dial(t testing.TB, addr string) *Client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return d.Client(t, nc)
}

// DialFrom connects to addr from the local address from ("127.0.0.2"
// makes the client another host as far as the server can tell), without
// reading the banner.
func (d Dialer) DialFrom(t testing.TB, addr, from string) *Client {
	t.Helper()
	nd := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	nc, err := nd.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	return d.Client(t, nc)
}

// Client makes a Client of a connection the test opened itself (a TLS
// one, say). Every read and write must end within IOTimeout; nc is
// closed when the test ends.
func (d Dialer) Client(t testing.TB, nc net.Conn) *Client {
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(IOTimeout))
	return &Client{T: t, Conn: nc, R: bufio.NewReader(nc), Enhanced: d.Enhanced}
}

// Greet dials addr and reads the first reply (the banner, or a refusal
// at connect). It returns the client and that reply's last line.
func (d Dialer) Greet(t testing.TB, addr string) (*Client, string) {
	t.Helper()
	c := d.Dial(t, addr)
	return c, c.Next().Last()
}

// TryConnect is Greet that reports whether the first reply was the banner
// (220). When it was not, it closes the connection and returns no client.
func (d Dialer) TryConnect(t testing.TB, addr string) (*Client, bool) {
	t.Helper()
	c, first := d.Greet(t, addr)
	if strings.HasPrefix(first, "220 ") {
		return c, true
	}
	c.Conn.Close()
	return nil, false
}

// Hello dials addr, requires the banner (220) and says EHLO client.test,
// which must get 250: the client is ready for MAIL.
func (d Dialer) Hello(t testing.TB, addr string) *Client {
	t.Helper()
	c, first := d.Greet(t, addr)
	if !strings.HasPrefix(first, "220 ") {
		t.Fatalf("%s greets with %q, want the banner", addr, first)
	}
	c.Cmd("EHLO client.test", "250")
	return c
}

// Client is a raw SMTP client: it writes command lines as given and reads
// whole replies, checking their form and enhanced status codes.
type Client struct {
	T        testing.TB
	Conn     net.Conn
	R        *bufio.Reader
	Enhanced Strictness

	ehlo bool // an EHLO reply was read, and no HELO reply since
}

// Reply is one SMTP reply as the client read it.
type Reply struct {
	Code  int
	Lines []string // without CRLF, each with its code
}

// Last is the reply's last line ("250 2.0.0 Ok").
func (r Reply) Last() string {
	if len(r.Lines) == 0 {
		return ""
	}
	return r.Lines[len(r.Lines)-1]
}

// Text is the reply's text after the codes, one line of text per line of
// the reply, as net/textproto gives it.
func (r Reply) Text() string {
	text := make([]string, len(r.Lines))
	for i, l := range r.Lines {
		text[i] = l[min(4, len(l)):]
	}
	return strings.Join(text, "\n")
}

// String is the code and the text: "250 2.0.0 Ok".
func (r Reply) String() string { return strconv.Itoa(r.Code) + " " + r.Text() }

// Send writes one command line (or a message ending in "\r\n.") and CRLF.
func (c *Client) Send(line string) {
	c.T.Helper()
	if _, err := io.WriteString(c.Conn, line+"\r\n"); err != nil {
		c.T.Fatalf("write %q: %v", line, err)
	}
}

var enhancedRe = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3} `)

// ReadReply reads one SMTP reply from r: lines up to the one with a space
// after the code (RFC 5321 4.2.1). Each line must end in CRLF and carry
// the reply's code. It is the one reply parser of loopmx's tests.
func ReadReply(r *bufio.Reader) (Reply, error) {
	var rep Reply
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if line != "" {
				return rep, fmt.Errorf("partial line %q: %w", line, err)
			}
			return rep, err
		}
		if !strings.HasSuffix(line, "\r\n") {
			return rep, fmt.Errorf("reply line without CRLF: %q", line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		if len(line) < 4 {
			// loopmx always sends text after the code.
			return rep, fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 {
			return rep, fmt.Errorf("bad reply code in %q", line)
		}
		if rep.Code != 0 && code != rep.Code {
			return rep, fmt.Errorf("code changes inside a reply: %q after %v", line, rep)
		}
		rep.Code = code
		rep.Lines = append(rep.Lines, line)
		if line[3] == ' ' {
			return rep, nil
		}
		if line[3] != '-' {
			return rep, fmt.Errorf("bad separator in %q", line)
		}
	}
}

// Read reads one reply (ReadReply); a refusal that Enhanced covers must
// carry an enhanced status code of its own class.
func (c *Client) Read() (Reply, error) {
	r, err := ReadReply(c.R)
	if err != nil {
		return r, err
	}
	for _, line := range r.Lines {
		if (line[0] == '4' || line[0] == '5') && c.checks() {
			if len(line) < 5 || !enhancedRe.MatchString(line[4:]) || line[4] != line[0] {
				c.T.Errorf("refusal %q lacks an enhanced status code of class %c", line, line[0])
			}
		}
	}
	switch {
	case r.Code == 250 && len(r.Lines) > 1 && r.Lines[0] == "250-"+Host:
		c.ehlo = true
	case len(r.Lines) == 1 && r.Lines[0] == "250 "+Host:
		c.ehlo = false
	}
	return r, nil
}

// checks tells whether the next refusal must carry an enhanced code.
func (c *Client) checks() bool {
	return c.Enhanced == Always || (c.Enhanced == AfterEHLO && c.ehlo)
}

// Next reads one reply or fails the test.
func (c *Client) Next() Reply {
	c.T.Helper()
	r, err := c.Read()
	if err != nil {
		c.T.Fatalf("reading a reply: %v (read %q)", err, r.Lines)
	}
	return r
}

// Expect reads one reply whose last line starts with prefix, and returns
// that line.
func (c *Client) Expect(prefix string) string {
	c.T.Helper()
	return c.expect("", prefix)
}

// ExpectExact reads one reply and requires it to be the single line want.
func (c *Client) ExpectExact(want string) {
	c.T.Helper()
	c.expectExact("", want)
}

// Cmd sends a command and expects a reply whose last line starts with
// prefix, which it returns.
func (c *Client) Cmd(line, prefix string) string {
	c.T.Helper()
	c.Send(line)
	return c.expect(line+": ", prefix)
}

// CmdExact sends a command and requires the single-line reply want.
func (c *Client) CmdExact(line, want string) {
	c.T.Helper()
	c.Send(line)
	c.expectExact(line+": ", want)
}

// expect is Expect with what in front of a failure.
func (c *Client) expect(what, prefix string) string {
	c.T.Helper()
	r, err := c.Read()
	if err != nil {
		c.T.Fatalf("%sreading the reply (want %q): %v (read %q)", what, prefix, err, r.Lines)
	}
	if !strings.HasPrefix(r.Last(), prefix) {
		c.T.Fatalf("%sgot %q, want %q...", what, r.Lines, prefix)
	}
	return r.Last()
}

// expectExact is ExpectExact with what in front of a failure.
func (c *Client) expectExact(what, want string) {
	c.T.Helper()
	r, err := c.Read()
	if err != nil {
		c.T.Fatalf("%sreading the reply (want %q): %v (read %q)", what, want, err, r.Lines)
	}
	if len(r.Lines) != 1 || r.Lines[0] != want {
		c.T.Fatalf("%sgot %q, want %q", what, r.Lines, want)
	}
}

// EHLO sends EHLO name and requires the 250 list of extensions.
func (c *Client) EHLO(name string) Reply {
	c.T.Helper()
	c.Send("EHLO " + name)
	r, err := c.Read()
	if err != nil || len(r.Lines) < 2 || r.Lines[0] != "250-"+Host {
		c.T.Fatalf("EHLO %s: got %q (%v), want the 250 list of extensions", name, r.Lines, err)
	}
	return r
}

// Mail sends one small message in an open session: MAIL, a RCPT per
// recipient and DATA must be accepted, and the message too.
func (c *Client) Mail(from string, rcpts ...string) {
	c.T.Helper()
	c.Cmd("MAIL FROM:<"+from+">", "250")
	for _, r := range rcpts {
		c.Cmd("RCPT TO:<"+r+">", "250")
	}
	c.Cmd("DATA", "354")
	c.Cmd("Subject: servertest\r\n\r\nhello\r\n.", "250")
}

// Quit ends the session politely and closes the connection.
func (c *Client) Quit() {
	c.T.Helper()
	c.Cmd("QUIT", "221")
	c.Conn.Close()
}

// ExpectEOF requires the server to close the connection with nothing more
// to say, then closes the client's side too, so the server need not
// linger.
func (c *Client) ExpectEOF() {
	c.T.Helper()
	r, err := c.Read()
	if err == nil {
		c.T.Fatalf("got %q, want the connection closed", r.Lines)
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "connection reset") {
		c.T.Fatalf("want the connection closed, got %v", err)
	}
	c.Conn.Close()
}
