// Package metrics is loopmx's side of Prometheus: the counters an event
// loop keeps (Shard), the collector that adds every loop's up when
// scraped, the HTTP endpoint (/metrics, /healthz, /readyz, /debug/pprof),
// and the private channel over which a supervisor gathers its workers'
// metrics and serves them all on one endpoint with a worker label.
//
// Nothing here is on the hot path: an event loop writes plain fields of
// its own Shard, without locks or atomics, and copies it out only when a
// scrape asks (loop/metrics.go). docs/metrics.md lists every series.
package metrics

// Command is the command a reply answers, as the replies series labels it.
type Command uint8

// The commands of the replies series. Connect is the greeting (or the
// refusal at connect); Message is the reply after the message's final
// dot (or last BDAT chunk); Other is every other verb, known or not.
const (
	CmdConnect Command = iota
	CmdHelo
	CmdEhlo
	CmdMail
	CmdRcpt
	CmdData
	CmdBdat
	CmdMessage
	CmdRset
	CmdNoop
	CmdQuit
	CmdVrfy
	CmdHelp
	CmdStartTLS
	CmdOther
	NumCommands
)

var commandNames = [NumCommands]string{"connect", "helo", "ehlo", "mail", "rcpt", "data", "bdat", "message",
	"rset", "noop", "quit", "vrfy", "help", "starttls", "other"}

func (c Command) String() string { return commandNames[c] }

// classNames label a reply's code class by its first digit; index 0
// holds anything that does not start with 1 to 5.
var classNames = [6]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// ClassOf returns the index in classNames of a wire reply's class.
func ClassOf(reply []byte) int {
	if len(reply) == 0 || reply[0] < '1' || reply[0] > '5' {
		return 0
	}
	return int(reply[0] - '0')
}

// AcceptRefusal says why a connection was closed right after accept.
type AcceptRefusal uint8

// The reasons of loopmx_accept_refused_total.
const (
	RefusedMaxConnections AcceptRefusal = iota
	RefusedPerIP
	RefusedProxyUntrusted
	RefusedDraining
	NumAcceptRefusals
)

var refusalNames = [NumAcceptRefusals]string{"max_connections", "max_connections_per_ip", "proxy_untrusted", "draining"}

// AcceptError is an accept(2) failure, by kind.
type AcceptError uint8

// The errors of loopmx_accept_errors_total.
const (
	AcceptEMFILE AcceptError = iota
	AcceptENFILE
	AcceptENOBUFS
	AcceptENOMEM
	AcceptOther
	NumAcceptErrors
)

var acceptErrorNames = [NumAcceptErrors]string{"emfile", "enfile", "enobufs", "enomem", "other"}

// ProxyOutcome is how a PROXY protocol header went.
type ProxyOutcome uint8

// The outcomes of loopmx_proxy_headers_total.
const (
	ProxyOK        ProxyOutcome = iota // a header with the client's address
	ProxyLocal                         // a LOCAL (health check) header
	ProxyMalformed                     // not a valid header: closed
	ProxyTimeout                       // none within proxy_timeout: closed
	ProxyUntrusted                     // a peer outside proxy_trusted: closed at accept
	NumProxyOutcomes
)

var proxyNames = [NumProxyOutcomes]string{"ok", "local", "malformed", "timeout", "untrusted"}

// Listener holds one listening socket's connection counts.
type Listener struct {
	// Banner is the time from accept to the banner, less any Delay a
	// connect hook asked for.
	Banner  DurHist
	Opened  uint64
	Closed  map[string]uint64 // by end reason (docs/logging.md)
	Refused [NumAcceptRefusals]uint64
	Errors  [NumAcceptErrors]uint64
}

// Refusal labels loopmx_refusals_total.
type Refusal struct {
	Plugin, Hook string
	Code         int
}

// HookKey labels loopmx_hook_duration_seconds.
type HookKey struct{ Plugin, Hook string }

// MessageKey labels loopmx_messages_total: the queue plugin that answered
// and the class of its answer (queued, deferred, rejected).
type MessageKey struct{ Plugin, Outcome string }

// TLSKey labels loopmx_tls_handshakes_total.
type TLSKey struct{ Outcome, Version string }

