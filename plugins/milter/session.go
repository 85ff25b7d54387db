package milter

import (
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gomilter "github.com/emersion/go-milter"

	"loopmx/internal/breaker"
	"loopmx/plugins"
)

// stateKey is the connection note that holds a connection's sessions.
const stateKey = "milter.state"

// connState is what one SMTP connection holds: a session per milter.
type connState struct {
	// mu keeps a hook that ran past the chain's timeout (it goes on with
	// the same sessions) from overlapping the next.
	mu       sync.Mutex
	sessions []*session
	// inline is set by BlocksConn when the coming hook runs on the event
	// loop: the hook must then not touch a socket.
	inline bool
}

// session is one milter's session for one SMTP connection.
type session struct {
	f    *filter
	cs   *gomilter.ClientSession // nil until opened, and after a failure
	conn *limitConn
	// done: the milter accepted the connection, or failed with fail =
	// open; it sees nothing more of this connection.
	done bool
	// txDone names the transaction the milter accepted (or discarded):
	// it sees nothing more of it.
	txDone string
	// inTx: MAIL went out and the message did not end; the next MAIL
	// first aborts the milter's transaction.
	inTx bool
	// told are the recipients of the transaction the milter was told of.
	told []string
}

// state returns the connection's sessions, made on first use.
func (p *Milter) state(c *plugins.Conn) *connState {
	if st, ok := c.Note(stateKey).(*connState); ok {
		return st
	}
	st := &connState{sessions: make([]*session, len(p.filters))}
	for i, f := range p.filters {
		st.sessions[i] = &session{f: f}
	}
	c.SetNote(stateKey, st)
	return st
}

// step maps a hook to the protocol option that leaves its step out.
func step(h plugins.Hook) gomilter.OptProtocol {
	switch h {
	case plugins.HookConnect:
		return gomilter.OptNoConnect
	case plugins.HookHelo, plugins.HookEhlo:
		return gomilter.OptNoHelo
	case plugins.HookMail:
		return gomilter.OptNoMailFrom
	case plugins.HookRcpt:
		return gomilter.OptNoRcptTo
	}
	return 0
}

// needsIO reports whether hook h must touch a socket: some milter of the
// connection takes the step (or must be opened for it), or must be said
// goodbye to at disconnect.
func (st *connState) needsIO(p *Milter, c *plugins.Conn, h plugins.Hook) bool {
	tx := ""
	if c.Tx != nil {
		tx = c.Tx.ID
	}
	for _, s := range st.sessions {
		if h == plugins.HookDisconnect {
			if s.cs != nil {
				return true
			}
			continue
		}
		if s.done || (tx != "" && s.txDone == tx) {
			continue
		}
		if s.cs == nil {
			if s.f.breaker.Ready() {
				return true
			}
			continue
		}
		if h == plugins.HookDataPost || h == plugins.HookMail && s.inTx || s.cs.ProtocolOpts&step(h) == 0 {
			return true
		}
	}
	return false
}

// limitConn caps every deadline go-milter sets at the end of the step at
// hand, so that one step of one milter never outlasts its timeout.
type limitConn struct {
	net.Conn
	limit time.Time
}

func (l *limitConn) cap(t time.Time) time.Time {
	if t.IsZero() || l.limit.Before(t) {
		return l.limit
	}
	return t
}

func (l *limitConn) SetDeadline(t time.Time) error      { return l.Conn.SetDeadline(l.cap(t)) }
func (l *limitConn) SetReadDeadline(t time.Time) error  { return l.Conn.SetReadDeadline(l.cap(t)) }
func (l *limitConn) SetWriteDeadline(t time.Time) error { return l.Conn.SetWriteDeadline(l.cap(t)) }

// dialer makes the session's connection a limitConn.
type dialer struct {
	d    *net.Dialer
	conn **limitConn
}

func (d dialer) Dial(network, addr string) (net.Conn, error) {
	nc, err := d.d.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	*d.conn = &limitConn{Conn: nc, limit: time.Now().Add(d.d.Timeout)}
	return *d.conn, nil
}

// errDown is the failure of a milter whose breaker is open, or of a step
// that runs on the event loop.
var errDown = errors.New("milter down (circuit open)")

