package supervisor

import (
	"errors"
	"slices"
	"syscall"
	"time"

	"loopmx/config"
)

// reload answers HUP: it re-reads and validates the config and, when it is
// good, replaces the workers one at a time. A config with an error is
// logged and changes nothing.
func (s *sup) reload() {
	s.notify(reloadingState())
	s.log.Info().Msg("reload: reading the config")
	cfg, err := s.opts.Load()
	if err != nil {
		s.log.Error().Err(err).Msg("reload failed: the config has an error; the workers keep running with the old one")
		s.rolledOut("reload", false)
		s.notify(readyState(s))
		return
	}
	if err := s.reloadTickets(cfg); err != nil {
		s.log.Error().Err(err).Msg("reload failed: the config has an error; the workers keep running with the old one")
		s.rolledOut("reload", false)
		s.notify(readyState(s))
		return
	}
	s.rolledOut("reload", s.rollout(cfg, "reload"))
	s.notify(readyState(s))
}

// readiness is how waiting for a new worker ended.
type readiness uint8

const (
	readyOK      readiness = iota
	readyExited            // it died before it was ready
	readyTimeout           // it did not say READY within readyTimeout
	readyStop              // TERM or INT arrived meanwhile
)

// awaitReady handles signals and events until p is ready, dies, takes
// longer than readyTimeout or a stop is asked for.
func (s *sup) awaitReady(p *proc) readiness {
	t := time.NewTimer(s.readyTimeout)
	defer t.Stop()
	for {
		switch {
		case p.exited:
			return readyExited
		case p.ready:
			return readyOK
		case s.stopSig != nil:
			return readyStop
		}
		if s.pump(t.C) {
			return readyTimeout
		}
	}
}

// rollout replaces every worker with one of the next generation started
// for cfg, one at a time: the new worker must be ready before the old
// one of its slot is asked to drain, so some worker is always accepting.
// When a new worker fails, the rollout stops there and the workers not
// yet replaced keep running. what names the cause in the log.
func (s *sup) rollout(cfg *config.Config, what string) bool {
	started := time.Now()
	s.keepSockets(cfg)
	cred, err := credentialFor(cfg.Main)
	if err != nil {
		s.log.Error().Err(err).Msg(what + " failed; the workers keep running")
		return false
	}
	nodes := cfg.Main.Nodes
	if nodes < 1 {
		s.log.Warn().Int("workers", len(s.slots)).Msg("nodes = 0 (no supervisor) takes a restart; keeping the current number of workers")
		nodes = len(s.slots)
	}
	gen := s.gen + 1
	s.log.Info().Int("generation", gen).Int("workers", nodes).Msg(what + ": replacing workers one at a time")
	for id := 1; id <= nodes; id++ {
		sl := &slot{id: id}
		if id <= len(s.slots) {
			sl = s.slots[id-1]
		}
		p, err := s.spawn(sl, gen, cfg.Main.GracefulTimeout, cred)
		if err == nil {
			switch s.awaitReady(p) {
			case readyOK:
			case readyStop:
				s.retire(p)
				return false
			case readyExited:
				err = errWorkerDied
			case readyTimeout:
				p.handle.Signal(syscall.SIGKILL)
				err = errWorkerSlow
			}
		}
		if err != nil {
			if id > len(s.slots) {
				s.socks.closeSlot(id)
			}
			s.log.Error().Err(err).Int("worker", id).Int("replaced", id-1).Int("workers", nodes).
				Msg(what + " aborted; the workers not yet replaced keep running")
			return false
		}
		if id > len(s.slots) {
			s.slots = append(s.slots, sl)
		}
		if sl.restart != nil {
			sl.restart.Stop()
			sl.restart = nil
		}
		old := sl.cur
		sl.cur, sl.failures = p, 0
		if old != nil {
			s.retire(old)
		}
	}
	for len(s.slots) > nodes {
		sl := s.slots[len(s.slots)-1]
		s.slots = s.slots[:len(s.slots)-1]
		if sl.restart != nil {
			sl.restart.Stop()
		}
		if sl.cur != nil {
			s.retire(sl.cur)
		}
		// reuseport: once the retiring worker closes its copy, the socket
		// is gone and the kernel hashes to the others only.
		s.socks.closeSlot(sl.id)
	}
	s.cfg, s.cred, s.gen = cfg, cred, gen
	s.publishSockets()
	s.log.Info().Int("generation", gen).Int("workers", nodes).Dur("took_ms", time.Since(started).Round(time.Millisecond)).
		Msg(what + " done")
	return true
}

// Errors of a worker started by a rollout.
var (
	errWorkerDied = errors.New("supervisor: the new worker exited before it was ready")
	errWorkerSlow = errors.New("supervisor: the new worker was not ready in time; killed it")
)

// keepSockets compares the socket settings of cfg with the sockets in use.
// The listeners (listen, smtps_listen, proxy_listen) and the policy cannot
// change without a restart: the workers of the new generation are told
// what each socket they get was bound as (EnvListenSpec), so they keep
// serving the old addresses the old way whatever the new config says. A
// new backlog is applied in place.
func (s *sup) keepSockets(cfg *config.Config) {
	k, m := s.socks, cfg.Main
	if k.systemd {
		return // systemd owns the addresses and the backlog
	}
	if want := m.Listeners(); !slices.Equal(want, k.specs) {
		serving, configured := specStrings(k.specs), specStrings(want)
		var added, removed []string
		for _, l := range configured {
			if !slices.Contains(serving, l) {
				added = append(added, l)
			}
		}
		for _, l := range serving {
			if !slices.Contains(configured, l) {
				removed = append(removed, l)
			}
		}
		s.log.Warn().Strs("serving", serving).Strs("config", configured).Strs("not_bound", added).Strs("still_open", removed).
			Msg("listen, smtps_listen or proxy_listen changed: a reload keeps the sockets bound at start (the new workers serve them as before); restart loopmx to bind the new set")
	}
	if (m.SchedPolicy == "reuseport") != k.reuseport {
		s.log.Warn().Str("config_sched_policy", m.SchedPolicy).
			Msg("sched_policy changed: a restart is needed to apply it; the workers keep the old sockets")
	}
	if m.Backlog != k.backlog {
		if err := k.setBacklog(m.Backlog); err != nil {
			s.log.Warn().Err(err).Msg("cannot apply the new backlog")
		} else {
			s.log.Info().Int("backlog", m.Backlog).Msg("applied the new listen backlog")
		}
	}
}
