package nexthop

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// conn is one session with a next hop: greeted, EHLO (or LHLO) done, TLS
// started when asked for. It is used by one delivery at a time; between
// deliveries it waits in the pool.
type conn struct {
	host string // as configured: "host:port" or "unix:/path"
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	// ext holds the EHLO/LHLO keywords, upper case, with their parameters.
	ext map[string]string
	// txs counts the transactions begun on this session.
	txs int
	// idleSince is when the session went back to the pool.
	idleSince time.Time
	// limit is the deadline of the delivery using the session: no read or
	// write waits past it, whatever the per-step timeout says.
	limit time.Time
	// unusable is set when the session must not be reused: an I/O error,
	// an aborted DATA phase, a reply out of step.
	unusable bool
	// switched is set once XCLIENT made the session another client's
	// (xclient.go): it is not pooled. xclient holds the XCLIENT
	// attributes the next hop offered ("" when it did not).
	switched bool
	xclient  string
}

// failKind says why a next hop could not take a message.
type failKind uint8

const (
	// failConnect: no usable session (connection refused, greeting or
	// EHLO refused, STARTTLS failed). Answered 451 4.4.1.
	failConnect failKind = iota
	// failBroken: the dialog broke off (timeout, connection closed, a reply
	// that makes no sense). Answered 451 4.4.2.
	failBroken
	// failNoUTF8: the session works but the next hop lacks SMTPUTF8, which
	// the message needs (RFC 6531 3.4).
	failNoUTF8
)

// failure is a delivery attempt that ended without a reply the sender
// should see.
type failure struct {
	host string
	kind failKind
	// stale is set when a session taken from the pool failed before it
	// answered anything of the new transaction: the next hop had closed it
	// while it was idle. Nothing was delivered; a fresh session may work.
	stale bool
	// committed is set once the end-of-data mark may have reached the next
	// hop: it may have the message, so no other host is tried.
	committed bool
	err       error
}

func (f *failure) Error() string { return f.host + ": " + f.err.Error() }

func (f *failure) Unwrap() error { return f.err }

// timedOut reports whether err is a deadline that passed.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// splitHost turns a configured host into a network and an address.
func splitHost(host string) (network, addr string) {
	if path, ok := strings.CutPrefix(host, "unix:"); ok {
		return "unix", path
	}
	return "tcp", host
}

