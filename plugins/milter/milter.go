// Package milter is the milter plugin: a client of the Sendmail milter
// protocol (github.com/emersion/go-milter) that runs one or several
// milters, in the order of milter.ini, over unix or TCP sockets. Each
// protocol step goes out at the hook it belongs to: connect, HELO/EHLO,
// MAIL, RCPT, and the header, body and end of the message at data_post.
// A milter's answer is the client's reply; the changes it asks for at
// the end of the message are applied where plugins.Message and the
// transaction allow it (README.md lists which).
//
// The milter protocol keeps one session per SMTP connection, so each
// connection holds one socket per milter, opened at connect and closed
// at disconnect. Every step waits for a socket, so the hooks run on the
// workpool; a step no milter asked for (the negotiation lets a milter
// leave steps out) is answered on the event loop.
package milter

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"loopmx/config"
	"loopmx/internal/breaker"
	"loopmx/internal/throttle"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file; its settings are in
// milter.ini.
const Name = "milter"

// Defaults of milter.ini, per milter.
const (
	DefaultConnectTimeout = 2 * time.Second
	DefaultCommandTimeout = 5 * time.Second
	DefaultMessageTimeout = 10 * time.Second
)

func init() { plugins.Register(Name, setup) }

// filter is one configured milter.
type filter struct {
	name           string // its section in milter.ini
	network, addr  string
	connectTimeout time.Duration // dialling and the option negotiation
	commandTimeout time.Duration // one step's replies
	messageTimeout time.Duration // headers, body and end of message together
	failOpen       bool          // fail = open
	breaker        *breaker.Breaker
	unsupportedLog throttle.Throttle
	failLog        throttle.Throttle
}

// Milter is the plugin: the milters, in order.
type Milter struct {
	filters []*filter
}

// actions are the changes loopmx lets milters ask for. It offers all that
// go-milter can read, so that a milter which needs one (opendkim asks to
// change headers) is not refused at negotiation; the ones that
// plugins.Message cannot apply are refused at the end of the message,
// with a log line.
const actions = gomilter.OptAddHeader | gomilter.OptChangeBody | gomilter.OptAddRcpt | gomilter.OptRemoveRcpt |
	gomilter.OptChangeHeader | gomilter.OptQuarantine | gomilter.OptChangeFrom

// protocol are the steps a milter may leave out, or answer without a
// reply: every one the client handles. loopmx never sends DATA (go-milter
// has no call for it) nor unknown commands.
const protocol = gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo |
	gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH | gomilter.OptNoUnknown | gomilter.OptNoData |
	gomilter.OptSkip | gomilter.OptNoHeaderReply | gomilter.OptNoConnReply | gomilter.OptNoHeloReply |
	gomilter.OptNoMailReply | gomilter.OptNoRcptReply | gomilter.OptNoDataReply | gomilter.OptNoUnknownReply |
	gomilter.OptNoEOHReply | gomilter.OptNoBodyReply | gomilter.OptHeaderLeadingSpace

