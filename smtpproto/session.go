package smtpproto

import (
	"bytes"
)

// Kind says what an Event asks of the host.
type Kind uint8

const (
	// KindNeedMore: the session consumed what it could and needs more input.
	KindNeedMore Kind = iota
	// KindReply: the session decided on its own; write Event.Reply.
	KindReply
	// KindHelo: HELO or EHLO; Event.Arg is the client's name. Decide.
	KindHelo
	// KindMail: MAIL FROM; Event.Arg is the reverse path ("" for <>). Decide.
	KindMail
	// KindRcpt: RCPT TO; Event.Arg is the forward path. Decide.
	KindRcpt
	// KindData: DATA, or the first BDAT of a transaction. Decide whether the
	// transaction may send its message.
	KindData
	// KindMessage: the message is complete and passed every protocol check;
	// Session.Body holds it. Decide (queue it) and give the queue reply.
	KindMessage
	// KindReset: RSET; the transaction is gone. Write Event.Reply.
	KindReset
	// KindQuit: QUIT; write Event.Reply, then close.
	KindQuit
	// KindStartTLS: STARTTLS was accepted (RFC 3207); write Event.Reply,
	// drop any input that followed the command, then start the TLS
	// handshake and call StartedTLS.
	KindStartTLS
	// KindUnknown: a command the session does not implement; Event.Arg is
	// the whole command line. The zero Reply gives the default error (500
	// or 502, counted toward MaxErrors); a plugin may answer it instead.
	KindUnknown
)

// Event is what Next returns: a reply to write, or a command to decide.
type Event struct {
	Kind Kind
	// Reply holds bytes to write now (it may be set with any Kind).
	Reply []byte
	// Close asks the host to close the connection after writing Reply.
	Close bool
	// Arg is the HELO name or the mail path of KindHelo/KindMail/KindRcpt.
	Arg string
	// EndTx tells that the session ended the transaction on its own (a
	// message refused by size or line policy, a refused BDAT).
	EndTx bool
}

// Tx is the protocol state of the current mail transaction. The envelope
// itself (the sender and recipient paths) is the host's: the session hands
// each path over in its Event and keeps only what the protocol needs.
type Tx struct {
	// Active is true once MAIL was accepted.
	Active bool
	// Recipients counts the accepted RCPT commands.
	Recipients int
	// SMTPUTF8 is true when MAIL carried SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// Body8Bit is true when MAIL carried BODY=8BITMIME (RFC 6152).
	Body8Bit bool
	// DeclaredSize is the SIZE= value of MAIL, 0 if none.
	DeclaredSize int64
}

type state uint8

const (
	stCommand  state = iota
	stSkipLine       // discarding the tail of an overlong command line
	stData           // reading a DATA body
	stBdat           // reading a BDAT chunk
	stPending        // waiting for Resolve
	stClosed         // nothing more will be parsed
)

// Session is one SMTP conversation's protocol state. It is not safe for
// concurrent use; the connection's owner drives it.
type Session struct {
	cfg         *Config
	st          state
	pending     Kind
	bdatPending bool // the pending KindData came from BDAT

	greeted  bool // a HELO or EHLO was accepted
	extended bool // the accepted greeting was EHLO
	errors   int

	tx           Tx
	pendArg      string   // path or name of the pending event
	pendTx       Tx       // MAIL parameters waiting for the decision
	pendExt      bool     // the pending KindHelo came from EHLO
	pendDefault  []byte   // the default reply of a pending KindUnknown
	tls          bool     // the session runs over TLS (STARTTLS or implicit)
	ehloKeywords []string // keywords chosen by the host for the pending EHLO

	// message body state
	body     []byte
	bodyBox  *[]byte // the pool's holder of body, when body came from the pool
	bodySize int64
	dotState uint8 // where DATA is in a line, see data.go
	lineLen  int
	tooBig   bool
	longLine bool
	bareEOL  bool
	dropping bool // the message is certain to be refused: its octets are not kept
	usedData bool // the transaction used DATA (so BDAT is refused)
	usedBdat bool

	// BDAT framing
	bdatLeft     int64
	bdatLast     bool
	bdatReject   []byte // reply owed at the end of the chunk, when refused
	bdatDiscard  bool   // the chunk's octets are read and dropped
	bdatCountErr bool   // bdatReject is a protocol error (counts to MaxErrors)
}

