package plugins

import (
	"fmt"

	"loopmx/smtpproto"
)

// This file is the one place that knows the hooks: their constants, their
// interfaces, and the table that says, for each, how to tell that a plugin
// has it, how to call it, what happens when no plugin decides, and what
// follows an accept. Adding a hook is one constant, one interface and one
// table entry here; the chain and the transports read the table.

// Hook names a hook point.
type Hook uint8

// The hook points, in the order a session meets them.
const (
	HookConnect Hook = iota
	HookHelo
	HookEhlo
	HookCapabilities
	HookMail
	HookRcpt
	HookData
	HookDataPost
	HookQueue
	HookUnrecognized
	HookDeny
	HookTxEnd
	HookDisconnect
	numHooks

	// NoHook is what Then returns for a hook that nothing follows.
	NoHook = numHooks
)

// ConnectHook runs when a connection opens, before the banner.
type ConnectHook interface {
	Connect(c *Conn) Result
}

// HeloHook runs for HELO.
type HeloHook interface {
	Helo(c *Conn, name string) Result
}

// EhloHook runs for EHLO.
type EhloHook interface {
	Ehlo(c *Conn, name string) Result
}

// CapabilitiesHook edits the EHLO keywords offered to a client (add or
// remove entries of caps and return it). It runs inline, after the EHLO
// hooks accepted, and must not block.
type CapabilitiesHook interface {
	Capabilities(c *Conn, caps []string) []string
}

// MailHook runs for MAIL FROM; from is "" for the null sender.
type MailHook interface {
	Mail(c *Conn, from string) Result
}

// RcptHook runs for each RCPT TO.
type RcptHook interface {
	Rcpt(c *Conn, to string) Result
}

// DataHook runs at DATA, or the first BDAT of a transaction.
type DataHook interface {
	Data(c *Conn) Result
}

// DataPostHook runs when the whole message is in, before the queue hooks;
// m.Header() parses its header.
type DataPostHook interface {
	DataPost(c *Conn, m *Message) Result
}

// QueueHook takes a complete message. Returning Accept means the message is
// durable or the next hop has it (the client is told 250); anything else
// makes the client retry or give up. A queue hook should always block.
type QueueHook interface {
	Queue(c *Conn, m *Message) Result
}

// UnrecognizedHook sees commands loopmx does not implement (line is the
// whole command). Continue gives the default 500/502 reply; Accept with a
// Reply answers the command instead.
type UnrecognizedHook interface {
	Unrecognized(c *Conn, line string) Result
}

// DenyHook sees every rejection or temporary failure any hook decided
// (for logging, reputation, karma). It runs inline and must not block.
type DenyHook interface {
	Denied(c *Conn, h Hook, r Result)
}

// TxEndHook sees every transaction end (its message queued or refused,
// RSET, a new HELO, the connection closing) while the transaction is still
// at hand; tx is the one ending. It runs inline and must not block.
type TxEndHook interface {
	TxEnded(c *Conn, tx *Transaction)
}

// DisconnectHook runs after the connection has closed. Its Result is
// ignored.
type DisconnectHook interface {
	Disconnect(c *Conn)
}

// Call is one hook invocation and its arguments. Each hook reads the
// fields its table entry names.
type Call struct {
	Hook Hook
	// Arg is the HELO/EHLO name, the MAIL or RCPT path, or the whole line
	// of an unrecognized command.
	Arg string
	// Msg is the message of data_post and queue.
	Msg *Message
	// Caps are the EHLO keywords a capabilities hook edits in place.
	Caps []string
	// Denied and Verdict are the hook and result a deny hook is told of.
	Denied  Hook
	Verdict Result
	// Tx is the transaction a tx_end hook sees ending.
	Tx *Transaction
}

// hookSpec is one row of the hook table.
type hookSpec struct {
	name string
	// has reports whether p implements the hook.
	has func(p Plugin) bool
	// call runs p's hook with the arguments in k.
	call func(p Plugin, c *Conn, k *Call) Result
	// notify marks an informational hook: every plugin that has it runs,
	// inline and in order; none decides, a panic is logged and goes no
	// further, and Blocker is not asked.
	notify bool
	// undecided is the result when every plugin said Continue.
	undecided Result
	// then is the hook that runs when this one accepted, or NoHook.
	then Hook
	// event is the smtpproto event that starts the hook on a session.
	event smtpproto.Kind
}

func implements[T any](p Plugin) bool { _, ok := p.(T); return ok }