// setup reads milter.ini.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	names := pc.Strings("", "milters", nil)
	p := &Milter{}
	type raw struct {
		socket, fail string
	}
	raws := make([]raw, len(names))
	for i, n := range names {
		f := &filter{
			name:           n,
			connectTimeout: pc.Duration(n, "connect_timeout", DefaultConnectTimeout),
			commandTimeout: pc.Duration(n, "command_timeout", DefaultCommandTimeout),
			messageTimeout: pc.Duration(n, "message_timeout", DefaultMessageTimeout),
		}
		raws[i] = raw{socket: pc.String(n, "socket", ""), fail: pc.String(n, "fail", "tempfail")}
		p.filters = append(p.filters, f)
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	bad := func(section, key, value, why string) error {
		return fmt.Errorf("config: %s: [%s] %s: %q %s", pc.File(), section, key, value, why)
	}
	if len(names) == 0 {
		return nil, bad("main", "milters", "", "lists no milter (milters = opendkim, and a [opendkim] section with its socket)")
	}
	seen := map[string]bool{}
	var worst time.Duration
	for i, f := range p.filters {
		if seen[f.name] {
			return nil, bad("main", "milters", f.name, "is listed twice")
		}
		seen[f.name] = true
		if f.network, f.addr, err = parseSocket(raws[i].socket); err != nil {
			return nil, bad(f.name, "socket", raws[i].socket, err.Error())
		}
		for _, d := range []struct {
			key string
			v   time.Duration
		}{{"connect_timeout", f.connectTimeout}, {"command_timeout", f.commandTimeout}, {"message_timeout", f.messageTimeout}} {
			if d.v <= 0 {
				return nil, bad(f.name, d.key, d.v.String(), "must be more than 0")
			}
		}
		switch strings.ToLower(raws[i].fail) {
		case "open":
			f.failOpen = true
		case "tempfail":
		default:
			return nil, bad(f.name, "fail", raws[i].fail, "is not one of open, tempfail")
		}
		worst += max(f.connectTimeout+f.commandTimeout, f.messageTimeout)
		f.breaker = breaker.New("milter "+f.name+" "+raws[i].socket, breaker.Options{})
		f.unsupportedLog = throttle.Throttle{Every: time.Minute}
		f.failLog = throttle.Throttle{Every: time.Minute}
	}
	// One step may wait for every milter in turn; the chain must not give
	// up on the hook first.
	if worst >= pc.Timeout() {
		return nil, bad("main", "timeout", pc.Timeout().String(), fmt.Sprintf(
			"must be more than the milters' longest step together (%s: for each milter the larger of connect_timeout + command_timeout and message_timeout)", worst))
	}
	return p, nil
}

// parseSocket reads a milter's address: unix:/path (or local:/path, or
// a bare absolute path), inet:port@host (Sendmail's form), or host:port.
func parseSocket(s string) (network, addr string, err error) {
	switch {
	case s == "":
		return "", "", fmt.Errorf("is missing (unix:/run/opendkim/opendkim.sock or 127.0.0.1:8891)")
	case strings.HasPrefix(s, "unix:") || strings.HasPrefix(s, "local:") || strings.HasPrefix(s, "/"):
		_, path, _ := strings.Cut(s, ":")
		if strings.HasPrefix(s, "/") {
			path = s
		}
		if !filepath.IsAbs(path) {
			return "", "", fmt.Errorf("needs an absolute path")
		}
		return "unix", path, nil
	case strings.HasPrefix(s, "inet:"):
		port, host, ok := strings.Cut(strings.TrimPrefix(s, "inet:"), "@")
		if !ok || host == "" {
			return "", "", fmt.Errorf("is not inet:port@host")
		}
		s = net.JoinHostPort(host, port)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return "", "", fmt.Errorf("is not unix:/path, inet:port@host or host:port")
	}
	return "tcp", s, nil
}

// Name implements plugins.Plugin.
func (*Milter) Name() string { return Name }

// Blocks implements plugins.Blocker: every step of the protocol waits for
// a socket, and so does the goodbye at disconnect.
func (*Milter) Blocks(h plugins.Hook) bool {
	switch h {
	case plugins.HookConnect, plugins.HookHelo, plugins.HookEhlo, plugins.HookMail, plugins.HookRcpt,
		plugins.HookDataPost, plugins.HookDisconnect:
		return true
	}
	return false
}

// BlocksConn implements plugins.ConnBlocker: a step that no milter of
// this connection takes (it left the step out at negotiation, accepted
// the connection or the message, or is skipped after a failure with
// fail = open) is answered on the event loop, and so is a step whose
// milters are known to be down.
func (p *Milter) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	st := p.state(c)
	st.inline = !st.needsIO(p, c, h)
	return !st.inline
}

// Close implements plugins.Closer. Sessions belong to connections and
// are closed at disconnect; nothing else is held.
func (p *Milter) Close() error { return nil }

var (
	_ plugins.ConnectHook    = (*Milter)(nil)
	_ plugins.HeloHook       = (*Milter)(nil)
	_ plugins.EhloHook       = (*Milter)(nil)
	_ plugins.MailHook       = (*Milter)(nil)
	_ plugins.RcptHook       = (*Milter)(nil)
	_ plugins.DataPostHook   = (*Milter)(nil)
	_ plugins.QueueHook      = (*Milter)(nil)
	_ plugins.DisconnectHook = (*Milter)(nil)
	_ plugins.Blocker        = (*Milter)(nil)
	_ plugins.ConnBlocker    = (*Milter)(nil)
	_ plugins.Closer         = (*Milter)(nil)
)