// dial opens a session with host: connect, greeting, EHLO/LHLO, and
// STARTTLS followed by a second EHLO when the settings ask for TLS.
func (f *Forwarder) dial(host string, limit time.Time) (*conn, *failure) {
	network, addr := splitHost(host)
	d := net.Dialer{Deadline: earliest(time.Now().Add(f.s.ConnectTimeout), limit)}
	nc, err := d.Dial(network, addr)
	if err != nil {
		// RFC 3463 3.5: X.4.1 "No answer from host", refused or timed out.
		return nil, &failure{host: host, kind: failConnect, err: err}
	}
	c := &conn{host: host, nc: nc, limit: limit}
	c.setStream(nc)
	if err := f.open(c); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// open runs the greeting and hello phase of a new session.
func (f *Forwarder) open(c *conn) *failure {
	// RFC 5321 4.3.1: the greeting is 220; anything else refuses service.
	r, err := c.read(f.s.CommandTimeout, nil)
	if err != nil {
		return c.setupFail(err)
	}
	if r.Code != 220 {
		return &failure{host: c.host, kind: failConnect, err: fmt.Errorf("greeting %w", r)}
	}
	if err := f.hello(c); err != nil {
		return err
	}
	if !f.s.StartTLS {
		return nil
	}
	// RFC 3207 4: the keyword must have been offered. We asked for TLS,
	// so a next hop without it is not used.
	if _, ok := c.ext["STARTTLS"]; !ok {
		return &failure{host: c.host, kind: failConnect, err: errors.New("STARTTLS not offered")}
	}
	if r, err := c.command(f.s.CommandTimeout, "STARTTLS"); err != nil {
		return c.setupFail(err)
	} else if r.Code != 220 {
		return &failure{host: c.host, kind: failConnect, err: fmt.Errorf("STARTTLS %w", r)}
	}
	// Whatever the next hop sent after its 220 and before the handshake
	// is not to be trusted (the CVE-2011-0411 class, the other way round).
	if c.br.Buffered() > 0 {
		return &failure{host: c.host, kind: failConnect, err: errors.New("data after the STARTTLS reply")}
	}
	cfg := f.tlsConfig(c.host)
	tc := tls.Client(c.nc, cfg)
	c.deadline(f.s.CommandTimeout)
	if err := tc.Handshake(); err != nil {
		return &failure{host: c.host, kind: failConnect, err: fmt.Errorf("TLS handshake: %w", err)}
	}
	c.nc = tc
	c.setStream(tc)
	// RFC 3207 4.2: forget what we knew and say hello again.
	return f.hello(c)
}

// hello sends EHLO, or LHLO for LMTP (RFC 2033 4.1), and records the
// keywords. An SMTP next hop that refuses EHLO gets HELO (RFC 5321
// 4.1.4) and is then used without extensions.
func (f *Forwarder) hello(c *conn) *failure { return f.helloAs(c, f.s.Helo) }

// helloAs is hello with the name given.
func (f *Forwarder) helloAs(c *conn, name string) *failure {
	verb := "EHLO "
	if f.proto == LMTP {
		verb = "LHLO "
	}
	var lines []string
	if err := c.write(f.s.CommandTimeout, verb+name); err != nil {
		return c.setupFail(err)
	}
	r, err := c.read(f.s.CommandTimeout, &lines)
	if err != nil {
		return c.setupFail(err)
	}
	c.ext = make(map[string]string, len(lines))
	if r.Class() == 2 {
		// The first line is the greeting; each further one is a keyword
		// with its parameters (RFC 5321 4.1.1.1).
		for _, l := range lines[1:] {
			k, v, _ := strings.Cut(l, " ")
			c.ext[strings.ToUpper(k)] = v
		}
		if v, ok := c.ext["XCLIENT"]; ok && !c.switched {
			c.xclient = v
		}
		return nil
	}
	if f.proto == SMTP && r.Class() == 5 {
		r, err = c.command(f.s.CommandTimeout, "HELO "+name)
		if err != nil {
			return c.setupFail(err)
		}
		if r.Class() == 2 {
			return nil
		}
	}
	return &failure{host: c.host, kind: failConnect, err: fmt.Errorf("%s%w", verb, r)}
}

// tlsConfig is the client TLS configuration for host.
func (f *Forwarder) tlsConfig(host string) *tls.Config {
	name := f.s.TLSServerName
	if name == "" {
		network, addr := splitHost(host)
		name = "localhost"
		if network == "tcp" {
			if h, _, err := net.SplitHostPort(addr); err == nil {
				name = h
			}
		}
	}
	return &tls.Config{
		ServerName:         name,
		InsecureSkipVerify: !f.s.TLSVerify, // the operator's choice, tls_verify = false
		MinVersion:         tls.VersionTLS12,
	}
}

func (c *conn) setStream(nc net.Conn) {
	c.br = bufio.NewReaderSize(nc, maxReplyLine)
	c.bw = bufio.NewWriterSize(nc, 16<<10)
}

// deadline bounds the next reads and writes by d, and always by the
// delivery's limit.
func (c *conn) deadline(d time.Duration) {
	c.nc.SetDeadline(earliest(time.Now().Add(d), c.limit))
}

// write sends one command line and flushes.
func (c *conn) write(d time.Duration, line string) error {
	c.deadline(d)
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	return c.bw.Flush()
}

// read reads one reply within d.
func (c *conn) read(d time.Duration, lines *[]string) (Reply, error) {
	c.deadline(d)
	return readReply(c.br, lines)
}

// command sends one line and reads its reply.
func (c *conn) command(d time.Duration, line string) (Reply, error) {
	if err := c.write(d, line); err != nil {
		return Reply{}, err
	}
	return c.read(d, nil)
}

// setupFail classifies an I/O error while the session is set up: a
// timeout is a slow next hop (4.4.2), anything else one we could not
// reach (4.4.1).
func (c *conn) setupFail(err error) *failure {
	c.unusable = true
	kind := failConnect
	if timedOut(err) {
		kind = failBroken
	}
	return &failure{host: c.host, kind: kind, err: err}
}

// quit ends the session politely (RFC 5321 4.1.1.10) within d and closes
// it. The reply is read so that the next hop, not we, closes first.
func (c *conn) quit(d time.Duration) {
	c.limit = time.Now().Add(d)
	if _, err := c.command(d, "QUIT"); err != nil {
		c.unusable = true
	}
	c.close()
}

// close closes the socket without a word.
func (c *conn) close() { c.nc.Close() }

// has reports whether the next hop offered the EHLO keyword k.
func (c *conn) has(k string) bool {
	_, ok := c.ext[k]
	return ok
}

func earliest(a, b time.Time) time.Time {
	if b.IsZero() || a.Before(b) {
		return a
	}
	return b
}
