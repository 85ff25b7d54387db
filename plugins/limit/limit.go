// Package limit is the limit plugin: it keeps abusive clients in check
// with per-IP concurrency, connections per IP per period, recipients per
// transaction, recipients per sender per period, and refusals and
// unrecognized commands per connection.
//
// With Redis (redis.ini exists and limit.ini does not say redis = false)
// the per-IP and per-sender counters live in Redis and are shared by every
// process and host that uses it; the hooks that talk to Redis run on the
// workpool. Without Redis they live in this process's memory and every
// hook runs inline. The per-connection counters are always kept in the
// connection's notes.
package limit

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"loopmx/config"
	"loopmx/internal/redisx"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Name is the plugin's name in the plugins file.
const Name = "limit"

func init() { plugins.Register(Name, setup) }

// These note keys hold the per-connection counters.
const (
	errorsNote       = "limit.errors"
	unrecognizedNote = "limit.unrecognized"
)

// record records why limit refused or could not count, for the results
// plugin: on the transaction when one is open, else on the connection.
func record(c *plugins.Conn, o plugins.Outcome, msg string) {
	c.Record(plugins.Finding{Plugin: Name, Outcome: o, Message: msg})
}

// These are limit's fixed replies (RFC 5321 4.2.2 for the codes, RFC 3463
// for X.7.0, X.5.3, X.7.1 and X.3.0).
var (
	replyRate         = smtpproto.Reply{Code: 421, Enhanced: "4.7.0", Text: "Too many connections from your address, try again later"}
	replyConcurrency  = smtpproto.Reply{Code: 421, Enhanced: "4.7.0", Text: "Too many concurrent connections from your address, try again later"}
	replyErrors       = smtpproto.Reply{Code: 421, Enhanced: "4.7.0", Text: "Too many errors, closing the connection"}
	replyUnrecognized = smtpproto.Reply{Code: 421, Enhanced: "4.7.0", Text: "Too many unrecognized commands, closing the connection"}
	replyRcptsPerTx   = smtpproto.Reply{Code: 452, Enhanced: "4.5.3", Text: "Too many recipients"}
	replySenderRate   = smtpproto.Reply{Code: 450, Enhanced: "4.7.1", Text: "Too many recipients from this sender, try again later"}
	replyUnavailable  = smtpproto.Reply{Code: 421, Enhanced: "4.3.0", Text: "Service temporarily unavailable, try again later"}
)

// Limit is the plugin.
type Limit struct {
	s     settings
	store store
	down  *redisx.DownLogger
}

// connectCount is what a store counted for a new connection.
type connectCount struct {
	rate     int64 // connections of the IP in the current window (0: not counted)
	open     int   // open connections of the IP, this one included (0: not counted)
	admitted bool  // the concurrency count holds this connection
}

// store is where the per-IP and per-sender counters live.
type store interface {
	// connect counts a new connection of ip: first in the rate window;
	// then, unless that is over the limit, in the open connections if
	// fewer than the maximum are open.
	connect(c *plugins.Conn, ip string, s *settings) (connectCount, error)
	// disconnect gives back a connection that connect admitted. It never
	// waits.
	disconnect(c *plugins.Conn, ip string)
	// senderRcpt counts one recipient of sender and returns the count in
	// the current window.
	senderRcpt(sender string, per time.Duration) (int64, error)
	close() error
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	s, err := readSettings(cfg)
	if err != nil {
		return nil, err
	}
	l := &Limit{s: s, down: redisx.NewDownLogger(Name)}
	if !s.redis {
		l.store = newMemory()
		return l, nil
	}
	client, _, err := redisx.Open(cfg)
	if err != nil {
		return nil, err
	}
	l.store = newRedisStore(client, s.concurrencyTTL, l.down)
	return l, nil
}

// Name implements plugins.Plugin.
func (*Limit) Name() string { return Name }

