package nexthop

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/breaker"
)

// Prober asks a next hop whether it would take mail for a recipient,
// without sending any: MAIL, RCPT, then RSET (Postfix's recipient
// address verification, Haraka's call-ahead). It uses the sessions of
// the forwarder with the same settings (the pool is shared), so probing
// costs no connection of its own while the forwarder keeps some open.
//
// Each host has a circuit breaker: a host that timed out, or failed
// three times in a row, is not tried for a back-off period, so that
// while the next hop is down every probe does not wait for a connect.
type Prober struct {
	f        *Forwarder
	breakers map[string]*breaker.Breaker // by host, as configured
	once     sync.Once
}

// NewProber returns a prober for the next hop of settings s (from
// LoadSettings), speaking proto.
func NewProber(name string, proto Protocol, s Settings) *Prober {
	p := &Prober{
		f:        &Forwarder{name: name, proto: proto, s: s, pool: sharedPool(proto, s)},
		breakers: make(map[string]*breaker.Breaker, len(s.Hosts)),
	}
	for _, h := range s.Hosts {
		p.breakers[h] = breaker.New("next hop "+h, breaker.Options{})
	}
	return p
}

// Close hands the pool back (its idle sessions end with QUIT once no
// forwarder uses them either). Calls after the first do nothing.
func (p *Prober) Close() { p.once.Do(func() { releasePool(p.f.pool) }) }

// Ready reports whether a probe would try any host now: false while the
// breaker of every host is open. It answers in well under a
// microsecond, for a plugin deciding on the event loop.
func (p *Prober) Ready() bool {
	for _, b := range p.breakers {
		if b.Ready() {
			return true
		}
	}
	return false
}

// ProbeResult is how the next hop answered a probe.
type ProbeResult struct {
	// Host is the host that answered.
	Host string
	// Mail is the reply to MAIL; Rcpt the reply to RCPT, zero when MAIL
	// was refused.
	Mail, Rcpt Reply
}

// errNoHost is the answer of a probe whose every host is known to be down.
var errNoHost = errors.New("every host's circuit breaker is open")

// ErrNoSMTPUTF8 is in the error of a probe that needed SMTPUTF8 from a
// host that does not offer it (RFC 6531 3.4): the host works, but cannot
// be asked about this recipient.
var ErrNoSMTPUTF8 = errors.New("SMTPUTF8 not offered")

// Probe asks the hosts in order, until one answers, whether they take
// mail from from (the null sender when "") to rcpt, within limit. With
// smtputf8, MAIL carries SMTPUTF8 and a host that does not offer it
// gives no answer. The error says why no host answered; log, when not
// nil, receives the breakers' lines.
func (p *Prober) Probe(log *zerolog.Logger, from, rcpt string, smtputf8 bool, limit time.Time) (ProbeResult, error) {
	var errs []error
	for _, host := range p.f.s.Hosts {
		if !time.Now().Before(limit) {
			errs = append(errs, fmt.Errorf("%s: %w", host, errBudget))
			break
		}
		b := p.breakers[host]
		if log != nil {
			b.SetLogger(log)
		}
		call, err := b.Begin()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", host, err))
			continue
		}
		res, fail := p.probeVia(host, from, rcpt, smtputf8, limit)
		if fail == nil {
			call.Done(nil)
			return res, nil
		}
		var ferr error = fail
		if timedOut(fail.err) {
			ferr = breaker.AsTimeout(fail)
		}
		if fail.kind == failNoUTF8 {
			ferr = nil // the host answers; it lacks an extension
		}
		call.Done(ferr)
		errs = append(errs, fail)
	}
	if len(errs) == 0 {
		errs = append(errs, errNoHost)
	}
	return ProbeResult{}, errors.Join(errs...)
}

// probeVia probes over a pooled session with host, or a new one. A pooled
// session that turns out dead is replaced once by a new one.
func (p *Prober) probeVia(host, from, rcpt string, smtputf8 bool, limit time.Time) (ProbeResult, *failure) {
	f := p.f
	c := f.pool.get(host, time.Now())
	reused := c != nil
	for {
		if c == nil {
			var fail *failure
			if c, fail = f.dial(host, limit); fail != nil {
				return ProbeResult{}, fail
			}
		}
		c.limit = limit
		if smtputf8 && !c.has("SMTPUTF8") {
			f.pool.put(c, time.Now())
			return ProbeResult{}, &failure{host: host, kind: failNoUTF8, err: ErrNoSMTPUTF8}
		}
		res, fail := p.dialog(c, from, rcpt, smtputf8, reused)
		if fail == nil {
			f.pool.put(c, time.Now())
			return res, nil
		}
		c.close()
		if !fail.stale {
			return ProbeResult{}, fail
		}
		f.pool.flush(host)
		c, reused = nil, false
	}
}

// dialog runs MAIL, RCPT and RSET on c, preceded by RSET on a session
// that was used before (whoever used it last may have left a transaction
// open). With PIPELINING (RFC 2920) the commands go out in one write and
// the replies are read in order; without it each waits for its reply,
// and RCPT is not sent after a refused MAIL. The session is left with no
// transaction open, ready for the next delivery or probe.
func (p *Prober) dialog(c *conn, from, rcpt string, smtputf8, reused bool) (ProbeResult, *failure) {
	cmd := p.f.s.CommandTimeout
	pipe := c.has("PIPELINING")
	res := ProbeResult{Host: c.host}
	replied := false // a reply of this probe arrived: the session is alive
	fail := func(err error) *failure {
		c.unusable = true
		return &failure{host: c.host, kind: failBroken, stale: reused && !replied && !timedOut(err), err: err}
	}
	mail := "MAIL FROM:<" + from + ">"
	if smtputf8 {
		mail += " SMTPUTF8"
	}
	lines := []string{mail, "RCPT TO:<" + rcpt + ">", "RSET"}
	if reused {
		lines = append([]string{"RSET"}, lines...)
	}
	c.txs++
	c.deadline(cmd)
	sent := 0
	send := func(n int) error {
		for _, l := range lines[sent : sent+n] {
			c.bw.WriteString(l)
			c.bw.WriteString("\r\n")
		}
		sent += n
		return c.bw.Flush()
	}
	if pipe {
		if err := send(len(lines)); err != nil {
			return res, fail(err)
		}
	}
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if !pipe {
			if err := send(1); err != nil {
				return res, fail(err)
			}
		}
		r, err := c.read(cmd, nil)
		if err != nil && (res.Rcpt.Code != 0 || res.Mail.Code != 0 && res.Mail.Class() != 2) {
			c.unusable = true // the answer is in; the session is not reused
			return res, nil
		}
		if err != nil {
			return res, fail(err)
		}
		replied = true
		switch verb := line[:4]; {
		case verb == "RSET" && i < len(lines)-1 && r.Class() != 2:
			return res, fail(fmt.Errorf("RSET %w", r))
		case verb == "MAIL":
			res.Mail = r
			if r.Class() != 2 && !pipe {
				// Nothing to ask: RSET instead of RCPT, and done.
				lines = append(lines[:i+1], "RSET")
			}
		case verb == "RCPT" && res.Mail.Class() == 2:
			res.Rcpt = r
		case verb == "RSET" && r.Class() != 2:
			c.unusable = true // the answer stands; the session is not reused
		}
	}
	return res, nil
}
