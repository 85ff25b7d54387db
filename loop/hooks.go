package loop

import (
	"strconv"
	"time"

	"loopmx/plugins"
	"loopmx/smtpproto"
)

// The hook driver: it runs a hook's plugins inline while they do not
// block, hands a blocking one to the transport's await, and turns the
// chain's result into the session's reply. What follows an accept
// (data_post then queue, ehlo then capabilities) comes from the hook
// table in plugins.

// maxTxRefusals bounds the refusals a transaction line lists.
const maxTxRefusals = 8

// runHook runs call's plugins from position i.
func (c *conn) runHook(call plugins.Call, i int) {
	c.hookStarting(call.Hook, i)
	c.view.EarlyTalker = c.earlyTalk
	// The plugins get the call by pointer. It is the hook in progress
	// (c.call) from here on; kept in the connection, it is not allocated
	// anew for every hook of every session.
	c.call = call
	res, next, done := c.setup.chain.Step(c.view, &c.call, i)
	call = c.call
	switch {
	case !done:
		c.submit(call, next)
	case res.Action == plugins.Continue && res.Delay > 0:
		c.delay(call, next, res.Delay)
	default:
		c.resolve(call, res)
	}
}

// submit hands the blocking plugin at position i to the workpool. The
// connection parses nothing until the result or the plugin's timeout.
func (c *conn) submit(call plugins.Call, i int) {
	ch := c.setup.chain
	c.pending = true
	c.gen++
	c.call, c.callIdx = call, i
	view := c.view
	job := c.timed(func() plugins.Result { return ch.RunOne(view, &call, i) })
	if !c.tr.await(c.srv.pool, job, (*hookWait)(c), c.gen, ch.Timeout(call.Hook, i)) {
		// RFC 5321 4.2.2 421: the pool queue is full; shed this client
		// politely rather than queueing without bound.
		c.pending = false
		c.tr.write(c.replied(call.Hook, c.setup.proto.BusyReply()))
		c.shutdown("workpool full")
	}
}

// delay parks the connection, then runs the plugin at position i again.
func (c *conn) delay(call plugins.Call, i int, d time.Duration) {
	c.pending = true
	c.call, c.callIdx = call, i
	c.paused(d)
	c.tr.pause(d)
}

// pauseOver runs when a Delay has passed.
func (c *conn) pauseOver() {
	c.pending = false
	c.runHook(c.call, c.callIdx)
}

// hookReturned goes on after the blocking plugin at c.callIdx answered.
func (c *conn) hookReturned(res plugins.Result) {
	c.pending = false
	c.hookTimed()
	switch {
	case res.Action == plugins.Continue && res.Delay > 0:
		c.delay(c.call, c.callIdx, res.Delay)
	case res.Action == plugins.Continue:
		c.runHook(c.call, c.callIdx+1)
	default:
		c.resolve(c.call, res)
	}
}

// hookExpired answers 451 4.3.0 for a blocking hook that overran its
// timeout. The connection goes on with a copy of its plugin view and of
// the message (the late hook still holds the old ones), and the late
// result is dropped by generation.
func (c *conn) hookExpired() {
	c.pending = false
	c.hookTimedOut()
	name := c.setup.chain.PluginAt(c.call.Hook, c.callIdx)
	c.tr.logger().Warn().Str("conn", c.view.ID).Str("plugin", name).Str("hook", c.call.Hook.String()).
		Msg("plugin timed out; answering 451 4.3.0")
	c.gen++
	c.view = c.view.Clone()
	if c.call.Msg != nil {
		c.sess.DetachBody()
		c.msg = c.call.Msg.Copy()
		c.call.Msg = c.msg
	}
	if c.closed {
		c.finish()
		return
	}
	res := plugins.InternalError()
	res.Plugin = name
	c.resolve(c.call, res)
}

