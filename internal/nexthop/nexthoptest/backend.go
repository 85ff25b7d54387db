// Package nexthoptest is a scripted SMTP and LMTP server for the tests of
// the forwarding plugins: it records what it is sent, answers as a test
// tells it to, and can stall, drop its sessions or stop.
package nexthoptest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultExtensions are the EHLO/LHLO keywords offered when Options does
// not name any.
var DefaultExtensions = []string{"PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"}

// Options shape a Backend. Every answer function returns a whole reply
// line without CRLF, or "" for the default.
type Options struct {
	// LMTP makes the server speak LMTP (LHLO; one reply per recipient
	// after the message) instead of SMTP.
	LMTP bool
	// Unix listens on a unix socket instead of 127.0.0.1:0.
	Unix bool
	// Extensions are the keywords offered; nil offers DefaultExtensions,
	// an empty list none.
	Extensions []string
	// TLS, when set, adds STARTTLS with this server configuration.
	TLS *tls.Config
	// Greeting replaces the 220 greeting line.
	Greeting string
	// RefuseEHLO answers EHLO with 502, as an old server does.
	RefuseEHLO bool
	// Mail answers MAIL; default "250 2.1.0 Ok".
	Mail func(from string) string
	// Rcpt answers RCPT; default "250 2.1.5 Ok".
	Rcpt func(to string) string
	// Final answers the end of the message: once with rcpt "" for SMTP,
	// once per recipient for LMTP; default "250 2.0.0 Ok: queued".
	Final func(rcpt string) string
	// HoldGreeting and HoldFinal, when not nil, make the server wait until
	// they are closed (or the server stops) before it sends its greeting,
	// or its replies to the end of a message (which it has recorded by
	// then).
	HoldGreeting, HoldFinal chan struct{}
}

// Message is one message the backend took in full.
type Message struct {
	// Conn numbers the session it came over, from 1.
	Conn int
	// From and Params are the MAIL address and parameters as sent.
	From, Params string
	// Rcpts are the recipients the backend accepted.
	Rcpts []string
	// Data is the message with dot-stuffing undone.
	Data string
	// TLS tells that the session had started TLS.
	TLS bool
}

// Backend is a running scripted server.
type Backend struct {
	// Addr is the address in the form `hosts` takes: "127.0.0.1:port" or
	// "unix:/path".
	Addr string

	o    Options
	ln   net.Listener
	done chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	conns    map[net.Conn]bool
	accepted int
	msgs     []Message
	groups   []string
	verbs    []string
	stopped  bool
}

// Start starts a backend that stops when the test ends.
func Start(t testing.TB, o Options) *Backend {
	t.Helper()
	b := &Backend{o: o, done: make(chan struct{}), conns: map[net.Conn]bool{}}
	var err error
	if o.Unix {
		// A short directory of its own: a socket path has at most 107
		// octets, and test temp dirs carry the test's name.
		dir, derr := os.MkdirTemp("", "nht")
		if derr != nil {
			t.Fatal(derr)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		path := filepath.Join(dir, "lmtp.sock")
		b.ln, err = net.Listen("unix", path)
		b.Addr = "unix:" + path
	} else {
		b.ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			b.Addr = b.ln.Addr().String()
		}
	}
	if err != nil {
		t.Fatalf("nexthoptest: listen: %v", err)
	}
	if b.o.Extensions == nil {
		b.o.Extensions = DefaultExtensions
	}
	b.wg.Go(b.accept)
	t.Cleanup(b.Stop)
	return b
}

func (b *Backend) accept() {
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.stopped {
			b.mu.Unlock()
			nc.Close()
			return
		}
		b.accepted++
		n := b.accepted
		b.conns[nc] = true
		b.mu.Unlock()
		b.wg.Go(func() {
			defer func() {
				nc.Close()
				b.mu.Lock()
				delete(b.conns, nc)
				b.mu.Unlock()
			}()
			s := &session{b: b, n: n, nc: nc}
			s.serve()
		})
	}
}

// Stop closes the listener and every session, then waits for them. A
// message that was not complete is lost, as in a crash.
func (b *Backend) Stop() {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return
	}
	b.stopped = true
	close(b.done)
	b.mu.Unlock()
	b.ln.Close()
	b.CloseConns()
	b.wg.Wait()
}

// CloseConns closes every open session but keeps listening, as a server
// does whose idle timer fired.
func (b *Backend) CloseConns() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for nc := range b.conns {
		nc.Close()
	}
}

// Conns is the number of sessions accepted so far.
func (b *Backend) Conns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted
}

// Messages returns what the backend took so far.
func (b *Backend) Messages() []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.msgs)
}

// Groups returns, for every time the backend sent replies, the commands
// it had read since it last did ("RSET MAIL RCPT RCPT DATA"). Like a
// pipelining server (RFC 2920 3.2) it answers only when it has read all
// the input it has; so commands the client sent in one write form one
// group.
func (b *Backend) Groups() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.groups)
}

// Verbs returns every command verb read, in order, over all sessions.
func (b *Backend) Verbs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.verbs)
}

// session is one connection to the backend.
type session struct {
	b     *Backend
	n     int
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	group []string
	tls   bool

	mail   bool
	from   string
	params string
	rcpts  []string
}

// ioTimeout ends a session that a test forgot.
const ioTimeout = 30 * time.Second