// NewSession starts a session at the point just after the banner.
func NewSession(cfg *Config) *Session {
	return &Session{cfg: cfg}
}

// Restart makes s a new session of cfg, as NewSession would, in the
// memory of a session that has ended.
func (s *Session) Restart(cfg *Config) {
	*s = Session{cfg: cfg}
}

// Reset returns s to its just-after-banner state, as RFC 3207 4.2 asks after
// STARTTLS: the HELO name and any transaction are forgotten.
func (s *Session) Reset() {
	s.resetTx()
	s.greeted = false
	s.extended = false
	s.st = stCommand
}

// Tx returns the current transaction.
func (s *Session) Tx() *Tx { return &s.tx }

// Body returns the message of a KindMessage event. It stays valid until
// Resolve is called.
func (s *Session) Body() []byte { return s.body }

// SetEHLOKeywords replaces the keywords of the EHLO reply that the next
// Resolve of a pending EHLO sends (a capabilities hook chose them).
func (s *Session) SetEHLOKeywords(kw []string) { s.ehloKeywords = kw }

// BodySize is the size of the message read so far (or of the message of
// a KindMessage event), kept or not.
func (s *Session) BodySize() int64 { return s.bodySize }

// Spilled tells the session that the host wrote the octets Body returned
// elsewhere (a spool file): the buffer starts again empty, and Body then
// returns only what arrived since. The host owns the order of the parts.
// shrink gives a large buffer back for a small one.
func (s *Session) Spilled(shrink bool) {
	if s.dropping {
		return
	}
	if shrink && cap(s.body) > maxPooledBody/8 {
		s.releaseBody()
		s.getBody()
		return
	}
	s.body = s.body[:0]
}

// DropBody stops keeping the message, as for one certain to be refused:
// the rest is read and counted, and the message still ends with
// KindMessage for the host to answer (the host could not keep it).
func (s *Session) DropBody() { s.discard() }

// DetachBody gives the message buffer up without recycling it: a hook
// that timed out may still be reading it.
func (s *Session) DetachBody() { s.body, s.bodyBox = nil, nil }

// PendingEHLO reports whether the pending KindHelo came from EHLO.
func (s *Session) PendingEHLO() bool { return s.pendExt }

// Greeted reports whether a HELO or EHLO was accepted; Extended whether
// that greeting was EHLO.
func (s *Session) Greeted() bool  { return s.greeted }
func (s *Session) Extended() bool { return s.extended }

// Errors returns the number of protocol errors so far.
func (s *Session) Errors() int { return s.errors }

// Pending reports whether an event waits for Resolve.
func (s *Session) Pending() bool { return s.st == stPending }

// InBody reports whether the session is reading message octets: a DATA
// body after 354, or a BDAT chunk.
func (s *Session) InBody() bool { return s.st == stData || s.st == stBdat }

// Closed reports whether the session has ended (QUIT or too many errors):
// after its last reply is written the host closes the connection.
func (s *Session) Closed() bool { return s.st == stClosed }

// Protocol returns the "with" word of the Received header for the current
// transaction (RFC 3848, RFC 6531 3.7.3): SMTP, ESMTP or UTF8SMTP.
func (s *Session) Protocol() string {
	// RFC 3848 2: ESMTPS; RFC 6531 3.7.3: UTF8SMTPS. Plain SMTP over TLS
	// has no word of its own and is called ESMTPS.
	switch {
	case s.tx.SMTPUTF8 && s.tls:
		return "UTF8SMTPS"
	case s.tx.SMTPUTF8:
		return "UTF8SMTP"
	case s.tls:
		return "ESMTPS"
	case s.extended:
		return "ESMTP"
	}
	return "SMTP"
}

func (s *Session) resetTx() {
	s.tx = Tx{}
	s.releaseBody()
	s.bodySize = 0
	s.tooBig, s.longLine, s.bareEOL, s.dropping = false, false, false, false
	s.usedData, s.usedBdat = false, false
	s.lineLen = 0
}