// resolve turns a chain result into the session's reply, and records in
// the plugin view what the reply accepted.
func (c *conn) resolve(call plugins.Call, res plugins.Result) {
	ch := c.setup.chain
	rep := plugins.ReplyFor(call.Hook, res)
	ok := rep.Positive()
	if !ok {
		c.refused(call.Hook, res.Plugin, rep.Code)
		if ch.Has(plugins.HookDeny) {
			ch.Denied(c.view, call.Hook, res)
		}
		c.logReject(call, res, rep)
		if c.view.Tx != nil && call.Hook != plugins.HookMail && len(c.refusals) < maxTxRefusals {
			// The transaction line says what was refused in it, and by whom.
			c.refusals = append(c.refusals, call.Hook.String()+" "+strconv.Itoa(rep.Code)+" "+res.Plugin)
		}
	}
	switch call.Hook {
	case plugins.HookConnect:
		switch {
		case ok:
			c.greet()
		case c.kind.TLS && !c.secure:
			// Implicit TLS: the client can only read the refusal once
			// the handshake is done.
			c.tlsRefusal = c.replied(call.Hook, rep.AppendTo(nil))
			c.tr.startTLS()
		default:
			c.tr.write(c.replied(call.Hook, rep.AppendTo(nil)))
			c.shutdown("rejected at connect")
		}
		return
	case plugins.HookUnrecognized:
		if res.Action == plugins.Continue {
			rep = smtpproto.Reply{}
		}
		c.tr.write(c.replied(call.Hook, c.sess.Resolve(rep)))
		if c.sess.Closed() {
			c.shutdown("too many errors")
		} else if res.Action.Disconnects() {
			c.shutdown("disconnected by " + res.Plugin)
		}
		return
	case plugins.HookHelo, plugins.HookEhlo:
		if ok {
			c.endTx("reset", 0, 0) // RFC 5321 4.1.4: a greeting resets the transaction
		}
	}
	if next := plugins.Then(call.Hook); ok && next != plugins.NoHook {
		if !plugins.Informational(next) {
			c.runHook(plugins.Call{Hook: next, Arg: call.Arg, Msg: call.Msg}, 0)
			return
		}
		c.inform(next)
	}
	c.tr.write(c.replied(call.Hook, c.sess.Resolve(rep)))
	switch call.Hook {
	case plugins.HookHelo, plugins.HookEhlo:
		if ok {
			c.view.Helo = call.Arg
		}
	case plugins.HookMail:
		if !ok {
			c.view.AbandonTx()
		} else if c.view.Tx != nil {
			c.view.Tx.SMTPUTF8 = c.sess.Tx().SMTPUTF8
		}
	case plugins.HookRcpt:
		if ok && c.view.Tx != nil {
			c.view.Tx.Rcpts = append(c.view.Tx.Rcpts, call.Arg)
		}
	case plugins.HookQueue, plugins.HookDataPost:
		result := "queued"
		if !ok {
			result = "refused"
		}
		var size int64
		if call.Msg != nil {
			size = call.Msg.Size()
		}
		c.messageDone(call, res, rep.Code)
		c.endTx(result, rep.Code, size)
	}
	if res.Action.Disconnects() {
		c.shutdown("disconnected by " + res.Plugin)
	}
}

// inform runs the informational hook h that follows an accept.
func (c *conn) inform(h plugins.Hook) {
	if !c.setup.chain.Has(h) {
		return
	}
	if h == plugins.HookCapabilities {
		c.sess.SetEHLOKeywords(c.setup.chain.Capabilities(c.view, c.setup.proto.Keywords(c.sess.TLS())))
	}
}

func (c *conn) logReject(call plugins.Call, res plugins.Result, rep smtpproto.Reply) {
	l := c.tr.logger().Info()
	if !l.Enabled() {
		return
	}
	l.Str("conn", c.view.ID).Str("ip", c.view.RemoteIP.String()).Str("hook", call.Hook.String()).
		Str("plugin", res.Plugin).Int("code", rep.Code).Str("arg", call.Arg).Msg("rejected")
}