// open starts the session: connect, negotiate, send the connection's
// data, and its HELO when one was accepted already (a milter opened
// again after a failure catches up). The answer is the milter's to the
// last step sent.
func (s *session) open(c *plugins.Conn, upTo plugins.Hook) (*gomilter.Action, error) {
	s.f.breaker.SetLogger(c.Log)
	call, err := s.f.breaker.Begin()
	if err != nil {
		return nil, errDown
	}
	cs, err := s.negotiate(actions, protocol)
	if errors.Is(err, gomilter.ErrUnsupportedMilterVersion) {
		// A milter of protocol version 2 (go-milter's server side, old
		// milters) knows only the first options; ask again with those.
		cs, err = s.negotiate(actions&0x3f, protocol&0x7f)
	}
	if err != nil {
		call.Done(err)
		return nil, err
	}
	call.Done(nil)
	s.cs = cs
	s.conn.limit = time.Now().Add(s.f.commandTimeout)
	ip := c.RemoteIP.Unmap()
	family := gomilter.FamilyInet
	if ip.Is6() {
		family = gomilter.FamilyInet6
	}
	name, _ := c.Note(plugins.RDNSNote).(string)
	addr := "[" + ip.String() + "]"
	if name == "" {
		name = addr // Sendmail's convention when the name is unknown
	}
	cs.Macros(gomilter.CodeConn, "j", c.Hostname, "{daemon_name}", "loopmx", "_", name+" "+addr,
		"{client_addr}", ip.String(), "{client_name}", strings.TrimSuffix(name, "."),
		"{client_port}", strconv.Itoa(int(c.RemotePort)))
	act, err := cs.Conn(strings.TrimSuffix(name, "."), family, c.RemotePort, ip.String())
	if err != nil || act.Code != gomilter.ActContinue || c.Helo == "" ||
		upTo == plugins.HookConnect || upTo == plugins.HookHelo || upTo == plugins.HookEhlo {
		return act, err
	}
	return s.helo(c.Helo, c)
}

// negotiate connects and agrees on the options.
func (s *session) negotiate(act gomilter.OptAction, proto gomilter.OptProtocol) (*gomilter.ClientSession, error) {
	d := dialer{d: &net.Dialer{Timeout: s.f.connectTimeout}, conn: &s.conn}
	client := gomilter.NewClientWithOptions(s.f.network, s.f.addr, gomilter.ClientOptions{
		Dialer: d, ReadTimeout: s.f.commandTimeout, WriteTimeout: s.f.commandTimeout,
		ActionMask: act, ProtocolMask: proto,
	})
	cs, err := client.Session()
	if err != nil && s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	return cs, err
}

// helo sends HELO (with the TLS macros when TLS is on).
func (s *session) helo(name string, c *plugins.Conn) (*gomilter.Action, error) {
	if c.TLS != nil {
		s.cs.Macros(gomilter.CodeHelo, "{tls_version}", plugins.TLSVersionName(c.TLS.Version))
	}
	return s.cs.Helo(name)
}

// close ends the session: an abort of an open transaction and QUIT, then
// the socket.
func (s *session) close() {
	if s.cs == nil {
		return
	}
	s.conn.limit = time.Now().Add(s.f.commandTimeout)
	s.cs.Close()
	s.conn.Close()
	s.cs, s.conn, s.inTx = nil, nil, false
}

// fail drops a session after a failure and says what the step answers:
// with fail = open nothing (the milter is left out for the rest of the
// connection), else 451 4.7.1 from MAIL on (connect and HELO are not
// refused: the next step opens the session again, and a client that is
// refused MAIL retries the whole transaction later).
func (s *session) fail(c *plugins.Conn, h plugins.Hook, err error) plugins.Result {
	if s.conn != nil {
		s.conn.Close()
	}
	if s.cs != nil && !errors.Is(err, errDown) {
		// The failure of a step on an open session counts for the
		// breaker too (the milter hangs, or died).
		if call, berr := s.f.breaker.Begin(); berr == nil {
			call.Done(asTimeout(err))
		}
	}
	s.cs, s.conn, s.inTx = nil, nil, false
	mode := "tempfail"
	if s.f.failOpen {
		mode = "open"
		s.done = true
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Err, Message: s.f.name + ": " + h.String() + " failed (fail = " + mode + ")"})
	if ok, held := s.f.failLog.Allow(time.Now()); ok {
		ev := c.Logger().Warn().Str("plugin", Name).Str("milter", s.f.name).Str("hook", h.String()).Err(err).
			Str("fail", mode).Int64("not_logged", held)
		if c.Tx != nil {
			ev = ev.Str("tx", c.Tx.ID)
		}
		ev.Msg("milter failed")
	}
	if s.f.failOpen || h == plugins.HookConnect || h == plugins.HookHelo || h == plugins.HookEhlo {
		return plugins.NoOpinion()
	}
	return plugins.DenySoft(451, "4.7.1", "Service unavailable, try again later")
}

