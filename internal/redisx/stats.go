package redisx

import "loopmx/internal/breaker"

// Totals are the calls of every Redis client of this process since it
// started, for the metrics endpoint.
type Totals struct {
	// OK counts calls Redis answered (whatever the answer); Failed calls
	// that did not get an answer (an error of the connection, a timeout).
	OK, Failed int64
	// Down, Busy and Slow count the answers given without Redis: the
	// breaker was open (ErrDown), max_inflight calls were slow (ErrBusy),
	// or the hook stopped waiting after slow_call (ErrSlow; that call
	// still ends as OK or Failed).
	Down, Busy, Slow int64
	// Breakers counts the open clients by the state of their breaker,
	// indexed by breaker.State.
	Breakers [3]int
	// Clients is the number of open clients (0: Redis is not used).
	Clients int
}

// released holds the counts of the clients closed so far, so that the
// totals never go down when a reload replaces a client.
var released Totals

// ProcessTotals adds up every client's calls, open or closed.
func ProcessTotals() Totals {
	mu.Lock()
	defer mu.Unlock()
	t := released
	for _, sh := range clients {
		sh.client.addTo(&t)
		if st := sh.client.BreakerState(); st >= breaker.Closed && st <= breaker.HalfOpen {
			t.Breakers[st]++
		}
		t.Clients++
	}
	return t
}

// addTo adds the client's counts to t.
func (c *Client) addTo(t *Totals) {
	t.OK += c.calls[0].Load()
	t.Failed += c.calls[1].Load()
	down, busy, slow := c.Refused()
	t.Down += down
	t.Busy += busy
	t.Slow += slow
}