// Blocks implements plugins.Blocker. Only hooks that talk to Redis block:
// connect when a per-IP limit is set, rcpt when the per-sender rate is.
// In memory mode nothing blocks.
func (l *Limit) Blocks(h plugins.Hook) bool {
	if !l.s.redis {
		return false
	}
	switch h {
	case plugins.HookConnect:
		return l.s.maxConcurrency > 0 || l.s.connRate.On()
	case plugins.HookRcpt:
		return l.s.senderRate.On()
	}
	return false
}

// Close implements plugins.Closer.
func (l *Limit) Close() error { return l.store.close() }

// ipKey is the address counted for c: the client's IPv4 address, or its
// IPv6 address cut to ipv6_prefix bits (a host owns a whole /64).
func (l *Limit) ipKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() && l.s.ipv6Prefix < 128 {
		if p, err := a.Prefix(l.s.ipv6Prefix); err == nil {
			return p.String()
		}
	}
	return a.String()
}

// Connect implements plugins.ConnectHook: connections per IP per period,
// then concurrency per IP.
func (l *Limit) Connect(c *plugins.Conn) plugins.Result {
	if l.s.maxConcurrency == 0 && !l.s.connRate.On() {
		return plugins.NoOpinion()
	}
	ip := l.ipKey(c.RemoteIP)
	cc, err := l.store.connect(c, ip, &l.s)
	if err != nil {
		return l.unavailable(c, plugins.HookConnect, err)
	}
	l.down.Up(c.Log)
	if l.s.connRate.On() && cc.rate > l.s.connRate.N {
		record(c, plugins.Fail, strconv.FormatInt(cc.rate, 10)+" connections from "+ip+" within "+l.s.connRate.Per.String())
		return plugins.Result{Action: plugins.TempFailDisconnect, Reply: replyRate}
	}
	if l.s.maxConcurrency > 0 && !cc.admitted {
		record(c, plugins.Fail, strconv.Itoa(cc.open)+" concurrent connections from "+ip)
		return plugins.Result{Action: plugins.TempFailDisconnect, Reply: replyConcurrency}
	}
	return plugins.NoOpinion()
}

// Disconnect implements plugins.DisconnectHook: the connection stops
// counting toward its IP's concurrency.
func (l *Limit) Disconnect(c *plugins.Conn) {
	if l.s.maxConcurrency > 0 {
		l.store.disconnect(c, l.ipKey(c.RemoteIP))
	}
}

// Helo implements plugins.HeloHook.
func (l *Limit) Helo(c *plugins.Conn, _ string) plugins.Result { return l.checkErrors(c) }

// Ehlo implements plugins.EhloHook.
func (l *Limit) Ehlo(c *plugins.Conn, _ string) plugins.Result { return l.checkErrors(c) }

// Mail implements plugins.MailHook.
func (l *Limit) Mail(c *plugins.Conn, _ string) plugins.Result { return l.checkErrors(c) }

// Data implements plugins.DataHook.
func (l *Limit) Data(c *plugins.Conn) plugins.Result { return l.checkErrors(c) }

// Rcpt implements plugins.RcptHook: recipients per transaction, then
// recipients per sender per period. The null sender is not counted per
// sender: every bounce in the world shares it.
func (l *Limit) Rcpt(c *plugins.Conn, _ string) plugins.Result {
	down := takeDown(c) // BlocksConn's verdict is for this call only
	if r := l.checkErrors(c); r.Action != plugins.Continue {
		return r
	}
	if c.Tx == nil {
		return plugins.NoOpinion()
	}
	if l.s.maxRcptsPerTx > 0 && len(c.Tx.Rcpts) >= l.s.maxRcptsPerTx {
		record(c, plugins.Fail, "more than "+strconv.Itoa(l.s.maxRcptsPerTx)+" recipients")
		return plugins.Result{Action: plugins.TempFail, Reply: replyRcptsPerTx}
	}
	if !l.s.senderRate.On() || c.Tx.From == "" {
		return plugins.NoOpinion()
	}
	n, err := int64(0), down
	if err == nil {
		n, err = l.store.senderRcpt(strings.ToLower(c.Tx.From), l.s.senderRate.Per)
	}
	if err != nil {
		return l.unavailable(c, plugins.HookRcpt, err)
	}
	l.down.Up(c.Log)
	if n > l.s.senderRate.N {
		record(c, plugins.Fail, strconv.FormatInt(n, 10)+" recipients from the sender within "+l.s.senderRate.Per.String())
		return plugins.Result{Action: plugins.TempFail, Reply: replySenderRate}
	}
	return plugins.NoOpinion()
}

