package plugins

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"loopmx/config"
)

type entry struct {
	name    string
	p       Plugin
	blocks  [numHooks]bool
	cb      ConnBlocker // per-call refinement of blocks, or nil
	kb      CallBlocker // the same with the call's arguments, or nil
	timeout time.Duration
}

// Chain runs the hooks of the configured plugins in config order.
type Chain struct {
	entries []entry
	byHook  [numHooks][]int // indexes into entries, per hook
}

// Build creates every plugin named in cfg.Plugins, in order. An unknown
// name stops the start with an error naming the plugins file and line.
func Build(cfg *config.Config) (*Chain, error) {
	ch := &Chain{}
	for i, name := range cfg.Plugins {
		f, ok := lookup(name)
		if !ok {
			ch.Close()
			return nil, fmt.Errorf("config: plugins:%d: unknown plugin %q (known: %s)", cfg.PluginLine(i), name, strings.Join(Registered(), ", "))
		}
		pc, err := cfg.Plugin(name)
		if err == nil {
			// The plugin's own setup may never open its ini; the chain's
			// "timeout" key must still be checked.
			err = pc.CheckTimeout()
		}
		if err != nil {
			ch.Close()
			return nil, err
		}
		p, err := f(cfg)
		if err != nil {
			ch.Close()
			return nil, err
		}
		ch.add(name, p)
		ch.entries[len(ch.entries)-1].timeout = pc.Timeout()
	}
	return ch, nil
}

// NewChain builds a chain from ready plugin values, for tests and embedders.
func NewChain(ps ...Plugin) *Chain {
	ch := &Chain{}
	for _, p := range ps {
		ch.add(p.Name(), p)
	}
	return ch
}

func (ch *Chain) add(name string, p Plugin) {
	e := entry{name: name, p: p, timeout: config.DefaultPluginTimeout}
	e.cb, _ = p.(ConnBlocker)
	e.kb, _ = p.(CallBlocker)
	b, _ := p.(Blocker)
	idx := len(ch.entries)
	for h := range numHooks {
		spec := &hookTable[h]
		if !spec.has(p) {
			continue
		}
		if b != nil && !spec.notify {
			e.blocks[h] = b.Blocks(h)
		}
		ch.byHook[h] = append(ch.byHook[h], idx)
	}
	ch.entries = append(ch.entries, e)
}

// Has reports whether any plugin implements h.
func (ch *Chain) Has(h Hook) bool { return len(ch.byHook[h]) > 0 }

// Names lists the plugins in order.
func (ch *Chain) Names() []string {
	out := make([]string, len(ch.entries))
	for i, e := range ch.entries {
		out[i] = e.name
	}
	return out
}

