package smtpproto

import (
	"bytes"
	"fmt"
	"testing"
)

// newConfig returns the prepared Config of a test: every value set here,
// none left to a default (package config owns those), small limits so that
// edge cases are cheap to reach, then changed by each edit in turn.
func newConfig(edits ...func(*Config)) *Config {
	c := &Config{
		Hostname:          "mx.test",
		MaxLineLength:     512,
		MaxDataLineLength: 1000,
		MaxMessageSize:    1000,
		MaxRecipients:     3,
		MaxErrors:         5,
	}
	for _, edit := range edits {
		edit(c)
	}
	if err := c.Prepare(); err != nil {
		panic(err) // a test that builds a bad Config is itself wrong
	}
	return c
}

// testConfig is the Config most tests use: newConfig unchanged.
func testConfig() *Config { return newConfig() }

// drive feeds the pieces to a new session in order, accepting every
// decision, and returns the transcript: every reply written and, for each
// message, a line "MSG from=... rcpts=... body=%q". It stops at Close.
//
// The envelope in the MSG line is the one the host accepted through the
// KindMail and KindRcpt events (their Arg); TestTxEnvelope checks that
// Session.Tx agrees with it.
func drive(cfg *Config, pieces ...[]byte) string {
	s := NewSession(cfg)
	var out bytes.Buffer
	var buf []byte
	var from string
	var rcpts []string
	for _, p := range pieces {
		buf = append(buf, p...)
		for {
			n, ev := s.Next(buf)
			buf = buf[n:]
			out.Write(ev.Reply)
			switch ev.Kind {
			case KindMail:
				from, rcpts = ev.Arg, nil
				out.Write(s.Resolve(Reply{}))
			case KindRcpt:
				rcpts = append(rcpts, ev.Arg)
				out.Write(s.Resolve(Reply{}))
			case KindHelo, KindData:
				out.Write(s.Resolve(Reply{}))
			case KindMessage:
				fmt.Fprintf(&out, "MSG from=%s rcpts=%v body=%q\n", from, rcpts, s.Body())
				out.Write(s.Resolve(Reply{Code: 250, Enhanced: "2.0.0", Text: "Ok: queued as X"}))
			}
			if ev.Close {
				out.WriteString("CLOSE\n")
				return out.String()
			}
			if ev.Kind == KindNeedMore {
				break
			}
		}
	}
	return out.String()
}

// splits returns the input whole, byte by byte, and split in two at every
// point (with -short, at about 16 points spread over it).
func splits(in []byte) [][][]byte {
	var all [][][]byte
	all = append(all, [][]byte{in})
	var bytewise [][]byte
	for i := range in {
		bytewise = append(bytewise, in[i:i+1])
	}
	all = append(all, bytewise)
	step := 1
	if testing.Short() {
		step = max(1, len(in)/16)
	}
	for i := 1; i < len(in); i += step {
		all = append(all, [][]byte{in[:i], in[i:]})
	}
	return all
}
