// Package nexthop is the client side shared by the queue/smtp_forward and
// queue/lmtp plugins: it hands a message to the next hop over SMTP or LMTP
// and turns the next hop's answer into the reply our client gets.
//
// Sessions with the next hop are pooled and reused (RSET between
// messages) by all client connections; PIPELINING is used when offered.
// Every read and write has a deadline, and one delivery never takes
// longer than the chain allows the plugin. The client hears 250 only when
// the next hop said 250 for every recipient.
package nexthop

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Forwarder is a queue plugin that forwards to a next hop.
type Forwarder struct {
	name  string
	proto Protocol
	s     Settings
	pool  *pool
}

// New returns a forwarder for settings that passed Setup's checks.
func New(name string, proto Protocol, s Settings) *Forwarder {
	return &Forwarder{
		name:  name,
		proto: proto,
		s:     s,
		pool:  sharedPool(proto, s),
	}
}

// Name implements plugins.Plugin.
func (f *Forwarder) Name() string { return f.name }

// Blocks implements plugins.Blocker: the queue hook waits for the network.
func (f *Forwarder) Blocks(h plugins.Hook) bool { return h == plugins.HookQueue }

// Close implements plugins.Closer: idle sessions are ended with QUIT
// once no other user of the pool is left.
func (f *Forwarder) Close() error {
	releasePool(f.pool)
	return nil
}

// Queue implements plugins.QueueHook. It adds a Received header in front
// of the message and forwards it; the README.md of queue/smtp_forward and
// queue/lmtp says what the client is told in each case.
func (f *Forwarder) Queue(c *plugins.Conn, m *plugins.Message) plugins.Result {
	log := logger(c)
	if c.Tx == nil || len(c.Tx.Rcpts) == 0 {
		log.Error().Str("plugin", f.name).Msg("queue hook called without a transaction or recipients")
		return plugins.InternalError()
	}
	start := time.Now()
	env := &Envelope{From: c.Tx.From, Rcpts: c.Tx.Rcpts, SMTPUTF8: c.Tx.SMTPUTF8}
	head := append(c.AppendReceived(make([]byte, 0, 256), m.Protocol, start), m.AddedHeaders()...)
	d, fails := f.send(env, head, m, start.Add(f.s.Budget))
	if d == nil {
		return f.failed(c, fails)
	}
	return f.verdict(c, env, d)
}

// send tries the hosts in order until one gives an answer. A host that
// may already hold the message (the end-of-data mark went out) is not
// followed by another.
func (f *Forwarder) send(env *Envelope, head []byte, body *plugins.Message, limit time.Time) (*delivery, []*failure) {
	var fails []*failure
	for _, host := range f.s.Hosts {
		if !time.Now().Before(limit) {
			fails = append(fails, &failure{host: host, kind: failBroken, err: errBudget})
			break
		}
		d, fail := f.sendVia(host, env, head, body, limit)
		if fail == nil {
			return d, nil
		}
		fails = append(fails, fail)
		if fail.committed {
			break
		}
	}
	return nil, fails
}

var errBudget = errors.New("no time left for this host within the plugin's timeout")

// sendVia delivers over a pooled session with host, or a new one. A pooled
// session that turns out dead is replaced once by a new one.
func (f *Forwarder) sendVia(host string, env *Envelope, head []byte, body *plugins.Message, limit time.Time) (*delivery, *failure) {
	c := f.pool.get(host, time.Now())
	reused := c != nil
	for {
		if c == nil {
			var fail *failure
			if c, fail = f.dial(host, limit); fail != nil {
				return nil, fail
			}
		}
		c.limit = limit
		if env.SMTPUTF8 && !c.has("SMTPUTF8") {
			f.pool.put(c, time.Now())
			return nil, &failure{host: host, kind: failNoUTF8, err: errors.New("SMTPUTF8 not offered")}
		}
		d, fail := f.transact(c, env, head, body, reused)
		if fail == nil {
			f.pool.put(c, time.Now())
			return d, nil
		}
		c.close()
		if !fail.stale {
			return nil, fail
		}
		f.pool.flush(host)
		c, reused = nil, false
	}
}

// Replies of our own (fixed texts, RFC 3463 codes).
var (
	// X.4.1 "No answer from host".
	replyUnreachable = smtpproto.Reply{Code: 451, Enhanced: "4.4.1", Text: "Next hop not reachable, try again later"}
	// X.4.2 "Bad connection".
	replyBroken = smtpproto.Reply{Code: 451, Enhanced: "4.4.2", Text: "Connection to the next hop lost or timed out, try again later"}
	// X.6.7 (registered by RFC 6531): the message needs SMTPUTF8, which
	// RFC 6531 3.4 forbids sending to a server that does not offer it.
	replyNoUTF8 = smtpproto.Reply{Code: 550, Enhanced: "5.6.7", Text: "Next hop does not support SMTPUTF8"}
)

// failed answers a delivery that no host gave an answer to: 451 4.4.2 when
// a dialog broke off (or a host may hold the message), 550 5.6.7 when
// every host lacked SMTPUTF8, else 451 4.4.1.
func (f *Forwarder) failed(c *plugins.Conn, fails []*failure) plugins.Result {
	rep := replyNoUTF8
	for _, fl := range fails {
		switch fl.kind {
		case failBroken:
			rep = replyBroken
		case failConnect:
			if rep != replyBroken {
				rep = replyUnreachable
			}
		}
	}
	ev := logger(c).Warn()
	if rep == replyBroken {
		ev = logger(c).Error()
	}
	errs := make([]error, len(fails))
	for i, fl := range fails {
		errs[i] = fl
	}
	ev.Str("plugin", f.name).Str("tx", c.Tx.ID).Err(errors.Join(errs...)).
		Str("reply", rep.Enhanced).Msg("next hop did not take the message")
	return result(rep)
}