// fail counts a protocol error and returns its reply, or the closing 421
// once MaxErrors is reached.
func (s *Session) fail(r []byte) Event {
	s.errors++
	if s.errors >= s.cfg.MaxErrors {
		s.st = stClosed
		out := make([]byte, 0, len(r)+len(replyTooManyError))
		out = append(out, r...)
		out = append(out, replyTooManyError...)
		return Event{Kind: KindReply, Reply: out, Close: true}
	}
	return Event{Kind: KindReply, Reply: r}
}

func reply(r []byte) Event { return Event{Kind: KindReply, Reply: r} }

// Next consumes input from in and returns how many bytes it used and the
// Event they produced. Call it again with in[n:] until it returns
// KindNeedMore (keep the unconsumed bytes and add to them) or an Event to
// decide (call Resolve before calling Next again). Input that arrives while
// an event is pending is left unconsumed, which keeps pipelined commands in
// order (RFC 2920 3.1).
func (s *Session) Next(in []byte) (int, Event) {
	switch s.st {
	case stCommand:
		return s.command(in)
	case stSkipLine:
		i := bytes.IndexByte(in, '\n')
		if i < 0 {
			return len(in), Event{}
		}
		s.st = stCommand
		return i + 1, Event{Kind: KindReply}
	case stData:
		n, done := s.data(in)
		if !done {
			return n, Event{}
		}
		s.st = stCommand
		return n, s.endOfMessage()
	case stBdat:
		return s.bdatChunk(in)
	}
	return 0, Event{}
}

// command handles one command line.
func (s *Session) command(in []byte) (int, Event) {
	max := s.cfg.MaxLineLength
	look := in
	if len(look) > max {
		look = look[:max]
	}
	i := lineEnd(look)
	if i < 0 {
		if len(in) < max {
			return 0, Event{}
		}
		// RFC 5321 4.5.3.1.4: the line is too long. Answer once and throw
		// the rest of the line away so its tail is never run as a command.
		s.st = stSkipLine
		return len(look), s.fail(replyLineTooLong)
	}
	n := i + 1
	if i == 0 || in[i-1] != '\r' {
		return n, s.fail(replyBareLF)
	}
	line := in[:i-1]
	for _, c := range line {
		if c < 0x20 || c == 0x7f {
			return n, s.fail(ctlReply(line))
		}
	}
	verb, arg := line, []byte(nil)
	if sp := bytes.IndexByte(line, ' '); sp >= 0 {
		verb, arg = line[:sp], line[sp+1:]
	}
	return n, s.dispatch(verb, arg)
}

func (s *Session) dispatch(verb, arg []byte) Event {
	switch {
	case verbIs(verb, "MAIL"):
		return s.mail(arg)
	case verbIs(verb, "RCPT"):
		return s.rcpt(arg)
	case verbIs(verb, "DATA"):
		return s.dataCmd(arg)
	case verbIs(verb, "BDAT"):
		return s.bdatCmd(arg)
	case verbIs(verb, "EHLO"):
		return s.helo(arg, true)
	case verbIs(verb, "HELO"):
		return s.helo(arg, false)
	case verbIs(verb, "RSET"):
		if len(bytes.TrimSpace(arg)) > 0 {
			return s.fail(replySyntaxNoArg)
		}
		s.resetTx()
		return Event{Kind: KindReset, Reply: replyOK}
	case verbIs(verb, "NOOP"):
		return reply(replyOK)
	case verbIs(verb, "QUIT"):
		s.st = stClosed
		return Event{Kind: KindQuit, Reply: replyBye, Close: true}
	case verbIs(verb, "VRFY"):
		return reply(replyVrfy)
	case verbIs(verb, "HELP"):
		return reply(replyHelp)
	case verbIs(verb, "STARTTLS") && s.cfg.StartTLS:
		return s.startTLS(arg)
	case verbIs(verb, "EXPN"), verbIs(verb, "STARTTLS"), verbIs(verb, "AUTH"),
		verbIs(verb, "ETRN"), verbIs(verb, "TURN"), verbIs(verb, "ATRN"):
		return s.unknown(verb, arg, replyNotImpl)
	}
	if isHTTPVerb(verb) {
		return s.fail(replyHTTP)
	}
	if len(verb) > 1 && verb[len(verb)-1] == ':' {
		return s.fail(replyHeaderCmd)
	}
	return s.unknown(verb, arg, replyUnknown)
}