// Unrecognized implements plugins.UnrecognizedHook: the command after
// max_unrecognized unrecognized ones gets 421 and the connection closes.
func (l *Limit) Unrecognized(c *plugins.Conn, _ string) plugins.Result {
	if r := l.checkErrors(c); r.Action != plugins.Continue {
		return r
	}
	if l.s.maxUnrecognized == 0 {
		return plugins.NoOpinion()
	}
	n, _ := c.Note(unrecognizedNote).(int)
	n++
	c.SetNote(unrecognizedNote, n)
	if n > l.s.maxUnrecognized {
		record(c, plugins.Fail, strconv.Itoa(n)+" unrecognized commands")
		return plugins.Result{Action: plugins.TempFailDisconnect, Reply: replyUnrecognized}
	}
	return plugins.NoOpinion()
}

// Denied implements plugins.DenyHook: it counts the connection's
// refusals. It runs inline and only touches the connection's notes.
func (l *Limit) Denied(c *plugins.Conn, h plugins.Hook, _ plugins.Result) {
	if l.s.maxErrors == 0 || h == plugins.HookConnect || h == plugins.HookDisconnect {
		return
	}
	n, _ := c.Note(errorsNote).(int)
	c.SetNote(errorsNote, n+1)
}

// checkErrors closes the connection once max_errors refusals were given:
// the next command gets 421 4.7.0.
func (l *Limit) checkErrors(c *plugins.Conn) plugins.Result {
	if l.s.maxErrors == 0 {
		return plugins.NoOpinion()
	}
	if n, _ := c.Note(errorsNote).(int); n >= l.s.maxErrors {
		record(c, plugins.Fail, strconv.Itoa(n)+" refused commands")
		return plugins.Result{Action: plugins.TempFailDisconnect, Reply: replyErrors}
	}
	return plugins.NoOpinion()
}

// unavailable answers a failed Redis call, one not answered within
// slow_call, or one not made (the breaker is open, or max_inflight calls
// are that late), as limit.ini's fail says: open lets the command
// through, closed refuses it (421 and close at connect, 451 4.3.0
// later). Either way the outage is logged at most once a minute.
func (l *Limit) unavailable(c *plugins.Conn, h plugins.Hook, err error) plugins.Result {
	msg := "redis unavailable"
	if errors.Is(err, redisx.ErrBusy) {
		msg = "redis busy" // redisx logs it; Redis is not down
	} else {
		l.down.Down(c.Log, err)
	}
	record(c, plugins.Err, msg)
	if !l.s.failClosed {
		return plugins.NoOpinion()
	}
	if h == plugins.HookConnect {
		return plugins.Result{Action: plugins.TempFailDisconnect, Reply: replyUnavailable}
	}
	return plugins.InternalError()
}

var (
	_ plugins.ConnectHook      = (*Limit)(nil)
	_ plugins.DisconnectHook   = (*Limit)(nil)
	_ plugins.HeloHook         = (*Limit)(nil)
	_ plugins.EhloHook         = (*Limit)(nil)
	_ plugins.MailHook         = (*Limit)(nil)
	_ plugins.RcptHook         = (*Limit)(nil)
	_ plugins.DataHook         = (*Limit)(nil)
	_ plugins.UnrecognizedHook = (*Limit)(nil)
	_ plugins.DenyHook         = (*Limit)(nil)
	_ plugins.Blocker          = (*Limit)(nil)
	_ plugins.Closer           = (*Limit)(nil)
)