// noQueue is the result of a message that no queue plugin took: it is
// never acknowledged.
var noQueue = Result{Action: TempFail, Reply: InternalError().Reply, Plugin: "(no queue plugin accepted)"}

var hookTable = [numHooks]hookSpec{
	HookConnect: {name: "connect", has: implements[ConnectHook], then: NoHook,
		call: func(p Plugin, c *Conn, _ *Call) Result { return p.(ConnectHook).Connect(c) }},
	HookHelo: {name: "helo", has: implements[HeloHook], then: NoHook, event: smtpproto.KindHelo,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(HeloHook).Helo(c, k.Arg) }},
	HookEhlo: {name: "ehlo", has: implements[EhloHook], then: HookCapabilities, event: smtpproto.KindHelo,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(EhloHook).Ehlo(c, k.Arg) }},
	HookCapabilities: {name: "capabilities", has: implements[CapabilitiesHook], then: NoHook, notify: true,
		call: func(p Plugin, c *Conn, k *Call) Result {
			k.Caps = p.(CapabilitiesHook).Capabilities(c, k.Caps)
			return Result{}
		}},
	HookMail: {name: "mail", has: implements[MailHook], then: NoHook, event: smtpproto.KindMail,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(MailHook).Mail(c, k.Arg) }},
	HookRcpt: {name: "rcpt", has: implements[RcptHook], then: NoHook, event: smtpproto.KindRcpt,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(RcptHook).Rcpt(c, k.Arg) }},
	HookData: {name: "data", has: implements[DataHook], then: NoHook, event: smtpproto.KindData,
		call: func(p Plugin, c *Conn, _ *Call) Result { return p.(DataHook).Data(c) }},
	HookDataPost: {name: "data_post", has: implements[DataPostHook], then: HookQueue, event: smtpproto.KindMessage,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(DataPostHook).DataPost(c, k.Msg) }},
	HookQueue: {name: "queue", has: implements[QueueHook], then: NoHook, undecided: noQueue,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(QueueHook).Queue(c, k.Msg) }},
	HookUnrecognized: {name: "unrecognized_command", has: implements[UnrecognizedHook], then: NoHook, event: smtpproto.KindUnknown,
		call: func(p Plugin, c *Conn, k *Call) Result { return p.(UnrecognizedHook).Unrecognized(c, k.Arg) }},
	HookDeny: {name: "deny", has: implements[DenyHook], then: NoHook, notify: true,
		call: func(p Plugin, c *Conn, k *Call) Result {
			p.(DenyHook).Denied(c, k.Denied, k.Verdict)
			return Result{}
		}},
	HookTxEnd: {name: "tx_end", has: implements[TxEndHook], then: NoHook, notify: true,
		call: func(p Plugin, c *Conn, k *Call) Result {
			p.(TxEndHook).TxEnded(c, k.Tx)
			return Result{}
		}},
	HookDisconnect: {name: "disconnect", has: implements[DisconnectHook], then: NoHook,
		call: func(p Plugin, c *Conn, _ *Call) Result {
			p.(DisconnectHook).Disconnect(c)
			return Result{}
		}},
}

func (h Hook) String() string {
	if h < numHooks {
		return hookTable[h].name
	}
	return fmt.Sprintf("hook(%d)", h)
}

// Then is the hook that runs after h accepted (data_post is followed by
// queue, ehlo by capabilities), or NoHook.
func Then(h Hook) Hook {
	if h < numHooks {
		return hookTable[h].then
	}
	return NoHook
}

// Informational reports whether h is a hook that only informs plugins
// (capabilities, deny, tx_end): all of its plugins run inline, none
// decides.
func Informational(h Hook) bool { return h < numHooks && hookTable[h].notify }

// eventHook maps a session event to the hook it starts (NoHook for none),
// built from the table.
var eventHook = func() (m [smtpproto.KindUnknown + 1]Hook) {
	for k := range m {
		m[k] = NoHook
	}
	for h := range numHooks {
		if e := hookTable[h].event; e != smtpproto.KindNeedMore && m[e] == NoHook {
			m[e] = h // the first row of a kind wins: helo before ehlo
		}
	}
	return m
}()

// HookFor is the hook a session event starts; ehlo tells a KindHelo that
// came from EHLO. The second result is false for events that no hook
// decides.
func HookFor(k smtpproto.Kind, ehlo bool) (Hook, bool) {
	if int(k) >= len(eventHook) {
		return NoHook, false
	}
	h := eventHook[k]
	if h == HookHelo && ehlo {
		h = HookEhlo
	}
	return h, h != NoHook
}