// startTLS answers STARTTLS (RFC 3207 4).
func (s *Session) startTLS(arg []byte) Event {
	switch {
	case s.tls:
		return s.fail(replyTLSActive)
	case len(bytes.TrimSpace(arg)) > 0:
		return s.fail(replySyntaxNoArg)
	case !s.greeted || !s.extended:
		return s.fail(replyEhloFirst)
	}
	s.st = stClosed // nothing is parsed until StartedTLS
	return Event{Kind: KindStartTLS, Reply: replyTLSGo}
}

// StartedTLS resets the session after a successful TLS handshake: RFC 3207
// 4.2 says the client must greet again and forget what it knew.
func (s *Session) StartedTLS() {
	s.Reset()
	s.tls = true
}

// TLS reports whether the session runs over TLS.
func (s *Session) TLS() bool { return s.tls }

// unknown hands a command we do not implement to the host, which may let
// a plugin answer it; def is the reply when none does.
func (s *Session) unknown(verb, arg []byte, def []byte) Event {
	if !s.cfg.UnknownToHost {
		return s.fail(def)
	}
	s.pendDefault = def
	line := string(verb)
	if arg != nil {
		line += " " + string(arg)
	}
	return s.pend(KindUnknown, line)
}

func (s *Session) helo(arg []byte, extended bool) Event {
	arg = bytes.TrimSpace(arg)
	if len(arg) == 0 || bytes.IndexByte(arg, ' ') >= 0 {
		if extended {
			return s.fail(replySyntaxEhlo)
		}
		return s.fail(replySyntaxHelo)
	}
	s.pendArg = string(arg)
	s.pendExt = extended
	return s.pend(KindHelo, s.pendArg)
}

func (s *Session) pend(k Kind, arg string) Event {
	s.st = stPending
	s.pending = k
	s.pendArg = arg
	return Event{Kind: k, Arg: arg}
}

func (s *Session) mail(arg []byte) Event {
	if !s.greeted {
		return s.fail(replyHeloFirst)
	}
	if s.tx.Active {
		return s.fail(replyNestedMail)
	}
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		return s.fail(replySyntaxMail)
	}
	p, params, bad := splitPath(rest)
	if bad != nil {
		return s.fail(replySyntaxMail)
	}
	tx := Tx{}
	if r := s.mailParams(params, &tx); r != nil {
		if r[0] == '5' && r[1] == '5' && r[2] == '2' {
			return reply(r) // a policy refusal, not a protocol error
		}
		return s.fail(r)
	}
	addr, r := parsePath(p, false, tx.SMTPUTF8)
	if r != nil {
		if bytes.Equal(r, replyBadRcpt) {
			r = replyBadSender
		}
		return s.fail(r)
	}
	s.pendTx = tx
	return s.pend(KindMail, addr)
}

func (s *Session) rcpt(arg []byte) Event {
	if !s.tx.Active {
		return s.fail(replyNeedMail)
	}
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		return s.fail(replySyntaxRcpt)
	}
	p, params, bad := splitPath(rest)
	if bad != nil {
		return s.fail(replySyntaxRcpt)
	}
	if len(bytes.TrimSpace(params)) > 0 {
		// No RCPT parameter extension (DSN, ...) is offered.
		return s.fail(replyBadParam)
	}
	addr, r := s.forwardPath(p)
	if r != nil {
		return s.refuse(r)
	}
	if s.tx.Recipients >= s.cfg.MaxRecipients {
		// RFC 5321 4.5.3.1.10: 452 for too many recipients; not an error.
		return reply(replyTooMany)
	}
	return s.pend(KindRcpt, addr)
}

func (s *Session) dataCmd(arg []byte) Event {
	if len(bytes.TrimSpace(arg)) > 0 {
		return s.fail(replySyntaxNoArg)
	}
	if !s.tx.Active {
		return s.fail(replyNeedMail)
	}
	if s.usedBdat {
		return s.fail(replyMixedBdat)
	}
	if s.tx.Recipients == 0 {
		// RFC 5321 3.3: no valid recipients; 554 (503 is also allowed).
		return s.fail(replyNoValidRcpt)
	}
	s.bdatPending = false
	return s.pend(KindData, "")
}

