// Command gosmtp-sink is the go-smtp peer of `make bench-compare`: a server
// built on github.com/emersion/go-smtp, one goroutine per connection, that
// accepts every sender and recipient and throws each message away. It is
// what a Go SMTP server costs when it does nothing but speak the protocol,
// to set loopmx's figures against. It listens on a loopback address only.
//
// It is a module of its own so that go-smtp never enters loopmx's go.mod.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the go-smtp backend: every connection gets a discard session.
type sink struct{}

// NewSession starts a session for a new connection.
func (sink) NewSession(*smtp.Conn) (smtp.Session, error) { return discard{}, nil }

// discard accepts every command of a transaction and keeps nothing.
type discard struct{}

// Mail accepts any sender.
func (discard) Mail(string, *smtp.MailOptions) error { return nil }

// Rcpt accepts any recipient.
func (discard) Rcpt(string, *smtp.RcptOptions) error { return nil }

// Data reads the message to its end and drops it.
func (discard) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// Reset forgets nothing, since nothing was kept.
func (discard) Reset() {}

// Logout ends the session.
func (discard) Logout() error { return nil }

// main parses the flags, refuses a non-loopback address, and serves until
// SIGINT or SIGTERM.
func main() {
	addr := flag.String("addr", "127.0.0.1:12527", "listen address (a loopback address)")
	cert := flag.String("cert", "", "PEM certificate: offer STARTTLS with it (crypto/tls, as loopmx)")
	key := flag.String("key", "", "PEM private key of -cert")
	flag.Parse()
	if err := loopback(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "gosmtp-sink:", err)
		os.Exit(2)
	}

	s := smtp.NewServer(sink{})
	s.Addr = *addr
	s.Domain = "gosmtp-sink"
	s.ReadTimeout = 300 * time.Second
	s.WriteTimeout = 300 * time.Second
	s.MaxMessageBytes = 10 << 20
	s.MaxRecipients = 1000
	s.ErrorLog = log.New(io.Discard, "", 0)
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			fmt.Fprintln(os.Stderr, "gosmtp-sink: -cert/-key:", err)
			os.Exit(2)
		}
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}}
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		s.Close()
	}()

	log.Printf("gosmtp-sink: listening on %s, pid %d", *addr, os.Getpid())
	if err := s.ListenAndServe(); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
		log.Fatal("gosmtp-sink: ", err)
	}
}

// loopback returns an error unless addr is host:port with a loopback IP.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %s: only a loopback address is allowed", addr)
	}
	return nil
}
