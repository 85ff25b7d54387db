package plugins

import (
	"errors"
	"fmt"
	"strings"

	"loopmx/config"
)

type entry struct {
	name   string
	p      Plugin
	blocks [numHooks]bool
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
	for _, name := range cfg.Plugins {
		f, ok := lookup(name)
		if !ok {
			ch.Close()
			return nil, fmt.Errorf("config: plugins: unknown plugin %q (known: %s)", name, strings.Join(Registered(), ", "))
		}
		p, err := f(cfg)
		if err != nil {
			ch.Close()
			return nil, err
		}
		ch.add(name, p)
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
	e := entry{name: name, p: p}
	b, _ := p.(Blocker)
	idx := len(ch.entries)
	for h := Hook(0); h < numHooks; h++ {
		if !implements(p, h) {
			continue
		}
		if b != nil {
			e.blocks[h] = b.Blocks(h)
		}
		ch.byHook[h] = append(ch.byHook[h], idx)
	}
	ch.entries = append(ch.entries, e)
}

func implements(p Plugin, h Hook) bool {
	var ok bool
	switch h {
	case HookConnect:
		_, ok = p.(ConnectHook)
	case HookHelo:
		_, ok = p.(HeloHook)
	case HookMail:
		_, ok = p.(MailHook)
	case HookRcpt:
		_, ok = p.(RcptHook)
	case HookData:
		_, ok = p.(DataHook)
	case HookQueue:
		_, ok = p.(QueueHook)
	case HookDisconnect:
		_, ok = p.(DisconnectHook)
	}
	return ok
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

// Call is one hook invocation: the hook, its argument (HELO name or path),
// and the message for the queue hook.
type Call struct {
	Hook Hook
	Arg  string
	Msg  *Message
}

// Step runs the plugins of call.Hook from position i while their hooks do
// not block. It returns done with the chain's result, or !done with the
// position of the first blocking hook, which the caller must hand to
// RunFrom on the workpool.
func (ch *Chain) Step(c *Conn, call *Call, i int) (res Result, next int, done bool) {
	list := ch.byHook[call.Hook]
	for ; i < len(list); i++ {
		e := &ch.entries[list[i]]
		if e.blocks[call.Hook] {
			return Result{}, i, false
		}
		if r := ch.invoke(e, c, call); r.Action != Continue {
			return r, i, true
		}
	}
	return ch.fallthrough_(call.Hook), i, true
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
	return ch.fallthrough_(call.Hook)
}

// fallthrough_ is the result when no plugin decided. A message that no
// queue plugin took is never acknowledged.
func (ch *Chain) fallthrough_(h Hook) Result {
	if h == HookQueue {
		return Result{Action: TempFail, Reply: InternalError().Reply, Plugin: "(no queue plugin accepted)"}
	}
	return Result{}
}

// invoke calls one plugin's hook and turns a panic into a logged 451.
func (ch *Chain) invoke(e *entry, c *Conn, call *Call) (r Result) {
	defer func() {
		if v := recover(); v != nil {
			if c.Log != nil {
				c.Log.Error().Str("plugin", e.name).Str("hook", call.Hook.String()).
					Interface("panic", v).Msg("plugin panicked")
			}
			r = InternalError()
			r.Plugin = e.name
		}
	}()
	switch call.Hook {
	case HookConnect:
		r = e.p.(ConnectHook).Connect(c)
	case HookHelo:
		r = e.p.(HeloHook).Helo(c, call.Arg)
	case HookMail:
		r = e.p.(MailHook).Mail(c, call.Arg)
	case HookRcpt:
		r = e.p.(RcptHook).Rcpt(c, call.Arg)
	case HookData:
		r = e.p.(DataHook).Data(c)
	case HookQueue:
		r = e.p.(QueueHook).Queue(c, call.Msg)
	case HookDisconnect:
		e.p.(DisconnectHook).Disconnect(c)
	}
	r.Plugin = e.name
	return r
}
