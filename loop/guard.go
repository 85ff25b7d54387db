package loop

import (
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"loopmx/internal/throttle"
	"loopmx/proxyproto"
)

// The guard is what keeps one client, or many slow ones, from holding the
// server's connections: deadlines that only progress extends, a stress
// mode that shortens them when the connections run out, and a cap on the
// connections of one address. docs/protocol.md (Timeouts) describes it
// for users.

// Phases of a connection, each with its own deadline. A connection's
// phase starts again whenever a command completes (progress), never on a
// byte alone, so a client that trickles cannot push its deadline back.
const (
	phaseIdle    uint8 = iota // waiting for the first byte of a command: inactivity_timeout
	phaseLine                 // a command line has begun, or the client does not read its replies: command_timeout
	phaseBody                 // a message (DATA, a BDAT chunk): its grace, plus what it earned at data_min_rate
	phaseClosing              // the last reply is out or going out: lingerTime
)

// limits are the timeouts in force: the configured ones, or the shorter
// ones of stress mode.
type limits struct {
	idle time.Duration // phaseIdle
	line time.Duration // phaseLine, and the grace of phaseBody
	rate int64         // bytes a second a message earns time at
}

// deadline is when a connection that entered phase ph at since, and has
// read body octets of a message in it, is cut.
func (l *limits) deadline(ph uint8, since time.Time, body int64) time.Time {
	switch ph {
	case phaseLine:
		return since.Add(l.line)
	case phaseBody:
		return since.Add(l.line + l.earned(body))
	case phaseClosing:
		return since.Add(lingerTime)
	}
	return since.Add(l.idle)
}

// earned is the time n octets of a message buy at the minimum rate.
func (l *limits) earned(n int64) time.Duration {
	return time.Duration(n/l.rate)*time.Second + time.Duration(n%l.rate)*time.Second/time.Duration(l.rate)
}

// guard is the part of the Server that enforces these limits.
type guard struct {
	normal, stress limits
	stressAt       int64 // open connections that mean stress; 0: never
	stressed       atomic.Bool
	stressLog      throttle.Throttle
	calmLog        throttle.Throttle
	inCap          int // unprocessed input kept per connection, and the most read at once

	ipMu    sync.Mutex
	perIP   map[netip.Addr]*ipSlot
	ipBits4 int
	ipBits6 int

	replySlowLine []byte
	replySlowData []byte
}

// ipSlot counts the connections of one address (or prefix).
type ipSlot struct {
	n   int32
	log throttle.Throttle // refusals are logged at most once a second per address
}

// lingerTime is how long a connection that is closing waits for the
// client to read its last reply and close.
const lingerTime = 2 * time.Second

// initGuard sets the guard up from the options (New calls it).
func (s *Server) initGuard() {
	o := &s.opts
	host := o.Proto.Hostname
	g := &s.guard
	// A begun command gets no longer than a silent client would.
	line := min(o.CommandTimeout, o.InactivityTimeout)
	g.normal = limits{idle: o.InactivityTimeout, line: line, rate: o.DataMinRate}
	g.stress = limits{idle: min(o.InactivityTimeout, o.StressTimeout), line: min(line, o.StressTimeout), rate: o.DataMinRate}
	if o.MaxConnections > 0 && o.StressThreshold > 0 {
		g.stressAt = max(1, int64(o.MaxConnections)*int64(o.StressThreshold)/100)
	}
	g.stressLog.Every, g.calmLog.Every = time.Minute, time.Minute
	// A command line must fit (else it could never end), and so must a
	// PROXY header.
	g.inCap = max(o.MaxPipelineBuffer, o.Proto.MaxLineLength, proxyproto.MaxV2Header+16)
	g.perIP = map[netip.Addr]*ipSlot{}
	g.ipBits4, g.ipBits6 = o.PerIPPrefixV4, o.PerIPPrefixV6
	s.replyTooManyIP = []byte("421 4.7.0 " + host + " Too many connections from your address (limit " +
		strconv.Itoa(o.MaxConnectionsPerIP) + "), try again later\r\n")
	g.replySlowLine = []byte("421 4.4.2 " + host + " Error: command line not completed in time\r\n")
	g.replySlowData = []byte("421 4.4.2 " + host + " Error: message data too slow\r\n")
}

// limitsNow returns the limits in force, and logs when stress mode starts
// or ends (at most once a minute each).
func (s *Server) limitsNow() *limits {
	g := &s.guard
	if g.stressAt > 0 {
		n := s.conns.Load()
		if n >= g.stressAt {
			if !g.stressed.Load() && g.stressed.CompareAndSwap(false, true) {
				if ok, held := g.stressLog.Allow(time.Now()); ok {
					s.log.Warn().Int64("connections", n).Int("max_connections", s.opts.MaxConnections).
						Dur("stress_timeout_ms", s.opts.StressTimeout).Int64("suppressed", held).
						Msg("server under stress: connections near max_connections; timeouts shortened")
				}
			}
			return &g.stress
		}
		if g.stressed.Load() && g.stressed.CompareAndSwap(true, false) {
			if ok, held := g.calmLog.Allow(time.Now()); ok {
				s.log.Info().Int64("connections", n).Int64("suppressed", held).Msg("stress over: timeouts back to normal")
			}
		}
	}
	return &g.normal
}

// timeoutReply is the 421 for a connection cut in phase ph.
func (s *Server) timeoutReply(ph uint8) ([]byte, string) {
	switch ph {
	case phaseLine:
		return s.replySlowLine, "command timeout"
	case phaseBody:
		return s.replySlowData, "data too slow"
	}
	return s.replyTimeout, "timeout"
}

// ipKey is what ip counts under: itself, or its prefix of the configured
// length (bits).
func (s *Server) ipKey(ip netip.Addr) (key netip.Addr, bits int) {
	bits = s.ipBits6
	if ip.Is4() {
		bits = s.ipBits4
	}
	if bits >= ip.BitLen() {
		return ip.WithZone(""), bits
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return ip, bits
	}
	return p.Addr(), bits
}

// acquireIP counts a connection from ip, or refuses it when its address
// (or prefix) is at max_connections_per_ip. A refusal is logged at most
// once a second per address, with the number of refusals since the last
// line.
func (s *Server) acquireIP(ip netip.Addr) bool {
	max := s.opts.MaxConnectionsPerIP
	if max <= 0 {
		return true
	}
	key, bits := s.ipKey(ip)
	s.ipMu.Lock()
	slot := s.perIP[key]
	if slot == nil {
		slot = &ipSlot{log: throttle.Throttle{Every: time.Second}}
		s.perIP[key] = slot
	}
	if int(slot.n) < max {
		slot.n++
		s.ipMu.Unlock()
		return true
	}
	s.ipMu.Unlock()
	if ok, held := slot.log.Allow(time.Now()); ok {
		who := key.String()
		if bits < ip.BitLen() {
			who += "/" + strconv.Itoa(bits)
		}
		s.log.Warn().Str("ip", who).Int("limit", max).Int64("refused", held+1).
			Msg("too many connections from one address; refusing with 421 4.7.0")
	}
	return false
}

// releaseIP uncounts a connection from ip.
func (s *Server) releaseIP(ip netip.Addr) {
	if s.opts.MaxConnectionsPerIP <= 0 {
		return
	}
	key, _ := s.ipKey(ip)
	s.ipMu.Lock()
	if slot := s.perIP[key]; slot != nil {
		if slot.n <= 1 {
			delete(s.perIP, key)
		} else {
			slot.n--
		}
	}
	s.ipMu.Unlock()
}
