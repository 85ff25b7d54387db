package nexthop

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"

	"loopmx/plugins"
)

// Envelope is what the next hop is told before the message.
type Envelope struct {
	// From is the reverse path, "" for the null sender.
	From string
	// Rcpts are the recipients, in the order the client gave them.
	Rcpts []string
	// SMTPUTF8 is set when the client's MAIL carried SMTPUTF8.
	SMTPUTF8 bool
	// Client, when set, is told to a next hop that offers XCLIENT or
	// XFORWARD, as the settings' xclient key says (xclient.go).
	Client *Client
	// clientRefused is the next hop's refusal of XCLIENT or XFORWARD,
	// for the log.
	clientRefused error
}

// stage names the point of the dialog that decided a transaction.
type stage uint8

const (
	stageMail stage = iota + 1 // MAIL was refused
	stageRcpt                  // at least one RCPT was refused; no message sent
	stageData                  // DATA was refused
	stageEnd                   // the message was sent; the end-of-data replies decide
)

// delivery is how a next hop answered one transaction.
type delivery struct {
	host  string
	stage stage
	// reply is the reply that decided at stageMail and stageData, and for
	// SMTP the reply to the end of data.
	reply Reply
	// rcpts holds one reply per recipient, in envelope order: the replies
	// to RCPT, and for LMTP at stageEnd the replies after the end of data
	// (RFC 2033 4.2).
	rcpts []Reply
}

// transact runs one mail transaction on c: the envelope, then, when the
// next hop accepted all of it, the message.
func (f *Forwarder) transact(c *conn, env *Envelope, head []byte, body *plugins.Message, reused bool) (*delivery, *failure) {
	c.txs++
	if f.clientVerb(c, env) == "XCLIENT" {
		var fail *failure
		if env.clientRefused, fail = f.xclient(c, env.Client, reused); fail != nil {
			return nil, fail
		}
	}
	// Asked once: of a spooled body it is a read of the file.
	eol := eolMissing(body)
	d, fail := f.envelope(c, env, len(head)+int(body.Size())+eol, reused)
	if fail != nil || d.stage != 0 {
		return d, fail
	}
	return f.message(c, d, head, body, eol)
}

// envelope sends MAIL, the RCPTs and DATA. A session that was used before
// starts with RSET (RFC 5321 4.1.1.5), which also proves that it is still
// alive. With PIPELINING (RFC 2920) all of it goes out in one write and
// the replies are read in order; without it each command waits for its
// reply.
//
// The returned delivery has a stage when the next hop refused something;
// no message may be sent then. When a recipient was refused after a
// pipelined DATA already got 354, the session is marked unusable: it is
// dropped without the end-of-data mark, which would deliver an empty
// message to the others.
func (f *Forwarder) envelope(c *conn, env *Envelope, size int, reused bool) (*delivery, *failure) {
	cmd := f.s.CommandTimeout
	pipe := c.has("PIPELINING")
	w := c.bw
	// Until a reply of this transaction arrived, an I/O error on a pooled
	// session means the next hop closed it while it was idle.
	early := func(err error) *failure {
		c.unusable = true
		return &failure{host: c.host, kind: failBroken, stale: reused && !timedOut(err), err: err}
	}
	broken := func(err error) *failure {
		c.unusable = true
		return &failure{host: c.host, kind: failBroken, err: err}
	}
	rset := func() *failure {
		r, err := c.read(cmd, nil)
		if err == nil && r.Class() != 2 {
			err = fmt.Errorf("RSET %w", r)
		}
		if err != nil {
			return early(err)
		}
		return nil
	}

	c.deadline(cmd)
	if reused {
		w.WriteString("RSET\r\n")
		if !pipe {
			if err := w.Flush(); err != nil {
				return nil, early(err)
			}
			if fail := rset(); fail != nil {
				return nil, fail
			}
		}
	}
	nx := 0
	if f.clientVerb(c, env) == "XFORWARD" {
		nx = f.writeXforward(c, env)
		if nx > 0 && !pipe {
			if err := w.Flush(); err != nil {
				return nil, early(err)
			}
			var err error
			if env.clientRefused, err = readXforward(c, nx, cmd); err != nil {
				return nil, early(err)
			}
		}
	}
	f.writeMail(c, env, size)
	if pipe {
		for _, rcpt := range env.Rcpts {
			writeRcpt(w, rcpt)
		}
		w.WriteString("DATA\r\n")
	}
	c.deadline(cmd)
	if err := w.Flush(); err != nil {
		return nil, early(err)
	}
	if reused && pipe {
		if fail := rset(); fail != nil {
			return nil, fail
		}
	}
	if nx > 0 && pipe {
		var err error
		if env.clientRefused, err = readXforward(c, nx, cmd); err != nil {
			return nil, early(err)
		}
	}
	mail, err := c.read(cmd, nil)
	if err != nil {
		return nil, early(err)
	}

	d := &delivery{host: c.host, rcpts: make([]Reply, len(env.Rcpts))}
	if mail.Class() != 2 {
		d.reply = mail
		d.stage = stageMail
		if !pipe {
			return d, nil
		}
	}
	for i, rcpt := range env.Rcpts {
		if !pipe {
			writeRcpt(w, rcpt)
			c.deadline(cmd)
			if err := w.Flush(); err != nil {
				return nil, broken(err)
			}
		}
		r, err := c.read(cmd, nil)
		if err != nil {
			if d.stage != 0 {
				// The next hop said no and then hung up (421): its no
				// stands.
				c.unusable = true
				return d, nil
			}
			return nil, broken(err)
		}
		d.rcpts[i] = r
		if r.Class() != 2 && d.stage == 0 {
			d.stage = stageRcpt
		}
	}
	if d.stage != 0 && !pipe {
		return d, nil // the next use of the session starts with RSET
	}
	if !pipe {
		if err := c.write(cmd, "DATA"); err != nil {
			return nil, broken(err)
		}
	}
	data, err := c.read(cmd, nil)
	switch {
	case err != nil && d.stage != 0:
		c.unusable = true
		return d, nil
	case err != nil:
		return nil, broken(err)
	case d.stage != 0:
		// RFC 2920 3.1: after 354 the only ways out are a message or a
		// dropped session.
		c.unusable = c.unusable || data.Code == 354
		return d, nil
	case data.Code == 354:
		return d, nil
	case data.Class() < 4:
		return nil, broken(fmt.Errorf("DATA %w", data))
	}
	d.reply = data
	d.stage = stageData
	return d, nil
}

