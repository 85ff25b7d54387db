package ticketkeys

import (
	"sync"
	"time"
)

// Local keeps the keys of a process that has no supervisor (nodes = 0):
// it installs them, rotates generated keys on time, and takes the
// settings of a reloaded tls.ini (Reload).
type Local struct {
	mu     sync.Mutex
	keeper *Keeper
	apply  func([][KeySize]byte)
	wake   chan struct{}
}

// StartLocal makes the keys of p, installs them with apply and keeps them
// rotated for the life of the process.
func StartLocal(p Policy, apply func([][KeySize]byte)) (*Local, error) {
	k, err := NewKeeper(p, time.Now())
	if err != nil {
		return nil, err
	}
	l := &Local{keeper: k, apply: apply, wake: make(chan struct{}, 1)}
	l.apply(k.Set().ForTLS(time.Now()))
	go l.run()
	return l, nil
}

// Reload applies new settings (a key file is read again). On error the
// keys in use stay.
func (l *Local) Reload(p Policy) error {
	l.mu.Lock()
	err := l.keeper.SetPolicy(p, time.Now())
	if err == nil {
		l.apply(l.keeper.Set().ForTLS(time.Now()))
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return err
}

func (l *Local) run() {
	for {
		l.mu.Lock()
		now := time.Now()
		wait := time.Hour // a wall clock that jumps delays a rotation by an hour at most
		if next := l.keeper.Next(now); !next.IsZero() && next.Sub(now) < wait {
			wait = max(next.Sub(now), 0)
		}
		l.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-l.wake:
			t.Stop()
			continue
		}
		l.mu.Lock()
		now = time.Now()
		l.keeper.Advance(now)
		l.apply(l.keeper.Set().ForTLS(now))
		l.mu.Unlock()
	}
}
