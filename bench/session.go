package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// Phases whose latency the report shows.
const (
	phConnect = iota // TCP connect
	phBanner         // connect to greeting, the time a sender waits for the banner
	phGreet          // the end of the handshake to the greeting: what the server's loopmx_banner_seconds sees, plus the accept queue
	phEHLO           // EHLO sent to its last reply line
	phTLS            // STARTTLS sent to the end of the TLS handshake
	phEOD            // end of DATA (the final ".") to the server's reply
	phMessage        // MAIL sent to the reply after the final "."
	phSession        // a whole session, from connect (or from when it was due) to 221
	numPhases
)

var phaseNames = [numPhases]string{"connect", "banner", "greet", "ehlo", "starttls", "eod", "message", "session"}

// Kinds of error, counted apart in the report.
const (
	errReply4  = iota // a 4xx reply where the dialog wanted success
	errReply5         // a 5xx reply likewise
	errRefused        // connection refused
	errReset          // connection reset, or broken pipe
	errTimeout        // no reply within -timeout
	errClosed         // the server closed the connection mid-dialog
	errOther          // anything else: malformed replies, local errors
	errUnsent         // open loop: arrivals due before the end but never started
	numErrKinds
)

var errNames = [numErrKinds]string{"4xx", "5xx", "refused", "reset", "timeout", "closed", "other", "unsent"}

// Outcomes of a session that went as the server chose; for the mix these
// are expected answers, not errors.
const (
	outDelivered = iota
	outRcptRejected
	outRcptAccepted
	outHungUp
	outEarlyRejected
	outEarlyAccepted
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"delivered", "rcpt_rejected", "rcpt_accepted", "hung_up", "early_rejected", "early_accepted"}

// replyError is a reply whose class was not the one the dialog needed.
type replyError struct {
	phase string
	code  int
	text  string
}

// Error says which phase got which reply.
func (e *replyError) Error() string { return fmt.Sprintf("%s: %d %s", e.phase, e.code, e.text) }

var (
	errMalformed = errors.New("malformed reply")
	errLongLine  = errors.New("reply line too long")
)

// classify sorts an error into one of the kinds the report counts.
func classify(err error) int {
	var re *replyError
	switch {
	case errors.As(err, &re):
		switch re.code / 100 {
		case 4:
			return errReply4
		case 5:
			return errReply5
		}
		return errOther
	case errors.Is(err, syscall.ECONNREFUSED):
		return errRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return errReset
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errClosed
	}
	return errOther
}

// reply is one SMTP reply as read off the wire.
type reply struct {
	code       int
	pipelining bool   // an EHLO reply that offers PIPELINING (RFC 2920)
	last       []byte // its last line; valid only until the next read
}

// readReply reads one reply, which may span several lines (RFC 5321 4.2.1:
// "250-" continues, "250 " ends). It reads in place from the buffer and does
// not allocate.
func readReply(br *bufio.Reader) (reply, error) {
	var rp reply
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			return rp, errLongLine
		case errors.Is(err, io.EOF) && len(line) > 0:
			return rp, io.ErrUnexpectedEOF
		case err != nil:
			return rp, err
		}
		if len(line) < 3 || !isDigit(line[0]) || !isDigit(line[1]) || !isDigit(line[2]) {
			return rp, errMalformed
		}
		rp.code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
		rp.last = line
		if len(line) > 3 {
			rp.pipelining = rp.pipelining || isKeyword(line[4:], "PIPELINING")
			if line[3] == '-' {
				continue
			}
		}
		return rp, nil
	}
}

// isDigit reports whether c is an ASCII digit.
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isKeyword reports whether an EHLO line's text is the keyword kw, with or
// without parameters (RFC 5321 4.1.1.1).
func isKeyword(text []byte, kw string) bool {
	if len(text) < len(kw) || !bytes.EqualFold(text[:len(kw)], []byte(kw)) {
		return false
	}
	return len(text) == len(kw) || text[len(kw)] == ' ' || text[len(kw)] == '\r' || text[len(kw)] == '\n'
}

// worker is one client connection slot: it runs sessions one after another,
// reusing its read buffer, and records into the run's shared counters.
type worker struct {
	r          *run
	br         *bufio.Reader
	c          net.Conn
	pipelining bool
}

// newWorker returns a worker whose read buffer holds bufSize bytes: enough
// for the longest reply line it expects.
func (r *run) newWorker(bufSize int) *worker {
	return &worker{r: r, br: bufio.NewReaderSize(nil, bufSize)}
}

// expect reads one reply and fails unless its first digit is class.
func (w *worker) expect(phase string, class int) (reply, error) {
	rp, err := readReply(w.br)
	if err != nil {
		return rp, fmt.Errorf("%s: %w", phase, err)
	}
	if rp.code/100 != class {
		return rp, &replyError{phase: phase, code: rp.code, text: string(bytes.TrimSpace(rp.last[min(4, len(rp.last)):]))}
	}
	return rp, nil
}

// send writes one command or group of commands.
func (w *worker) send(b []byte) error {
	_, err := w.c.Write(b)
	return err
}

// dial connects and records the connect time; the deadline bounds the
// whole session.
func (w *worker) dial(t0 time.Time) error {
	c, err := w.r.dialer.dial()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	w.r.st.phase[phConnect].record(time.Since(t0))
	w.c = c
	w.pipelining = false
	if err := c.SetDeadline(t0.Add(w.r.p.Timeout)); err != nil {
		return err
	}
	w.br.Reset(c)
	return nil
}