// verdict turns the next hop's answer into the client's reply.
//
// A refusal is passed back with the next hop's code class and enhanced
// code, its text after "backend: ". The client gets 250 only when the next
// hop accepted the message for every recipient. When recipients are
// refused at RCPT, no message is sent at all: a 5xx for any recipient
// refuses the message (5xx), else a 4xx tempfails it. LMTP's replies after
// the message are weighed the same way; if some recipients got it, the
// reply says how many and the log has the details.
func (f *Forwarder) verdict(c *plugins.Conn, env *Envelope, d *delivery) plugins.Result {
	log := logger(c)
	if d.stage == stageMail || d.stage == stageData || (d.stage == stageEnd && f.proto == SMTP) {
		if d.reply.Class() == 2 {
			return f.accepted(c, d, d.reply)
		}
		log.Warn().Str("plugin", f.name).Str("tx", c.Tx.ID).Str("host", d.host).
			Str("stage", stageName[d.stage]).Str("backend", d.reply.Error()).Msg("next hop refused the message")
		return passBack(d.reply, "", "")
	}
	// A refusal at RCPT, or LMTP's replies after the message.
	worst, ok := -1, 0
	for i, r := range d.rcpts {
		switch {
		case r.Class() == 2:
			ok++
		case worst < 0 || (r.Class() == 5 && d.rcpts[worst].Class() != 5):
			worst = i
		}
	}
	if worst < 0 {
		return f.accepted(c, d, d.rcpts[0])
	}
	what := "<" + env.Rcpts[worst] + ">: "
	if strings.Contains(d.rcpts[worst].Text, env.Rcpts[worst]) {
		what = "" // the next hop named the recipient already
	}
	ev := log.Warn()
	msg := "next hop refused recipients; nothing was delivered"
	if d.stage == stageEnd && ok > 0 {
		ev = log.Error()
		msg = "PARTIAL DELIVERY: the next hop took the message for some recipients only; the client is told it failed"
	}
	arr := zerolog.Arr()
	for i, r := range d.rcpts {
		arr.Str("<" + env.Rcpts[i] + "> " + r.Error())
	}
	ev.Str("plugin", f.name).Str("tx", c.Tx.ID).Str("host", d.host).Str("stage", stageName[d.stage]).
		Int("accepted", ok).Int("refused", len(d.rcpts)-ok).Array("backend", arr).Msg(msg)
	note := ""
	if d.stage == stageEnd && ok > 0 {
		note = " (delivered to " + strconv.Itoa(ok) + " of " + strconv.Itoa(len(d.rcpts)) + " recipients)"
	}
	return passBack(d.rcpts[worst], what, note)
}

var stageName = [...]string{stageMail: "MAIL", stageRcpt: "RCPT", stageData: "DATA", stageEnd: "end of data"}

// accepted answers 250 with our queue id and the next hop's own text.
func (f *Forwarder) accepted(c *plugins.Conn, d *delivery, r Reply) plugins.Result {
	if ev := logger(c).Debug(); ev.Enabled() {
		ev.Str("plugin", f.name).Str("tx", c.Tx.ID).Str("host", d.host).
			Str("backend", r.Error()).Msg("next hop took the message")
	}
	return plugins.Queued(c, "backend: "+r.Text)
}

// maxText bounds the text of our replies: with the code, the enhanced
// code and CRLF a line stays within RFC 5321 4.5.3.1.5's 512 octets.
const maxText = 480

// clip cuts s to at most n octets, at a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// passBack makes the client's reply from a refusal of the next hop: the
// same code class, its code and enhanced code, its text after "backend: "
// and what, then note. A 421 becomes 451: the next hop closing its
// session is no reason to close the client's.
func passBack(r Reply, what, note string) plugins.Result {
	code := r.Code
	switch {
	case code == 421:
		code = 451
	case r.Class() != 4 && r.Class() != 5:
		return result(replyBroken)
	}
	enh := r.Enhanced
	if enh == "" {
		enh = strconv.Itoa(r.Class()) + ".0.0" // RFC 3463 3.1: other or undefined
	}
	rep := smtpproto.Reply{Code: code, Enhanced: enh, Text: clip("backend: "+what+r.Text, maxText-len(note)) + note}
	return result(rep)
}

// result wraps a reply in the action of its class.
func result(rep smtpproto.Reply) plugins.Result {
	if rep.Code/100 == 5 {
		return plugins.Result{Action: plugins.Reject, Reply: rep}
	}
	return plugins.Result{Action: plugins.TempFail, Reply: rep}
}

var nop = zerolog.Nop()

// logger is the connection's logger, or one that drops everything.
func logger(c *plugins.Conn) *zerolog.Logger {
	if c.Log == nil {
		return &nop
	}
	return c.Log
}

var (
	_ plugins.QueueHook = (*Forwarder)(nil)
	_ plugins.Blocker   = (*Forwarder)(nil)
	_ plugins.Closer    = (*Forwarder)(nil)
)
