// Package loop runs SMTP sessions on event loops: each loop is one
// goroutine with its own epoll instance that accepts connections, reads,
// drives the smtpproto state machine, runs inline plugin hooks and writes
// replies. Blocking hooks go to the workpool and come back to the loop of
// their connection. No goroutine and no fixed buffer belongs to an idle
// connection.
//
// Each loop waits on every listening socket with EPOLLEXCLUSIVE, so the
// kernel wakes one loop per new connection and the loop that accepts it
// serves it: no accept-and-hand-out thread. With single_accept a loop
// takes one connection per wake-up, which spreads a burst over the loops
// (and over worker processes sharing the socket), like libuv's
// UV_TCP_SINGLE_ACCEPT.
package loop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/metrics"
	"loopmx/internal/throttle"
	"loopmx/loop/workpool"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Options configure a Server.
type Options struct {
	// Listen are the addresses to bind ("127.0.0.1:2525", "[::1]:25").
	Listen []string
	// Specs, when set, replace Listen: each listener with what it speaks
	// (implicit TLS, PROXY header). Inherited Listeners follow this order.
	Specs []config.Listener
	// TLS enables STARTTLS and implicit-TLS listeners; nil disables both.
	TLS *TLSConfig
	// ProxyTrusted are the peers allowed to send a PROXY header;
	// ProxyTimeout bounds its arrival.
	ProxyTrusted []netip.Prefix
	ProxyTimeout time.Duration
	// Listeners, when set, are already-open listening sockets (from a
	// supervisor or systemd) used instead of binding Listen. The server
	// takes ownership of them.
	Listeners []*os.File
	// Socket tuning applied to the listening sockets, from which Linux
	// copies it to every accepted socket (no syscall per connection).
	TCPKeepalive           time.Duration
	RecvBuffer, SendBuffer int
	// Loops is the number of event loops (>= 1).
	Loops int
	// SingleAccept makes a loop accept one connection per wake-up.
	SingleAccept bool
	// Proto holds the protocol limits; Prepare is called by New.
	Proto *smtpproto.Config
	// InactivityTimeout closes a silent connection with 421 4.4.2.
	InactivityTimeout time.Duration
	// CommandTimeout bounds a command line from its first byte, and is
	// the grace of a message, which must then arrive at DataMinRate
	// bytes a second on average (docs/protocol.md, Timeouts).
	CommandTimeout time.Duration
	DataMinRate    int64
	// StressThreshold is the percentage of MaxConnections open at which
	// every timeout shortens to StressTimeout (0: never).
	StressThreshold int
	StressTimeout   time.Duration
	// MaxConnections and MaxConnectionsPerIP refuse new connections with
	// 421 4.7.0 beyond them (0 means no limit). PerIPPrefixV4 and
	// PerIPPrefixV6 are the prefix lengths under which addresses count as
	// one client (32 and 64: one IPv4 address, one IPv6 /64).
	MaxConnections      int
	MaxConnectionsPerIP int
	PerIPPrefixV4       int
	PerIPPrefixV6       int
	// SpoolAfter is the body a session keeps in memory before it writes
	// it to a spool file in SpoolDir (0: bodies stay in memory);
	// MaxBodyMemory is the in-memory body total of all sessions past
	// which they spill early (0: no total).
	SpoolAfter    int
	MaxBodyMemory int64
	SpoolDir      string
	// MaxPipelineBuffer caps unprocessed input kept per connection, and
	// what one read takes; a connection holding that much is not read
	// until it catches up.
	MaxPipelineBuffer int
	// GracefulTimeout bounds how long Shutdown lets transactions finish.
	GracefulTimeout time.Duration
	// Backlog is the listen(2) backlog.
	Backlog int
	// Log receives one line per connection and per transaction.
	Log zerolog.Logger
	// LogOut, when set, is the writer under Log. Each event loop then
	// collects its lines and writes them to LogOut once per iteration
	// (logbatch.go) instead of one write per line.
	LogOut io.Writer
	// Metrics makes the loops count for MetricsSnapshot (metrics.go).
	Metrics bool
}

