package supervisor

import (
	"time"

	"golang.org/x/sys/unix"

	"loopmx/config"
	"loopmx/internal/ticketkeys"
)

// tickets are the TLS session-ticket keys the supervisor makes (or reads
// from tls.ini's ticket_key_file) and shares with every worker through an
// inherited in-memory file (EnvTicketKeysFD), so that a session resumes
// on whichever worker the kernel hands the client next. They outlive
// reloads (HUP keeps generated keys) and binary upgrades (USR2 hands the
// file to the new image, fd in envHandoff).
type tickets struct {
	keeper *ticketkeys.Keeper
	share  *ticketkeys.Share
	timer  *time.Timer
}

// ticketWakeMax bounds the wait between two looks at the keys, so a wall
// clock that jumps does not delay a rotation by much.
const ticketWakeMax = time.Hour

// startTickets makes the key set for cfg: on fd, the shared set of the
// previous image after a USR2 (-1 when there is none), whose generated
// keys are kept.
func (s *sup) startTickets(cfg *config.Config, fd int) error {
	p, err := ticketkeys.PolicyFrom(cfg)
	if err != nil {
		return err
	}
	now := time.Now()
	k, err := ticketkeys.NewKeeper(p, now)
	if err != nil {
		return err
	}
	var sh *ticketkeys.Share
	if fd >= 0 {
		unix.CloseOnExec(fd)
		sh = ticketkeys.ShareFromFD(fd)
		if old, err := sh.Read(); err == nil {
			k.Adopt(old, now)
		} else {
			s.log.Warn().Err(err).Msg("cannot read the session-ticket keys of the previous image; new keys made")
		}
	} else if sh, err = ticketkeys.NewShare(); err != nil {
		return err
	}
	if err := sh.Write(k.Set()); err != nil {
		sh.Close()
		return err
	}
	s.tickets = &tickets{keeper: k, share: sh}
	s.logTickets("session-ticket keys ready")
	s.armTickets(now)
	return nil
}

// logTickets says where the keys come from and how many there are; never
// the keys themselves.
func (s *sup) logTickets(msg string) {
	k := s.tickets.keeper
	p := k.Policy()
	e := s.log.Info().Int("keys", len(k.Set()))
	if p.File != "" {
		e = e.Str("ticket_key_file", p.File)
	} else {
		e = e.Str("source", "generated").Dur("ticket_key_rotate", p.Rotate).Dur("ticket_key_keep", p.Keep)
	}
	if p.Disabled {
		e = e.Bool("session_tickets", false)
	}
	e.Msg(msg)
}

// armTickets sets the timer for the next rotation.
func (s *sup) armTickets(now time.Time) {
	t := s.tickets
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	next := t.keeper.Next(now)
	if next.IsZero() {
		return // keys from a file change on HUP only
	}
	t.timer = time.NewTimer(min(max(next.Sub(now), 0), ticketWakeMax))
}

// ticketTimer is the channel of the rotation timer, nil when none is set.
func (s *sup) ticketTimer() <-chan time.Time {
	if s.tickets == nil || s.tickets.timer == nil {
		return nil
	}
	return s.tickets.timer.C
}

// rotateTickets runs when the rotation timer fires.
func (s *sup) rotateTickets() {
	now := time.Now()
	s.tickets.timer = nil
	if s.tickets.keeper.Advance(now) {
		if err := s.tickets.share.Write(s.tickets.keeper.Set()); err != nil {
			s.log.Error().Err(err).Msg("cannot share the rotated session-ticket keys; the workers keep the previous set")
		} else {
			s.logTickets("session-ticket keys rotated")
		}
	}
	s.armTickets(now)
}

// reloadTickets applies the ticket settings of a reloaded config: a key
// file is read again. On error nothing changes.
func (s *sup) reloadTickets(cfg *config.Config) error {
	p, err := ticketkeys.PolicyFrom(cfg)
	if err != nil {
		return err
	}
	now := time.Now()
	if err := s.tickets.keeper.SetPolicy(p, now); err != nil {
		return err
	}
	if err := s.tickets.share.Write(s.tickets.keeper.Set()); err != nil {
		return err
	}
	s.logTickets("session-ticket keys reloaded")
	s.armTickets(now)
	return nil
}