// message sends the header we add and the message after a 354, then reads
// the reply to its end: one for SMTP, one per recipient for LMTP (RFC
// 2033 4.2; all recipients were accepted, or we would not be here).
func (f *Forwarder) message(c *conn, d *delivery, head []byte, body *plugins.Message, eol int) (*delivery, *failure) {
	broken := func(err error, committed bool) *failure {
		c.unusable = true
		return &failure{host: c.host, kind: failBroken, committed: committed, err: err}
	}
	w := c.bw
	// RFC 5321 4.5.3.2.5: the whole message within the data timeout.
	c.deadline(f.s.DataTimeout)
	w.Write(head)
	if err := writeBody(w, body); err != nil {
		// A spooled body that cannot be read: the end mark is not sent,
		// so the next hop keeps nothing.
		return nil, broken(err, false)
	}
	if eol > 0 {
		w.WriteString("\r\n")
	}
	// Buffered writes failed already if the next hop is gone; then the end
	// mark cannot have been sent and no copy exists there.
	if _, err := w.Write(nil); err != nil {
		return nil, broken(err, false)
	}
	w.WriteString(".\r\n")
	if err := w.Flush(); err != nil {
		return nil, broken(err, true)
	}
	d.stage = stageEnd
	replies := d.rcpts
	if f.proto == SMTP {
		replies = []Reply{{}}
	}
	for i := range replies {
		r, err := c.read(f.s.DataTimeout, nil)
		if err == nil && r.Class() == 3 {
			err = fmt.Errorf("end of data %w", r)
		}
		if err != nil {
			return nil, broken(err, true)
		}
		replies[i] = r
	}
	if f.proto == SMTP {
		d.reply = replies[0]
	}
	return d, nil
}

// writeMail writes the MAIL command with the parameters the next hop
// understands: SIZE (RFC 1870), BODY=8BITMIME (RFC 6152; declaring it
// for 7-bit content is allowed) and SMTPUTF8 when the client asked for it
// (RFC 6531 3.4; the caller made sure it is offered).
func (f *Forwarder) writeMail(c *conn, env *Envelope, size int) {
	w := c.bw
	w.WriteString("MAIL FROM:<")
	w.WriteString(env.From)
	w.WriteByte('>')
	if c.has("SIZE") {
		w.WriteString(" SIZE=")
		w.WriteString(strconv.Itoa(size))
	}
	if c.has("8BITMIME") {
		w.WriteString(" BODY=8BITMIME")
	}
	if env.SMTPUTF8 {
		w.WriteString(" SMTPUTF8")
	}
	w.WriteString("\r\n")
}

func writeRcpt(w *bufio.Writer, rcpt string) {
	w.WriteString("RCPT TO:<")
	w.WriteString(rcpt)
	w.WriteString(">\r\n")
}

// eolMissing is 2 when body does not end with CRLF and needs one before
// the end-of-data mark, else 0.
func eolMissing(body *plugins.Message) int {
	n := body.Size()
	if n == 0 {
		return 0
	}
	var tail [2]byte
	k, _ := body.Reader().ReadAt(tail[:min(n, 2)], max(n-2, 0))
	if k == 2 && tail == [2]byte{'\r', '\n'} {
		return 0
	}
	return 2
}

// writeBody writes the message with dot-stuffing (writeStuffed). A body
// in memory goes at once; a spooled one is read in chunks, so memory does
// not grow with its size.
func writeBody(w *bufio.Writer, body *plugins.Message) error {
	if b := body.Bytes(); b != nil || body.Size() == 0 {
		writeStuffed(w, b, true)
		return nil
	}
	buf := make([]byte, 64<<10)
	r := body.Reader()
	lineStart := true
	for {
		n, err := r.Read(buf)
		lineStart = writeStuffed(w, buf[:n], lineStart)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// writeStuffed writes body with an extra dot in front of every line that
// starts with one (RFC 5321 4.5.2); the body arrives unstuffed. lineStart
// says whether body begins a line; the result, whether the next octet
// would.
func writeStuffed(w *bufio.Writer, body []byte, lineStart bool) bool {
	if len(body) == 0 {
		return lineStart
	}
	if lineStart && body[0] == '.' {
		w.WriteByte('.')
	}
	for {
		i := bytes.Index(body, []byte("\n."))
		if i < 0 {
			w.Write(body)
			return len(body) > 0 && body[len(body)-1] == '\n'
		}
		w.Write(body[:i+2])
		w.WriteByte('.')
		body = body[i+2:]
	}
}