func (s *session) serve() {
	s.br, s.bw = bufio.NewReader(s.nc), bufio.NewWriter(s.nc)
	if !s.wait(s.b.o.HoldGreeting) {
		return
	}
	word := "ESMTP"
	if s.b.o.LMTP {
		word = "LMTP"
	}
	if s.b.o.Greeting != "" {
		s.reply(s.b.o.Greeting)
	} else {
		s.reply("220 backend.test " + word + " nexthoptest")
	}
	s.flush()
	for {
		s.nc.SetDeadline(time.Now().Add(ioTimeout))
		line, err := s.br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		s.group = append(s.group, verb)
		s.b.mu.Lock()
		s.b.verbs = append(s.b.verbs, verb)
		s.b.mu.Unlock()
		if !s.command(verb, arg) {
			s.flush()
			return
		}
		if s.br.Buffered() == 0 {
			s.flush()
		}
	}
}

// wait blocks on hold, if any, until it or the backend is closed; it
// reports whether to go on.
func (s *session) wait(hold chan struct{}) bool {
	if hold == nil {
		return true
	}
	select {
	case <-hold:
		return true
	case <-s.b.done:
		return false
	}
}

func (s *session) reply(line string) { s.bw.WriteString(line + "\r\n") }

func (s *session) flush() {
	if len(s.group) > 0 {
		s.b.mu.Lock()
		s.b.groups = append(s.b.groups, strings.Join(s.group, " "))
		s.b.mu.Unlock()
		s.group = s.group[:0]
	}
	s.bw.Flush()
}

func or(answer func(string) string, arg, def string) string {
	if answer != nil {
		if r := answer(arg); r != "" {
			return r
		}
	}
	return def
}

// command answers one command; false ends the session.
func (s *session) command(verb, arg string) bool {
	o := &s.b.o
	switch {
	case verb == "EHLO" && !o.LMTP && o.RefuseEHLO:
		s.reply("502 5.5.1 EHLO not implemented")
	case (verb == "EHLO" && !o.LMTP) || (verb == "LHLO" && o.LMTP):
		s.reset()
		ext := slices.Clone(o.Extensions)
		if o.TLS != nil && !s.tls {
			ext = append(ext, "STARTTLS")
		}
		if len(ext) == 0 {
			s.reply("250 backend.test")
			break
		}
		s.reply("250-backend.test")
		for i, e := range ext {
			sep := "-"
			if i == len(ext)-1 {
				sep = " "
			}
			s.reply("250" + sep + e)
		}
	case verb == "HELO" && !o.LMTP:
		s.reset()
		s.reply("250 backend.test")
	case verb == "STARTTLS" && o.TLS != nil && !s.tls:
		s.reply("220 2.0.0 Ready to start TLS")
		s.flush()
		tc := tls.Server(s.nc, o.TLS)
		if err := tc.Handshake(); err != nil {
			return false
		}
		s.nc, s.tls = tc, true
		s.br, s.bw = bufio.NewReader(tc), bufio.NewWriter(tc)
		s.reset()
	case verb == "MAIL":
		from, params := splitPath(arg, "FROM:")
		r := or(o.Mail, from, "250 2.1.0 Ok")
		if r[0] == '2' {
			s.mail, s.from, s.params = true, from, params
		}
		s.reply(r)
	case verb == "RCPT":
		if !s.mail {
			s.reply("503 5.5.1 need MAIL")
			break
		}
		to, _ := splitPath(arg, "TO:")
		r := or(o.Rcpt, to, "250 2.1.5 Ok")
		if r[0] == '2' {
			s.rcpts = append(s.rcpts, to)
		}
		s.reply(r)
	case verb == "DATA":
		if !s.mail || len(s.rcpts) == 0 {
			s.reply("554 5.5.1 No valid recipients")
			break
		}
		return s.data()
	case verb == "RSET":
		s.reset()
		s.reply("250 2.0.0 Ok")
	case verb == "NOOP":
		s.reply("250 2.0.0 Ok")
	case verb == "QUIT":
		s.reply("221 2.0.0 Bye")
		return false
	default:
		s.reply("502 5.5.1 Not implemented")
	}
	return true
}

// data reads a message up to the end mark, records it, and answers it.
func (s *session) data() bool {
	s.reply("354 Go ahead")
	s.flush()
	var buf bytes.Buffer
	for {
		s.nc.SetDeadline(time.Now().Add(ioTimeout))
		line, err := s.br.ReadString('\n')
		if err != nil {
			return false // an incomplete message is not delivered
		}
		if line == ".\r\n" {
			break
		}
		buf.WriteString(strings.TrimPrefix(line, "."))
	}
	m := Message{Conn: s.n, From: s.from, Params: s.params, Rcpts: slices.Clone(s.rcpts), Data: buf.String(), TLS: s.tls}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, m)
	s.b.mu.Unlock()
	if !s.wait(s.b.o.HoldFinal) {
		return false
	}
	if s.b.o.LMTP {
		for _, r := range m.Rcpts {
			s.reply(or(s.b.o.Final, r, "250 2.0.0 Ok: delivered to <"+r+">"))
		}
	} else {
		s.reply(or(s.b.o.Final, "", "250 2.0.0 Ok: queued"))
	}
	s.reset()
	return true
}

func (s *session) reset() {
	s.mail, s.from, s.params, s.rcpts = false, "", "", nil
}

// splitPath splits "FROM:<a@b> SIZE=1" into "a@b" and "SIZE=1".
func splitPath(arg, prefix string) (string, string) {
	arg = arg[min(len(prefix), len(arg)):]
	path, params, _ := strings.Cut(arg, " ")
	return strings.Trim(path, "<>"), params
}

// SelfSigned returns a server TLS configuration with a new self-signed
// certificate for "localhost" and 127.0.0.1.
func SelfSigned(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
