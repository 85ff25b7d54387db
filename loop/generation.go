package loop

import (
	"sync/atomic"

	"loopmx/plugins"
	"loopmx/smtpproto"
)

// generation is what a connection is served with for its whole life: the
// plugin chain and the protocol settings in force when it was accepted.
// A reload (Server.Reload) makes a new generation for new connections;
// the old one serves its connections to their end and is then retired.
type generation struct {
	chain  *plugins.Chain
	proto  *smtpproto.Config
	users  atomic.Int64 // connections served with it
	old    atomic.Bool  // replaced by a reload
	retire func()       // called once, when old and unused
	done   atomic.Bool
}

// acquire counts a connection that starts on g.
func (g *generation) acquire() { g.users.Add(1) }

// release uncounts a connection; the last one of a replaced generation
// retires it, off the calling goroutine (closing plugins may wait on the
// network, and the caller may be an event loop).
func (g *generation) release() {
	if g.users.Add(-1) == 0 && g.old.Load() {
		g.retireOnce()
	}
}

func (g *generation) retireOnce() {
	if g.retire != nil && !g.done.Swap(true) {
		go g.retire()
	}
}

// prepareProto completes proto for chain: STARTTLS when a certificate is
// configured, unknown commands to the host when a plugin wants them.
func prepareProto(proto *smtpproto.Config, chain *plugins.Chain, tls bool) error {
	proto.StartTLS = tls
	proto.UnknownToHost = chain != nil && chain.Has(plugins.HookUnrecognized)
	return proto.Prepare()
}

// Reload serves new connections with chain and proto from now on (a HUP
// in single-process mode); open connections finish on what they started
// with. retire is called once no connection uses the replaced chain
// (close it there). Listeners, loops, the workpool and connection limits
// stay as they were started.
func (s *Server) Reload(chain *plugins.Chain, proto *smtpproto.Config, retire func()) error {
	if err := prepareProto(proto, chain, s.opts.TLS != nil); err != nil {
		return err
	}
	s.genMu.Lock()
	defer s.genMu.Unlock()
	prev := s.gen.Load()
	next := &generation{chain: chain, proto: proto}
	s.gen.Store(next)
	prev.retire = retire
	prev.old.Store(true)
	if prev.users.Load() == 0 {
		prev.retireOnce()
	}
	return nil
}