// asTimeout marks a network timeout as one for the breaker.
func asTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return breaker.AsTimeout(err)
	}
	return err
}

// answer turns a milter's action into the hook's result: Continue and
// accept give no opinion (the other milters still run), reject and
// tempfail refuse with Sendmail's texts, a reply code is passed on, and
// discard marks the transaction.
func (s *session) answer(c *plugins.Conn, h plugins.Hook, act *gomilter.Action) plugins.Result {
	switch act.Code {
	case gomilter.ActContinue:
		return plugins.NoOpinion()
	case gomilter.ActAccept:
		if c.Tx == nil || h == plugins.HookHelo || h == plugins.HookEhlo {
			s.done = true
		} else {
			s.txDone = c.Tx.ID
		}
		return plugins.NoOpinion()
	case gomilter.ActDiscard:
		if c.Tx == nil {
			// Nothing to discard before MAIL: Sendmail takes it as accept.
			s.done = true
			return plugins.NoOpinion()
		}
		s.txDone = c.Tx.ID
		c.Tx.SetNote(discardKey, s.f.name)
		s.record(c, h, "discard", "")
		return plugins.NoOpinion()
	case gomilter.ActReject:
		// No code: the reply gets 550, or 554 at connect (plugins.ReplyFor).
		s.record(c, h, "reject", "")
		return plugins.Deny(0, "5.7.1", "Command rejected")
	case gomilter.ActTempFail:
		// 451, or 421 at connect.
		s.record(c, h, "tempfail", "")
		return plugins.DenySoft(0, "4.7.1", "Service unavailable, try again later")
	case gomilter.ActReplyCode:
		enh, text := splitEnhanced(act.SMTPText)
		s.record(c, h, "reply", strconv.Itoa(act.SMTPCode)+" "+text)
		switch act.SMTPCode / 100 {
		case 5:
			return plugins.Deny(act.SMTPCode, enh, text)
		case 4:
			return plugins.DenySoft(act.SMTPCode, enh, text)
		}
	}
	return plugins.NoOpinion()
}

func (s *session) record(c *plugins.Conn, h plugins.Hook, word, msg string) {
	m := s.f.name + ": " + word + " at " + h.String()
	if msg != "" {
		m += ": " + msg
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Word: word, Message: m})
}