// OptionsFrom maps a loaded config to Options.
func OptionsFrom(cfg *config.Config, log zerolog.Logger) Options {
	m := cfg.Main
	return Options{
		Listen:       m.Listen,
		Specs:        m.Listeners(),
		ProxyTrusted: m.ProxyTrusted,
		ProxyTimeout: m.ProxyTimeout,
		Loops:        m.Loops,
		SingleAccept: m.SingleAccept,
		Proto: &smtpproto.Config{
			Hostname:            m.Hostname,
			MaxLineLength:       m.MaxLineLength,
			MaxDataLineLength:   m.MaxDataLineLength,
			MaxMessageSize:      m.MaxMessageSize,
			MaxRecipients:       m.MaxRecipients,
			MaxErrors:           m.MaxErrors,
			KeepLongLines:       m.LongLines == "keep",
			KeepBareLineEndings: m.BareLineEndings == "keep",
			AllowSourceRoute:    m.AllowSourceRoute,
			AllowPercentHack:    m.AllowPercentHack,
			AllowBangPath:       m.AllowBangPath,
		},
		InactivityTimeout:   m.InactivityTimeout,
		CommandTimeout:      m.CommandTimeout,
		DataMinRate:         m.DataMinRate,
		StressThreshold:     m.StressThreshold,
		StressTimeout:       m.StressTimeout,
		MaxConnections:      m.MaxConnections,
		MaxConnectionsPerIP: m.MaxConnectionsPerIP,
		PerIPPrefixV4:       m.PerIPPrefixV4,
		PerIPPrefixV6:       m.PerIPPrefixV6,
		MaxPipelineBuffer:   m.MaxPipelineBuffer,
		SpoolAfter:          int(m.SpoolAfter),
		MaxBodyMemory:       m.MaxBodyMemory,
		SpoolDir:            cfg.Path(m.SpoolDir),
		GracefulTimeout:     m.GracefulTimeout,
		Backlog:             m.Backlog,
		TCPKeepalive:        m.TCPKeepalive,
		RecvBuffer:          m.RecvBuffer,
		SendBuffer:          m.SendBuffer,
		Log:                 log,
	}
}

// listenKind says what a listener speaks before SMTP.
type listenKind struct {
	TLS   bool // implicit TLS
	Proxy bool // a PROXY protocol header first
}

// listener is one listening socket. On Linux each loop registers fd in
// its epoll with its index in Server.listeners as the event's tag, so an
// event says which listener it is for without a lookup; elsewhere ln
// accepts.
type listener struct {
	fd   int
	ln   net.Listener
	kind listenKind
	addr netip.AddrPort // the bound address (the real port when 0 was asked)
}

// Server owns the listeners, the event loops and the connection counts.
type Server struct {
	opts  Options
	gen   atomic.Pointer[generation] // what new connections are served with
	genMu sync.Mutex                 // serializes Reload
	pool  *workpool.Pool
	log   zerolog.Logger

	listeners []listener
	lstClosed bool // the listening sockets are closed (only Shutdown and New touch it)

	streamMu sync.Mutex
	streams  map[*stream]struct{}
	streamWG sync.WaitGroup
	engine   engine // the platform's way to accept and serve

	conns    atomic.Int64
	guard    // deadlines, stress mode and the per-address limit (guard.go)
	idPrefix string
	connSeq  atomic.Uint64

	rearm    bool // others wait on the same listeners: single accept re-queues the loop
	draining atomic.Bool
	leaving  atomic.Bool    // Leave: /readyz says not ready, connections are still served
	forcing  atomic.Bool    // the graceful time is over
	drained  sync.WaitGroup // loops that have not yet stopped accepting
	stopped  sync.WaitGroup

	replyTooMany   []byte
	replyTooManyIP []byte
	replyShutdown  []byte
	replyTimeout   []byte
	acceptLog      throttle.Throttle
	stream         *meter // the stream transports' counts; nil with metrics off (metrics.go)

	// bodies beyond memory (spool.go)
	spoolAfter   int
	maxBodyMem   int64
	spoolDir     string
	bodyMem      atomic.Int64   // body buffer octets held past the first buffer, all sessions
	bodyPeak     atomic.Int64   // the most bodyMem reached since it was last 0
	lastGiveBack atomic.Int64   // when memory was last given back (Unix ns)
	spillPool    *workpool.Pool // the spool writers
}