// open connects and waits for a 2xx greeting.
func (w *worker) open() error {
	t0 := time.Now()
	if err := w.dial(t0); err != nil {
		return err
	}
	t1 := time.Now()
	if _, err := w.expect("banner", 2); err != nil {
		return err
	}
	t2 := time.Now()
	w.r.st.phase[phBanner].record(t2.Sub(t0))
	w.r.st.phase[phGreet].record(t2.Sub(t1))
	return nil
}

// hello sends EHLO and notes whether the server offers PIPELINING. With
// STARTTLS asked for, it then upgrades the connection and says EHLO again,
// since the client must forget what it learnt before TLS (RFC 3207 4.2).
func (w *worker) hello() error {
	if err := w.ehlo(); err != nil {
		return err
	}
	if w.r.tls == nil {
		return nil
	}
	t0 := time.Now()
	if err := w.command(w.r.sc.starttls, "starttls", 2); err != nil {
		return err
	}
	tc := tls.Client(w.c, w.r.tls)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("starttls: handshake: %w", err)
	}
	w.r.st.phase[phTLS].record(time.Since(t0))
	if tc.ConnectionState().DidResume {
		w.r.st.resumed.Add(1)
	}
	w.c = tc
	w.br.Reset(tc)
	return w.ehlo()
}

// ehlo sends EHLO, reads the reply and notes whether it offers PIPELINING.
func (w *worker) ehlo() error {
	t0 := time.Now()
	if err := w.send(w.r.sc.ehlo); err != nil {
		return err
	}
	rp, err := w.expect("ehlo", 2)
	if err != nil {
		return err
	}
	w.pipelining = rp.pipelining
	w.r.st.phase[phEHLO].record(time.Since(t0))
	return nil
}

// message runs one mail transaction: MAIL, the RCPTs, DATA, the payload.
// Pipelined, the first three go out in one write and their replies are read
// together, as RFC 2920 3.1 allows (DATA ends the group).
func (w *worker) message(pipelined bool, body []byte) error {
	sc := w.r.sc
	t0 := time.Now()
	if pipelined {
		if err := w.send(sc.group); err != nil {
			return err
		}
		var first error
		keep := func(_ reply, err error) {
			if first == nil {
				first = err
			}
		}
		keep(w.expect("mail", 2))
		for range sc.rcpts {
			keep(w.expect("rcpt", 2))
		}
		keep(w.expect("data", 3))
		if first != nil {
			return first
		}
	} else {
		if err := w.command(sc.mail, "mail", 2); err != nil {
			return err
		}
		for _, rc := range sc.rcpts {
			if err := w.command(rc, "rcpt", 2); err != nil {
				return err
			}
		}
		if err := w.command(sc.data, "data", 3); err != nil {
			return err
		}
	}
	t1 := time.Now()
	if err := w.command(body, "eod", 2); err != nil {
		return err
	}
	now := time.Now()
	w.r.st.phase[phEOD].record(now.Sub(t1))
	w.r.st.phase[phMessage].record(now.Sub(t0))
	return nil
}

// command sends b and expects a reply of the given class.
func (w *worker) command(b []byte, phase string, class int) error {
	if err := w.send(b); err != nil {
		return err
	}
	_, err := w.expect(phase, class)
	return err
}

// quit ends the session politely and closes the connection.
func (w *worker) quit() error {
	err := w.command(w.r.sc.quit, "quit", 2)
	w.close()
	return err
}

// abandon closes after a failure; after a refused command a real client still
// says QUIT, so that is sent (not awaited) when the connection is sound.
func (w *worker) abandon(err error) {
	if w.c == nil {
		return
	}
	var re *replyError
	if errors.As(err, &re) {
		_ = w.send(w.r.sc.quit) // best effort on the way out
	}
	w.close()
}

// close closes the connection, if one is open.
func (w *worker) close() {
	if w.c != nil {
		w.c.Close()
		w.c = nil
	}
}

// session runs one whole session of the given kind and returns its outcome.
func (w *worker) session(kind int, arrival uint64) (int, error) {
	sc := w.r.sc
	if kind == kindEarly {
		return w.earlyTalker()
	}
	if err := w.open(); err != nil {
		return 0, err
	}
	if err := w.hello(); err != nil {
		return 0, err
	}
	switch kind {
	case kindHangup:
		if err := w.command(sc.mail, "mail", 2); err != nil {
			return 0, err
		}
		w.close()
		return outHungUp, nil
	case kindReject:
		if err := w.command(sc.mail, "mail", 2); err != nil {
			return 0, err
		}
		if err := w.send(sc.reject); err != nil {
			return 0, err
		}
		rp, err := readReply(w.br)
		if err != nil {
			return 0, fmt.Errorf("rcpt: %w", err)
		}
		out := outRcptRejected
		if rp.code/100 == 2 {
			out = outRcptAccepted
		}
		return out, w.quit()
	}
	body := sc.bodies[sc.sizes.pick(arrival)]
	if err := w.message(false, body); err != nil {
		return 0, err
	}
	return outDelivered, w.quit()
}

// earlyTalker sends EHLO the moment the connection is up, before the
// greeting. A server may refuse it (554 then close, as Haraka does) or serve
// it; either is an outcome, not an error.
func (w *worker) earlyTalker() (int, error) {
	if err := w.dial(time.Now()); err != nil {
		return 0, err
	}
	if err := w.send(w.r.sc.ehlo); err != nil {
		w.close()
		return outEarlyRejected, nil
	}
	for range 2 { // the greeting, then the answer to EHLO
		rp, err := readReply(w.br)
		if err != nil || rp.code/100 != 2 {
			w.close()
			return outEarlyRejected, nil
		}
	}
	return outEarlyAccepted, w.quit()
}