// splitEnhanced takes an enhanced status code (RFC 3463) off the front of
// a milter's reply text; a multi-line text keeps its first line.
func splitEnhanced(text string) (enh, rest string) {
	text, _, _ = strings.Cut(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	text = strings.TrimSpace(text)
	first, after, _ := strings.Cut(text, " ")
	if parts := strings.Split(first, "."); len(parts) == 3 && first[0] >= '2' && first[0] <= '5' {
		return first, strings.TrimSpace(after)
	}
	return "", text
}

// run runs one step for every milter in order: open the session where
// needed, then do(s) on it, until one decides. A milter that answered
// accept for the connection or the transaction is left out, and so is
// one whose step the negotiation removed (go-milter answers continue for
// it without a word). The connect step is the opening itself (do is
// nil).
func (p *Milter) run(c *plugins.Conn, h plugins.Hook, do func(*session) (*gomilter.Action, error)) plugins.Result {
	st := p.state(c)
	st.mu.Lock()
	defer st.mu.Unlock()
	inline := st.inline
	st.inline = false
	for _, s := range st.sessions {
		if s.done || (c.Tx != nil && s.txDone == c.Tx.ID) {
			continue
		}
		var act *gomilter.Action
		var err error
		switch {
		case inline && s.cs == nil:
			err = errDown
		case inline:
			continue // a step this milter does not take
		case s.cs == nil:
			act, err = s.open(c, h)
		}
		if err == nil && do != nil && (act == nil || act.Code == gomilter.ActContinue) {
			act, err = s.stepWithin(h, do)
		}
		if err != nil {
			if res := s.fail(c, h, err); res.Action != plugins.Continue {
				return res
			}
			continue
		}
		if res := s.answer(c, h, act); res.Action != plugins.Continue {
			return res
		}
	}
	return plugins.NoOpinion()
}

// stepWithin runs do with the session's deadlines capped at the
// milter's timeout for the step: message_timeout for the message,
// command_timeout for the others.
func (s *session) stepWithin(h plugins.Hook, do func(*session) (*gomilter.Action, error)) (*gomilter.Action, error) {
	limit := s.f.commandTimeout
	if h == plugins.HookDataPost {
		limit = s.f.messageTimeout
	}
	s.conn.limit = time.Now().Add(limit)
	return do(s)
}

// Connect implements plugins.ConnectHook: every milter's session opens.
func (p *Milter) Connect(c *plugins.Conn) plugins.Result {
	return p.run(c, plugins.HookConnect, nil)
}

// Helo implements plugins.HeloHook.
func (p *Milter) Helo(c *plugins.Conn, name string) plugins.Result {
	return p.hello(c, plugins.HookHelo, name)
}

// Ehlo implements plugins.EhloHook.
func (p *Milter) Ehlo(c *plugins.Conn, name string) plugins.Result {
	return p.hello(c, plugins.HookEhlo, name)
}

func (p *Milter) hello(c *plugins.Conn, h plugins.Hook, name string) plugins.Result {
	return p.run(c, h, func(s *session) (*gomilter.Action, error) { return s.helo(name, c) })
}

// Mail implements plugins.MailHook. A transaction of the milter that did
// not reach the end of a message is aborted first.
func (p *Milter) Mail(c *plugins.Conn, from string) plugins.Result {
	return p.run(c, plugins.HookMail, func(s *session) (*gomilter.Action, error) {
		if s.inTx {
			if err := s.cs.Abort(); err != nil {
				return nil, err
			}
		}
		return s.mail(c, from)
	})
}

// mail sends MAIL and starts the milter's transaction.
func (s *session) mail(c *plugins.Conn, from string) (*gomilter.Action, error) {
	s.inTx, s.told = true, s.told[:0]
	s.cs.Macros(gomilter.CodeMail, "i", c.Tx.ID, "{mail_addr}", from)
	return s.cs.Mail(from, nil)
}

// rcpt sends one RCPT.
func (s *session) rcpt(to string) (*gomilter.Action, error) {
	s.told = append(s.told, to)
	s.cs.Macros(gomilter.CodeRcpt, "{rcpt_addr}", to)
	return s.cs.Rcpt(to, nil)
}

// catchUp tells the milter what it missed of the transaction: a plugin
// before milter in the plugins file that accepted MAIL or RCPT ends
// those hooks before milter runs, and a milter opened again after a
// failure missed them too. The milter protocol wants them before the
// message; the milter sees them, but can no longer refuse them (its
// answers are logged).
func (s *session) catchUp(c *plugins.Conn) error {
	var acts []*gomilter.Action
	if !s.inTx {
		act, err := s.mail(c, c.Tx.From)
		if err != nil {
			return err
		}
		acts = append(acts, act)
	}
	for _, r := range c.Tx.Rcpts {
		if slices.Contains(s.told, r) {
			continue
		}
		act, err := s.rcpt(r)
		if err != nil {
			return err
		}
		acts = append(acts, act)
	}
	for _, a := range acts {
		if a.Code != gomilter.ActContinue {
			c.Logger().Warn().Str("plugin", Name).Str("milter", s.f.name).Str("tx", c.Tx.ID).Str("action", string(rune(a.Code))).
				Msg("milter answered a MAIL or RCPT it saw late (a plugin before milter accepted it): too late to refuse; put milter before that plugin")
		}
	}
	return nil
}

// Rcpt implements plugins.RcptHook: a milter's refusal refuses this
// recipient.
func (p *Milter) Rcpt(c *plugins.Conn, to string) plugins.Result {
	return p.run(c, plugins.HookRcpt, func(s *session) (*gomilter.Action, error) {
		if err := s.catchUp(c); err != nil {
			return nil, err
		}
		return s.rcpt(to)
	})
}

// Disconnect implements plugins.DisconnectHook: every session is closed.
func (p *Milter) Disconnect(c *plugins.Conn) {
	st, ok := c.Note(stateKey).(*connState)
	if !ok {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, s := range st.sessions {
		s.close()
	}
}
