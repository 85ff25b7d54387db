package servertest

import (
	"errors"
	"net"
	"net/smtp"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Envelope is what Deliver sends before the message.
type Envelope struct {
	From  string
	Rcpts []string
	// Params follow MAIL FROM; net/smtp's Mail would add SMTPUTF8 and
	// BODY=8BITMIME on its own, so MAIL is sent through its Text conn.
	Params string
}

// UTF8 is a plain envelope as net/smtp would send it to loopmx, which
// offers SMTPUTF8 and 8BITMIME.
func UTF8(from string, rcpts ...string) Envelope {
	return Envelope{From: from, Rcpts: rcpts, Params: "BODY=8BITMIME SMTPUTF8"}
}

// Plain is an envelope without parameters.
func Plain(from string, rcpts ...string) Envelope {
	return Envelope{From: from, Rcpts: rcpts}
}

// Deliver sends one message over a new connection with net/smtp, which
// dot-stuffs body, and returns the reply to its end. MAIL, RCPT and DATA
// must be accepted.
func Deliver(t testing.TB, addr string, env Envelope, body string) Reply {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(IOTimeout))
	c, err := smtp.NewClient(nc, Host)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	mail := "MAIL FROM:<" + env.From + ">"
	if env.Params != "" {
		mail += " " + env.Params
	}
	if _, _, err := cmd(c.Text, 250, mail); err != nil {
		t.Fatalf("%s: %v", mail, err)
	}
	for _, r := range env.Rcpts {
		if err := c.Rcpt(r); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	if _, _, err := cmd(c.Text, 354, "DATA"); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	w := c.Text.DotWriter()
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	code, msg, err := c.Text.ReadResponse(0)
	var te *textproto.Error
	if err != nil && !errors.As(err, &te) {
		t.Fatalf("reading the reply to the message: %v", err)
	}
	c.Quit()
	return textReply(code, msg)
}

// cmd sends one command over tc and reads its reply.
func cmd(tc *textproto.Conn, want int, line string) (int, string, error) {
	id, err := tc.Cmd("%s", line)
	if err != nil {
		return 0, "", err
	}
	tc.StartResponse(id)
	defer tc.EndResponse(id)
	return tc.ReadResponse(want)
}

// textReply is the Reply whose Code and Text are what net/textproto read.
func textReply(code int, msg string) Reply {
	text := strings.Split(msg, "\n")
	r := Reply{Code: code, Lines: make([]string, len(text))}
	for i, l := range text {
		sep := "-"
		if i == len(text)-1 {
			sep = " "
		}
		r.Lines[i] = strconv.Itoa(code) + sep + l
	}
	return r
}