// Resolve completes the pending event with the host's decision r (the zero
// Reply accepts) and returns the bytes to write. A refused MAIL, RCPT or
// DATA leaves the transaction as it was; the end of a message always ends
// the transaction.
func (s *Session) Resolve(r Reply) []byte {
	if s.st != stPending {
		return nil
	}
	s.st = stCommand
	if s.pending == KindUnknown {
		s.pendArg = ""
		switch {
		case r.IsZero():
			return s.fail(s.pendDefault).Reply
		case r.Code >= 500:
			return s.fail(r.AppendTo(nil)).Reply
		}
		if r.Code == 0 {
			r.Code = 250
		}
		return r.AppendTo(nil)
	}
	ok := r.Positive()
	var out []byte
	if !r.IsZero() {
		if r.Code == 0 {
			// A text without a code accepts with that text.
			r.Code, r.Enhanced = acceptCode(s.pending, s.bdatPending)
		}
		out = r.AppendTo(nil)
	}
	switch s.pending {
	case KindHelo:
		if ok {
			// RFC 5321 4.1.4: HELO/EHLO resets any transaction.
			s.resetTx()
			s.greeted = true
			s.extended = s.pendExt
			if s.extended {
				out = s.cfg.ehloReply
				if s.tls {
					out = s.cfg.ehloReplyTLS
				}
				if s.ehloKeywords != nil {
					out = EHLOReply(s.cfg.Hostname, s.ehloKeywords)
					s.ehloKeywords = nil
				}
			} else if out == nil {
				out = s.cfg.heloReply
			}
		}
	case KindMail:
		if ok {
			s.tx = s.pendTx
			s.tx.Active = true
			if out == nil {
				out = replyMailOK
			}
		}
	case KindRcpt:
		if ok {
			s.tx.Recipients++
			if out == nil {
				out = replyRcptOK
			}
		}
	case KindData:
		if s.bdatPending {
			// BDAT: the chunk is read whatever the answer; the reply is
			// owed at its end (RFC 3030 2).
			s.usedBdat = true
			s.st = stBdat
			if !ok {
				s.bdatReject = out
				s.bdatDiscard = true
			} else {
				s.startBody()
			}
			return nil
		}
		if ok {
			s.usedData = true
			s.startBody()
			s.st = stData
			s.dotState = dsLineStart
			if out == nil || out[0] != '3' {
				out = replyDataGo
			}
		}
	case KindMessage:
		s.resetTx()
		if out == nil {
			out = replyQueuedOK
		}
	}
	s.pendArg = ""
	return out
}

// acceptCode is the positive reply code of a pending event.
func acceptCode(k Kind, bdat bool) (int, string) {
	switch k {
	case KindMail:
		return 250, "2.1.0"
	case KindRcpt:
		return 250, "2.1.5"
	case KindData:
		if !bdat {
			return 354, ""
		}
	}
	return 250, "2.0.0"
}

// endOfMessage applies the body policies once the terminator is seen.
func (s *Session) endOfMessage() Event {
	switch {
	case s.tooBig:
		return s.refuseMessage(replyTooBig)
	case s.bareEOL && !s.cfg.KeepBareLineEndings:
		return s.refuseMessage(replyBareEOL)
	case s.longLine && !s.cfg.KeepLongLines:
		return s.refuseMessage(s.cfg.longLineRepl)
	}
	return s.pend(KindMessage, "")
}

// refuseMessage ends the transaction with a policy refusal of its message.
func (s *Session) refuseMessage(r []byte) Event {
	s.resetTx()
	return Event{Kind: KindReply, Reply: r, EndTx: true}
}

// BusyReply is the 421 4.3.2 answer for an overloaded server.
func (c *Config) BusyReply() []byte { return c.busyReply }

// verbIs compares an SMTP verb case-insensitively (RFC 5321 2.4).
func verbIs(v []byte, upper string) bool {
	if len(v) != len(upper) {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != upper[i] {
			return false
		}
	}
	return true
}

func cutPrefixFold(b []byte, upper string) ([]byte, bool) {
	if len(b) < len(upper) || !verbIs(b[:len(upper)], upper) {
		return nil, false
	}
	return b[len(upper):], true
}

var httpVerbs = []string{"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PATCH"}

// isHTTPVerb spots cross-protocol requests (a browser or proxy aimed at the
// SMTP port).
func isHTTPVerb(v []byte) bool {
	for _, h := range httpVerbs {
		if verbIs(v, h) {
			return true
		}
	}
	return false
}