// New binds the listeners. The server does nothing until Start.
func New(opts Options, chain *plugins.Chain, pool *workpool.Pool) (*Server, error) {
	// The values come validated from config (OptionsFrom), which owns
	// every default; New only refuses what cannot work.
	switch {
	case opts.Loops < 1:
		return nil, fmt.Errorf("loop: %d event loops; want at least 1", opts.Loops)
	case opts.Proto == nil:
		return nil, errors.New("loop: no protocol settings (Options.Proto)")
	case opts.InactivityTimeout <= 0 || opts.CommandTimeout <= 0 || opts.StressTimeout <= 0 || opts.DataMinRate <= 0 || opts.MaxPipelineBuffer <= 0:
		return nil, errors.New("loop: timeouts, data rate and pipeline buffer must be set (use OptionsFrom)")
	case opts.MaxConnectionsPerIP > 0 && (opts.PerIPPrefixV4 < 1 || opts.PerIPPrefixV4 > 32 || opts.PerIPPrefixV6 < 1 || opts.PerIPPrefixV6 > 128):
		return nil, fmt.Errorf("loop: per-address prefixes /%d and /%d out of range (use OptionsFrom)", opts.PerIPPrefixV4, opts.PerIPPrefixV6)
	}
	if len(opts.Specs) == 0 {
		for _, a := range opts.Listen {
			opts.Specs = append(opts.Specs, config.Listener{Addr: a})
		}
	}
	for _, sp := range opts.Specs {
		if sp.TLS && opts.TLS == nil {
			return nil, fmt.Errorf("loop: listen %s: implicit TLS needs a certificate in tls.ini", sp.Addr)
		}
		if sp.TLS && sp.Proxy {
			return nil, fmt.Errorf("loop: listen %s: PROXY protocol with implicit TLS is not supported", sp.Addr)
		}
	}
	if err := prepareProto(opts.Proto, chain, opts.TLS != nil); err != nil {
		return nil, err
	}
	if opts.SpoolAfter > 0 {
		if opts.SpoolDir == "" {
			return nil, errors.New("loop: spool_after without a spool_dir (use OptionsFrom)")
		}
		if err := prepareSpool(opts.SpoolDir); err != nil {
			return nil, err
		}
	}
	host := opts.Proto.Hostname
	s := &Server{
		opts:          opts,
		pool:          pool,
		log:           opts.Log,
		streams:       map[*stream]struct{}{},
		idPrefix:      strconv.FormatInt(time.Now().UnixNano()/1e6%(1<<40)^int64(os.Getpid())<<40, 36),
		replyTooMany:  []byte("421 4.7.0 " + host + " Too many connections, try again later\r\n"),
		replyShutdown: []byte("421 4.3.2 " + host + " Service shutting down, try again later\r\n"),
		replyTimeout:  []byte("421 4.4.2 " + host + " Error: timeout exceeded\r\n"),
		acceptLog:     throttle.Throttle{Every: time.Second},
		spoolAfter:    opts.SpoolAfter,
		maxBodyMem:    opts.MaxBodyMemory,
		spoolDir:      opts.SpoolDir,
	}
	if s.spoolAfter > 0 {
		// One write in flight per connection at most.
		queue := s.opts.MaxConnections
		if queue <= 0 {
			queue = 1 << 16
		}
		s.spillPool = workpool.New(spoolWriters, queue)
	}
	s.initGuard()
	s.gen.Store(&generation{chain: chain, proto: opts.Proto})
	// Other loops, or other processes that were handed the same sockets,
	// compete for connections.
	s.rearm = opts.Loops > 1 || len(opts.Listeners) > 0
	if err := s.openListeners(); err != nil {
		s.closeListeners()
		s.closeSpillPool()
		return nil, err
	}
	if len(s.listeners) == 0 {
		s.closeSpillPool()
		return nil, errors.New("loop: no listen address")
	}
	s.startMetrics()
	return s, nil
}