// Shard is the counts one event loop keeps (or the stream transports
// share, under a lock). The collector adds the shards of a process up.
type Shard struct {
	Listeners []Listener // by listener, in the order of config.Main.Listeners
	Replies   [NumCommands][len(classNames)]uint64
	Refusals  map[Refusal]uint64
	Hooks     map[HookKey]*DurHist
	PoolWait  DurHist // from submit to start on the workpool
	Messages  map[MessageKey]uint64
	Size      SizeHist // messages that reached the data_post or queue decision
	QueueTime DurHist  // from the first queue plugin to the reply
	TLS       map[TLSKey]uint64
	Proxy     [NumProxyOutcomes]uint64
}

// NewShard returns an empty shard for n listeners.
func NewShard(n int) *Shard {
	s := &Shard{}
	s.init(n)
	return s
}

func (s *Shard) init(n int) {
	s.Listeners = make([]Listener, n)
	for i := range s.Listeners {
		s.Listeners[i].Closed = map[string]uint64{}
	}
	s.Refusals = map[Refusal]uint64{}
	s.Hooks = map[HookKey]*DurHist{}
	s.Messages = map[MessageKey]uint64{}
	s.TLS = map[TLSKey]uint64{}
}

// Hook returns the histogram of one plugin's hook, making it on first use.
func (s *Shard) Hook(plugin, hook string) *DurHist {
	k := HookKey{plugin, hook}
	h := s.Hooks[k]
	if h == nil {
		h = &DurHist{}
		s.Hooks[k] = h
	}
	return h
}

// CopyTo makes dst an independent copy of s, reusing dst's maps.
func (s *Shard) CopyTo(dst *Shard) {
	if len(dst.Listeners) != len(s.Listeners) || dst.Refusals == nil {
		dst.init(len(s.Listeners))
	}
	for i := range s.Listeners {
		a, b := &s.Listeners[i], &dst.Listeners[i]
		closed := b.Closed
		*b = *a
		b.Closed = closed
		clear(b.Closed)
		for k, v := range a.Closed {
			b.Closed[k] = v
		}
	}
	dst.Replies, dst.PoolWait, dst.Size, dst.QueueTime, dst.Proxy = s.Replies, s.PoolWait, s.Size, s.QueueTime, s.Proxy
	copyMap(dst.Refusals, s.Refusals)
	copyMap(dst.Messages, s.Messages)
	copyMap(dst.TLS, s.TLS)
	for k, h := range s.Hooks {
		c := dst.Hooks[k]
		if c == nil {
			c = &DurHist{}
			dst.Hooks[k] = c
		}
		*c = *h
	}
}

func copyMap[K comparable](dst, src map[K]uint64) {
	for k, v := range src {
		dst[k] = v
	}
}

func addMap[K comparable](dst, src map[K]uint64) {
	for k, v := range src {
		dst[k] += v
	}
}

// Add adds o's counts to s. Both must be for the same listeners.
func (s *Shard) Add(o *Shard) {
	if s.Refusals == nil {
		s.init(len(o.Listeners))
	}
	for i := range o.Listeners {
		a, b := &o.Listeners[i], &s.Listeners[i]
		b.Banner.Add(&a.Banner)
		b.Opened += a.Opened
		addMap(b.Closed, a.Closed)
		for j := range a.Refused {
			b.Refused[j] += a.Refused[j]
		}
		for j := range a.Errors {
			b.Errors[j] += a.Errors[j]
		}
	}
	for i := range o.Replies {
		for j := range o.Replies[i] {
			s.Replies[i][j] += o.Replies[i][j]
		}
	}
	addMap(s.Refusals, o.Refusals)
	addMap(s.Messages, o.Messages)
	addMap(s.TLS, o.TLS)
	for k, h := range o.Hooks {
		s.Hook(k.Plugin, k.Hook).Add(h)
	}
	s.PoolWait.Add(&o.PoolWait)
	s.Size.Add(&o.Size)
	s.QueueTime.Add(&o.QueueTime)
	for i := range o.Proxy {
		s.Proxy[i] += o.Proxy[i]
	}
}