// Close releases every plugin that holds resources.
func (ch *Chain) Close() error {
	var errs []error
	for _, e := range ch.entries {
		if c, ok := e.p.(Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("plugin/%s: %w", e.name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Step runs the plugins of call.Hook from position i while their hooks do
// not block. It returns done with the chain's result, or !done with the
// position of the first blocking hook, which the caller must hand to
// RunOne (or RunFrom) on the workpool. A Continue result with a Delay is
// returned as done, with next at the plugin that asked for it.
//
// With c.Timer set, each inline hook is timed and reported to it.
func (ch *Chain) Step(c *Conn, call *Call, i int) (res Result, next int, done bool) {
	list := ch.byHook[call.Hook]
	var t0 time.Time
	if c.Timer != nil && i < len(list) {
		t0 = time.Now()
	}
	for ; i < len(list); i++ {
		e := &ch.entries[list[i]]
		if e.blocks[call.Hook] && e.blocksNow(c, call) {
			return Result{}, i, false
		}
		r := ch.invoke(e, c, call)
		if c.Timer != nil {
			t1 := time.Now()
			c.Timer.HookTook(e.name, call.Hook, t1.Sub(t0))
			t0 = t1
		}
		if r.Action != Continue || r.Delay > 0 {
			return r, i, true
		}
	}
	return hookTable[call.Hook].undecided, i, true
}

// blocksNow asks the plugin's CallBlocker, else its ConnBlocker, whether
// this call of a blocking hook will wait.
func (e *entry) blocksNow(c *Conn, call *Call) bool {
	switch {
	case e.kb != nil:
		return e.kb.BlocksCall(c, call)
	case e.cb != nil:
		return e.cb.BlocksConn(c, call.Hook)
	}
	return true
}

// RunOne runs only the plugin at position i of call.Hook. The loop uses
// it for a blocking hook on the workpool, so that each blocking hook has
// its own timeout, then goes on with Step(i+1) on the loop.
func (ch *Chain) RunOne(c *Conn, call *Call, i int) Result {
	list := ch.byHook[call.Hook]
	if i >= len(list) {
		return hookTable[call.Hook].undecided
	}
	return ch.invoke(&ch.entries[list[i]], c, call)
}

// Timeout is how long the loop waits for the blocking hook at position i
// of h before it answers 451 4.3.0 and drops the late result.
func (ch *Chain) Timeout(h Hook, i int) time.Duration {
	list := ch.byHook[h]
	if i >= len(list) {
		return config.DefaultPluginTimeout
	}
	return ch.entries[list[i]].timeout
}

// PluginAt names the plugin at position i of h.
func (ch *Chain) PluginAt(h Hook, i int) string {
	list := ch.byHook[h]
	if i >= len(list) {
		return ""
	}
	return ch.entries[list[i]].name
}

// Notify runs an informational hook (capabilities, deny, tx_end): every
// plugin that has it, inline and in order. A panic is logged with the
// plugin's name and goes no further.
func (ch *Chain) Notify(c *Conn, call *Call) {
	for _, i := range ch.byHook[call.Hook] {
		e := &ch.entries[i]
		func() {
			defer func() {
				if v := recover(); v != nil && c.Log != nil {
					c.Log.Error().Str("plugin", e.name).Str("hook", call.Hook.String()).Str("panic", fmt.Sprint(v)).Msg("plugin panicked")
				}
			}()
			hookTable[call.Hook].call(e.p, c, call)
		}()
	}
}

// Capabilities lets every capabilities hook edit the EHLO keywords.
func (ch *Chain) Capabilities(c *Conn, caps []string) []string {
	call := Call{Hook: HookCapabilities, Caps: caps}
	ch.Notify(c, &call)
	return call.Caps
}

// Denied tells every deny hook about a rejection or temporary failure.
func (ch *Chain) Denied(c *Conn, h Hook, r Result) {
	ch.Notify(c, &Call{Hook: HookDeny, Denied: h, Verdict: r})
}

// TxEnded tells every transaction-end hook that tx is over.
func (ch *Chain) TxEnded(c *Conn, tx *Transaction) {
	ch.Notify(c, &Call{Hook: HookTxEnd, Tx: tx})
}

// RunFrom runs the plugins of call.Hook from position i to a decision,
// blocking or not. It is meant for a workpool goroutine.
func (ch *Chain) RunFrom(c *Conn, call *Call, i int) Result {
	list := ch.byHook[call.Hook]
	for ; i < len(list); i++ {
		if r := ch.invoke(&ch.entries[list[i]], c, call); r.Action != Continue {
			return r
		}
	}
	return hookTable[call.Hook].undecided
}

// invoke calls one plugin's hook and turns a panic into a logged 451.
func (ch *Chain) invoke(e *entry, c *Conn, call *Call) (r Result) {
	defer func() {
		if v := recover(); v != nil {
			if c.Log != nil {
				c.Log.Error().Str("plugin", e.name).Str("hook", call.Hook.String()).
					Str("panic", fmt.Sprint(v)).Msg("plugin panicked")
			}
			r = InternalError()
			r.Plugin = e.name
		}
	}()
	r = hookTable[call.Hook].call(e.p, c, call)
	r.Plugin = e.name
	return r
}
