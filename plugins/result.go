package plugins

import (
	"strings"
	"time"
	"unicode/utf8"

	"loopmx/smtpproto"
)

// Action is a hook's verdict.
type Action uint8

const (
	// Continue has no opinion: the next plugin in the chain decides.
	Continue Action = iota
	// Accept ends the chain and accepts the command.
	Accept
	// Reject ends the chain with a permanent failure (5xx).
	Reject
	// TempFail ends the chain with a temporary failure (4xx).
	TempFail
	// RejectDisconnect rejects (5xx), then closes the connection.
	RejectDisconnect
	// TempFailDisconnect tempfails (4xx), then closes the connection.
	TempFailDisconnect
)

var actionNames = [...]string{"continue", "accept", "reject", "tempfail", "reject_disconnect", "tempfail_disconnect"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "action?"
}

// Disconnects reports whether the action closes the connection.
func (a Action) Disconnects() bool { return a == RejectDisconnect || a == TempFailDisconnect }

// Result is what a hook returns: an action and an optional reply. A zero
// Reply gets the default text for the hook and action.
type Result struct {
	Action Action
	Reply  smtpproto.Reply
	// Plugin is filled in by the Chain with the name of the deciding plugin.
	Plugin string
	// Delay, with Continue, asks the loop to wait this long (a timer, no
	// goroutine) and then call the same plugin's hook again. A connect
	// hook uses it to hold the banner back (early_talker); input that
	// arrives meanwhile sets Conn.EarlyTalker.
	Delay time.Duration
}

// Constructors for the common results.

// NoOpinion is the result of a hook that leaves the decision to the next
// plugin (Haraka's next() without arguments).
func NoOpinion() Result { return Result{} }

// OK accepts with the default reply.
func OK() Result { return Result{Action: Accept} }

// Deny rejects with a 5xx reply.
func Deny(code int, enhanced, text string) Result {
	return Result{Action: Reject, Reply: smtpproto.Reply{Code: code, Enhanced: enhanced, Text: text}}
}

// DenySoft tempfails with a 4xx reply.
func DenySoft(code int, enhanced, text string) Result {
	return Result{Action: TempFail, Reply: smtpproto.Reply{Code: code, Enhanced: enhanced, Text: text}}
}

// InternalError is the generic answer to a failure inside loopmx: the
// client sees 451 4.3.0 and retries later; the detail goes to the log,
// never to the client, who is a stranger.
func InternalError() Result { return DenySoft(451, "4.3.0", "Internal error, try again later") }

// ReplyFor returns the reply the client gets for r at hook h.
func ReplyFor(h Hook, r Result) smtpproto.Reply {
	rep := r.Reply
	switch r.Action {
	case Continue, Accept:
		if h == HookQueue && rep.IsZero() {
			return queuedReply("", "")
		}
		if rep.Code >= 400 {
			// An accepting plugin with a refusal code: the action wins,
			// the client must not be told to retry what was taken.
			rep.Code, rep.Enhanced = 250, "2.0.0"
		}
		return rep
	case Reject, RejectDisconnect:
		if rep.Code < 500 || rep.Code > 599 {
			rep.Code = 550
			if h == HookConnect {
				rep.Code = 554
			}
		}
		if rep.Text == "" {
			rep.Text = "Rejected"
		}
		if rep.Enhanced == "" || rep.Enhanced[0] != '5' {
			rep.Enhanced = "5.7.1"
		}
	default:
		if rep.Code < 400 || rep.Code > 499 {
			rep.Code = 451
			if h == HookConnect {
				rep.Code = 421
			}
		}
		if rep.Text == "" {
			rep.Text = "Temporary failure, try again later"
		}
		if rep.Enhanced == "" || rep.Enhanced[0] != '4' {
			rep.Enhanced = "4.3.0"
		}
	}
	return rep
}

// Queued is a queue plugin's acceptance: 250 2.0.0 "Ok: queued as <id>"
// with the transaction id (the connection id outside one), and detail in
// parentheses when there is one. Every queue plugin answers through it, so
// clients and log readers see one shape.
func Queued(c *Conn, detail string) Result {
	id := c.ID
	if c.Tx != nil {
		id = c.Tx.ID
	}
	return Result{Action: Accept, Reply: queuedReply(id, detail)}
}

// maxReplyText bounds a reply's text so that with the codes and CRLF the
// line stays within RFC 5321 4.5.3.1.5's 512 octets.
const maxReplyText = 480

func queuedReply(id, detail string) smtpproto.Reply {
	// Built in one allocation: it is part of every accepted message.
	var b strings.Builder
	b.Grow(len("Ok: queued as  ()") + len(id) + len(detail))
	b.WriteString("Ok: queued")
	if id != "" {
		b.WriteString(" as ")
		b.WriteString(id)
	}
	if detail != "" {
		b.WriteString(" (")
		// The text with the detail stays within maxReplyText; the detail
		// is what gets cut.
		b.WriteString(clipText(detail, max(maxReplyText-1-b.Len(), 0)))
		b.WriteString(")")
	}
	return smtpproto.Reply{Code: 250, Enhanced: "2.0.0", Text: b.String()}
}

// clipText cuts s to at most n octets, at a UTF-8 character boundary.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