func resolveListen(a string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	if host == "" {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p)), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.LookupIP(host)
		if lerr != nil || len(ips) == 0 {
			return netip.AddrPort{}, fmt.Errorf("cannot resolve host %q", host)
		}
		ip, _ = netip.AddrFromSlice(ips[0])
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(p)), nil
}

// Addrs returns the bound addresses (with the real port when 0 was asked).
func (s *Server) Addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.addr
	}
	return out
}

// Connections is the number of open connections.
func (s *Server) Connections() int64 { return s.conns.Load() }

// Shutdown stops accepting, lets open transactions finish and closes idle
// sessions with 421 4.3.2; when ctx ends the rest get 421 4.3.2 too. It
// returns when every loop has stopped.
func (s *Server) Shutdown(ctx context.Context) {
	if s.draining.Swap(true) {
		return
	}
	s.drain()
	s.wakeStreams(false)
	done := make(chan struct{})
	go func() { s.stopped.Wait(); s.streamWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.force()
		s.wakeStreams(true)
		<-done
	}
	s.closeSpillPool()
}

// closeSpillPool stops the spool writers once their writes are done.
func (s *Server) closeSpillPool() {
	if s.spillPool != nil {
		s.spillPool.Close()
	}
}

// admit decides whether a new connection from ip on a listener of kind is
// served. When it is, it counts in the connection total and (outside
// PROXY listeners, where the peer is the balancer and the limit applies
// to the address of the header instead) in the per-address limit. When it
// is not, reply is what to write before closing (nil: close without a
// word, as for a TLS client that cannot read a plaintext refusal) and why
// says which limit refused it.
func (s *Server) admit(ip netip.Addr, kind listenKind, draining bool) (ok bool, reply []byte, why metrics.AcceptRefusal) {
	refuse := func(r []byte, why metrics.AcceptRefusal) (bool, []byte, metrics.AcceptRefusal) {
		if kind.TLS {
			return false, nil, why
		}
		return false, r, why
	}
	switch {
	case kind.Proxy && !s.proxyTrusted(ip):
		// Only the load balancer may speak first on a PROXY listener;
		// anyone else is closed without a banner.
		return false, nil, metrics.RefusedProxyUntrusted
	case draining:
		return refuse(s.replyShutdown, metrics.RefusedDraining)
	}
	if n := s.conns.Add(1); s.opts.MaxConnections > 0 && n > int64(s.opts.MaxConnections) {
		s.conns.Add(-1)
		return refuse(s.replyTooMany, metrics.RefusedMaxConnections)
	}
	if !kind.Proxy && !s.acquireIP(ip) {
		s.conns.Add(-1)
		return refuse(s.replyTooManyIP, metrics.RefusedPerIP)
	}
	return true, nil, 0
}

// proxyTrusted reports whether ip may send a PROXY header.
func (s *Server) proxyTrusted(ip netip.Addr) bool {
	for _, p := range s.opts.ProxyTrusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// logAcceptError logs accept failures at most once a second.
func (s *Server) logAcceptError(err error) {
	if ok, held := s.acceptLog.Allow(time.Now()); ok {
		s.log.Error().Err(err).Int64("suppressed", held).Msg("accept failed; backing off")
	}
}
