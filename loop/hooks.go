package loop

import (
	"container/heap"
	"time"

	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Timer kinds: what a connection in the timer heap waits for.
const (
	timerNone  uint8 = iota
	timerHook        // a blocking hook's deadline (the plugin's timeout)
	timerDelay       // a Delay asked by a hook (early_talker's pause)
	timerProxy       // the deadline for a PROXY protocol header
)

// hookResult carries a blocking hook's outcome back to the loop.
type hookResult struct {
	c   *conn
	gen uint32
	res plugins.Result
}

// runHook runs call's plugins from position i: inline while they do not
// block; a blocking one goes to the workpool and the chain resumes in
// hookDone.
func (c *conn) runHook(call plugins.Call, i int) {
	ch := c.el.srv.chain
	c.pc.EarlyTalker = c.earlyTalk
	res, next, done := ch.Step(c.pc, &call, i)
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
	if c.t != nil {
		c.submitTLS(call, i)
		return
	}
	el := c.el
	ch := el.srv.chain
	c.pending = true
	c.gen++
	c.call, c.callIdx = call, i
	el.removeIdle(c)
	el.addTimer(c, timerHook, el.now.Add(ch.Timeout(call.Hook, i)))
	gen, pc := c.gen, c.pc
	job := func() {
		res := ch.RunOne(pc, &call, i)
		el.post(hookResult{c: c, gen: gen, res: res})
	}
	if !el.srv.pool.Submit(job) {
		// RFC 5321 4.2.2 421: the pool queue is full; shed this client
		// politely rather than queueing without bound.
		c.pending = false
		el.removeTimer(c)
		el.pushIdle(c)
		c.write(el.srv.opts.Proto.BusyReply())
		c.shutdown("workpool full")
	}
}

// delay parks the connection on a timer, then runs the plugin at position
// i again.
func (c *conn) delay(call plugins.Call, i int, d time.Duration) {
	if c.t != nil {
		time.Sleep(d) // only connect hooks delay, and those run on the loop
		c.runHook(call, i)
		return
	}
	c.pending = true
	c.call, c.callIdx = call, i
	c.el.removeIdle(c)
	c.el.addTimer(c, timerDelay, c.el.now.Add(d))
}

// hookDone runs on the loop when a blocking hook has finished.
func (c *conn) hookDone(r hookResult) {
	if !c.pending || r.gen != c.gen {
		return // the hook timed out earlier; its late result is dropped
	}
	el := c.el
	c.pending = false
	el.removeTimer(c)
	if c.closed {
		c.finish()
		return
	}
	el.pushIdle(c)
	c.continueChain(r.res)
	c.process()
	c.flush()
}

// continueChain goes on after the plugin at c.callIdx answered res.
func (c *conn) continueChain(res plugins.Result) {
	switch {
	case res.Action == plugins.Continue && res.Delay > 0:
		c.delay(c.call, c.callIdx, res.Delay)
	case res.Action == plugins.Continue:
		c.runHook(c.call, c.callIdx+1)
	default:
		c.resolve(c.call, res)
	}
}

// timerFired runs when the connection's timer is due.
func (c *conn) timerFired() {
	el := c.el
	kind := c.timerKind
	c.timerKind = timerNone
	c.pending = false
	if kind == timerHook {
		res := c.hookTimedOut()
		if c.closed {
			c.finish()
			return
		}
		el.pushIdle(c)
		c.resolve(c.call, res)
	} else if kind == timerProxy {
		c.close("no PROXY header in time")
		return
	} else {
		if c.closed {
			return
		}
		el.pushIdle(c)
		c.runHook(c.call, c.callIdx)
	}
	c.process()
	c.flush()
}

// hookTimedOut handles the blocking hook c.call/c.callIdx overrunning its
// timeout, on the loop or in a TLS goroutine alike: the client will get
// 451 4.3.0; the connection goes on with a copy of its plugin view and of
// the message (the late hook still holds the old ones), and the late
// result is dropped by generation.
func (c *conn) hookTimedOut() plugins.Result {
	name := c.el.srv.chain.PluginAt(c.call.Hook, c.callIdx)
	c.el.srv.log.Warn().Str("conn", c.pc.ID).Str("plugin", name).Str("hook", c.call.Hook.String()).
		Msg("plugin timed out; answering 451 4.3.0")
	c.gen++
	c.pc = c.pc.Clone()
	if c.call.Msg != nil {
		c.sess.DetachBody()
		c.msg = &plugins.Message{Body: c.call.Msg.Body, Protocol: c.call.Msg.Protocol}
		c.call.Msg = c.msg
	}
	res := plugins.InternalError()
	res.Plugin = name
	return res
}

// resolve turns a chain result into the session's reply.
func (c *conn) resolve(call plugins.Call, res plugins.Result) {
	ch := c.el.srv.chain
	rep := plugins.ReplyFor(call.Hook, res)
	ok := rep.Positive()
	if !ok {
		if ch.Has(plugins.HookDeny) {
			ch.Denied(c.pc, call.Hook, res)
		}
		c.logReject(call, res, rep)
	}
	switch call.Hook {
	case plugins.HookConnect:
		switch {
		case ok:
			c.greet()
		case c.kind.TLS && !c.inTLS():
			// Implicit TLS: the client can only read the refusal once
			// the handshake is done.
			c.tlsRefusal = rep.AppendTo(nil)
			c.startTLS()
		default:
			c.write(rep.AppendTo(nil))
			c.shutdown("rejected at connect")
		}
		return
	case plugins.HookHelo, plugins.HookEhlo:
		if ok {
			c.endTx("reset", 0, 0)
			if call.Hook == plugins.HookEhlo && ch.Has(plugins.HookCapabilities) {
				c.sess.SetEHLOKeywords(ch.Capabilities(c.pc, c.el.srv.opts.Proto.Keywords(c.sess.TLS())))
			}
		}
	case plugins.HookDataPost:
		if ok {
			c.runHook(plugins.Call{Hook: plugins.HookQueue, Msg: call.Msg}, 0)
			return
		}
	case plugins.HookUnrecognized:
		if res.Action == plugins.Continue {
			rep = smtpproto.Reply{}
		}
		c.write(c.sess.Resolve(rep))
		if c.sess.Closed() {
			c.shutdown("too many errors")
		} else if res.Action.Disconnects() {
			c.shutdown("disconnected by " + res.Plugin)
		}
		return
	}
	out := c.sess.Resolve(rep)
	c.write(out)
	switch call.Hook {
	case plugins.HookHelo, plugins.HookEhlo:
		if ok {
			c.pc.Helo, c.pc.Extended = c.sess.Helo, c.sess.Extended
		}
	case plugins.HookMail:
		if ok {
			c.pc.BeginTx(call.Arg, c.now()).SMTPUTF8 = c.sess.Tx().SMTPUTF8
		}
	case plugins.HookRcpt:
		if ok && c.pc.Tx != nil {
			c.pc.Tx.Rcpts = append(c.pc.Tx.Rcpts, call.Arg)
		}
	case plugins.HookQueue, plugins.HookDataPost:
		result := "queued"
		if !ok {
			result = "refused"
		}
		c.endTx(result, rep.Code, len(call.Msg.Body))
		c.msg = nil
	}
	if res.Action.Disconnects() {
		c.shutdown("disconnected by " + res.Plugin)
	}
}

func (c *conn) logReject(call plugins.Call, res plugins.Result, rep smtpproto.Reply) {
	l := c.el.srv.log.Info()
	if !l.Enabled() {
		return
	}
	l.Str("conn", c.pc.ID).Str("ip", c.pc.RemoteIP.String()).Str("hook", call.Hook.String()).
		Str("plugin", res.Plugin).Int("code", rep.Code).Str("arg", call.Arg).Msg("rejected")
}

// The timer heap of a loop orders connections by deadline: blocking hooks
// waiting for their timeout and connections in a Delay.
type timerHeap []*conn

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].timerIdx = i
	h[j].timerIdx = j
}
func (h *timerHeap) Push(x any) {
	c := x.(*conn)
	c.timerIdx = len(*h)
	*h = append(*h, c)
}
func (h *timerHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.timerIdx = -1
	return c
}

func (el *eventLoop) addTimer(c *conn, kind uint8, at time.Time) {
	el.removeTimer(c)
	c.timerKind = kind
	c.deadline = at
	heap.Push(&el.timers, c)
}

func (el *eventLoop) removeTimer(c *conn) {
	if c.timerIdx >= 0 {
		heap.Remove(&el.timers, c.timerIdx)
	}
	c.timerKind = timerNone
}

// runTimers fires every due timer.
func (el *eventLoop) runTimers() {
	for len(el.timers) > 0 && !el.now.Before(el.timers[0].deadline) {
		c := heap.Pop(&el.timers).(*conn)
		c.timerFired()
	}
}
