package config

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Main holds the [main] section of smtp.ini. docs/config.md describes each
// key; the comment after each field names its key.
type Main struct {
	Listen              []string       // listen: host:port addresses, IPv6 in brackets
	Nodes               int            // nodes: worker processes under a supervisor; 0 = one process, no supervisor
	Loops               int            // loops: event loops per process
	SingleAccept        bool           // single_accept: yield after each accept
	ThreadpoolSize      int            // threadpool_size: workpool workers; UV_THREADPOOL_SIZE overrides
	Hostname            string         // me: host name for the banner, EHLO and Received (the key keeps Haraka's name)
	InactivityTimeout   time.Duration  // inactivity_timeout: idle time before a client is dropped
	CommandTimeout      time.Duration  // command_timeout: a command line, once begun, must end within it; the grace of a message too
	DataMinRate         int64          // data_min_rate: bytes/s a message must average after its grace
	StressThreshold     int            // stress_threshold: percent of max_connections open that turns on stress mode; 0 = never
	StressTimeout       time.Duration  // stress_timeout: every timeout above is at most this under stress
	MaxMessageSize      int64          // max_message_size: bytes, advertised as SIZE
	SpoolAfter          int64          // spool_after: body bytes a session keeps in memory before it spills to spool_dir
	MaxBodyMemory       int64          // max_body_memory: in-memory bodies of all sessions before they spill early
	SpoolDir            string         // spool_dir: where bodies spill, as written (resolve with Config.Path)
	MaxRecipients       int            // max_recipients: RCPT TO per transaction
	MaxLineLength       int            // max_line_length: command line bytes incl. CRLF
	MaxDataLineLength   int            // max_data_line_length: message line bytes incl. CRLF; 0 = unlimited
	LongLines           string         // long_lines: "reject" or "keep"
	BareLineEndings     string         // bare_line_endings: "reject" or "keep"
	AllowSourceRoute    bool           // allow_source_route: RCPT takes a source route and drops it (else 550 5.7.1)
	AllowPercentHack    bool           // allow_percent_hack: RCPT takes a '%' in the local part (else 550 5.7.1)
	AllowBangPath       bool           // allow_bang_path: RCPT takes a '!' in the local part (else 550 5.7.1)
	MaxConnections      int            // max_connections: per process; 0 = unlimited
	MaxConnectionsPerIP int            // max_connections_per_ip: 0 = unlimited
	PerIPPrefixV4       int            // per_ip_v4_prefix: IPv4 addresses in one prefix of this length count as one
	PerIPPrefixV6       int            // per_ip_v6_prefix: IPv6 addresses in one prefix of this length count as one
	MaxErrors           int            // max_errors: protocol errors before the connection is closed
	GracefulTimeout     time.Duration  // graceful_timeout: how long a drain waits for open sessions
	DrainGrace          time.Duration  // drain_grace: after TERM, how long new connections are still served while /readyz says not ready
	MaxPipelineBuffer   int            // max_pipeline_buffer: unprocessed input kept per connection, and the most read at once
	WorkQueueSize       int            // work_queue_size: workpool queue length
	User                string         // user: run workers as this user when started as root ("" = do not change)
	Group               string         // group: run workers with this group ("" = the user's primary group)
	SchedPolicy         string         // sched_policy: "shared" (one socket, every worker accepts) or "reuseport"
	Backlog             int            // backlog: listen(2) backlog (capped by net.core.somaxconn)
	TCPKeepalive        time.Duration  // tcp_keepalive: keepalive idle time on accepted sockets; 0 = off
	RecvBuffer          int            // recv_buffer: SO_RCVBUF of accepted sockets in bytes; 0 = kernel default
	SendBuffer          int            // send_buffer: SO_SNDBUF of accepted sockets in bytes; 0 = kernel default
	RestartBackoffMax   time.Duration  // restart_backoff_max: longest wait before restarting a worker that keeps dying
	SMTPSListen         []string       // smtps_listen: addresses speaking implicit TLS (RFC 8314, port 465 style)
	ProxyListen         []string       // proxy_listen: addresses that expect a PROXY protocol v1/v2 header first
	ProxyTrusted        []netip.Prefix // proxy_trusted: who may send a PROXY header (CIDRs)
	ProxyTimeout        time.Duration  // proxy_timeout: how long a PROXY header may take to arrive
	MetricsListen       string         // metrics_listen: host:port of the Prometheus endpoint; "" = off
	MetricsPprof        bool           // metrics_pprof: serve /debug/pprof/ on the metrics endpoint
}

// Listener is one listening address and what it speaks.
type Listener struct {
	Addr  string
	TLS   bool // implicit TLS from the first byte
	Proxy bool // a PROXY protocol header comes first
}

// Listeners returns every listening address in a fixed order (listen,
// then smtps_listen, then proxy_listen). A supervisor hands sockets to its
// workers in this order.
func (m Main) Listeners() []Listener {
	var out []Listener
	for _, a := range m.Listen {
		out = append(out, Listener{Addr: a})
	}
	for _, a := range m.SMTPSListen {
		out = append(out, Listener{Addr: a, TLS: true})
	}
	for _, a := range m.ProxyListen {
		out = append(out, Listener{Addr: a, Proxy: true})
	}
	return out
}

// Log holds the [log] section of smtp.ini.
type Log struct {
	Level  string // level: trace, debug, info, warn or error
	Format string // format: json or console
}

// Limits that the declarations below and the error messages quote.
const (
	maxThreadpool     = 128 // the cap libuv puts on UV_THREADPOOL_SIZE
	threadpoolEnv     = "UV_THREADPOOL_SIZE"
	minLineLength     = 512 // RFC 5321 4.5.3.1.4: command lines of 512 octets
	maxLineLength     = 65536
	minDataLineLength = 1000 // RFC 5321 4.5.3.1.6: text lines of 1000 octets
	minPipelineBuffer = 4096
)

// setting declares one key of smtp.ini: its name, its default, how its
// value is read and checked, where it goes, and how the effective value
// is shown again. mainSettings and logSettings hold one for every key;
// docs/config.md has a line for each.
type setting struct {
	key string
	// def is the default, written as in smtp.ini; it is read with parse
	// before the file is, so it passes the same checks. An empty def
	// leaves the field at its zero value.
	def   string
	parse func(c *Config, v string) error
	show  func(c *Config) string
}

// intSetting declares an integer key that takes lo..hi (hi may be noMax).
func intSetting(key, def string, lo, hi int, field func(*Main) *int) setting {
	return setting{
		key: key,
		def: def,
		parse: func(c *Config, v string) error {
			n, err := parseIntIn(v, lo, hi)
			if err == nil {
				*field(&c.Main) = n
			}
			return err
		},
		show: func(c *Config) string { return strconv.Itoa(*field(&c.Main)) },
	}
}

// durationSetting declares a duration key of at least lo.
func durationSetting(key, def string, lo time.Duration, field func(*Main) *time.Duration) setting {
	return setting{
		key: key,
		def: def,
		parse: func(c *Config, v string) error {
			d, err := parseDurationMin(v, lo)
			if err == nil {
				*field(&c.Main) = d
			}
			return err
		},
		show: func(c *Config) string { return formatDuration(*field(&c.Main)) },
	}
}

// sizeSetting declares a size key (bytes, or k, m, g) of at least lo.
func sizeSetting(key, def string, lo int64, field func(*Main) *int64) setting {
	return setting{
		key: key,
		def: def,
		parse: func(c *Config, v string) error {
			n, err := parseSize(v)
			if err != nil {
				return err
			}
			if n < lo {
				return &valueError{v, fmt.Sprintf("is out of range (minimum %d)", lo), nil}
			}
			*field(&c.Main) = n
			return nil
		},
		show: func(c *Config) string { return formatSize(*field(&c.Main)) },
	}
}

// boolSetting declares a boolean key of [main].
func boolSetting(key, def string, field func(*Main) *bool) setting {
	return setting{
		key: key,
		def: def,
		parse: func(c *Config, v string) error {
			b, err := parseBool(v)
			if err == nil {
				*field(&c.Main) = b
			}
			return err
		},
		show: func(c *Config) string { return strconv.FormatBool(*field(&c.Main)) },
	}
}

// choiceSetting declares a key that takes one of a few words.
func choiceSetting(key, def string, field func(*Config) *string, choices ...string) setting {
	return setting{
		key: key,
		def: def,
		parse: func(c *Config, v string) error {
			s, err := parseChoice(v, choices...)
			if err == nil {
				*field(c) = s
			}
			return err
		},
		show: func(c *Config) string { return *field(c) },
	}
}

// mainSettings declares the keys of [main], in the order Summary shows them.
// A new key is one entry here (with its field in Main) and one line in
// docs/config.md.
var mainSettings = []setting{
	{
		key: "listen",
		def: "127.0.0.1:2525",
		parse: func(c *Config, v string) error {
			addrs, err := parseListen(v)
			if err == nil {
				c.Main.Listen = addrs
			}
			return err
		},
		show: func(c *Config) string { return strings.Join(c.Main.Listen, ", ") },
	},
	{
		key: "nodes",
		def: "0",
		parse: func(c *Config, v string) error {
			n, _, err := parseCount(v, 0)
			if err != nil {
				return err
			}
			if n > 1024 {
				return &valueError{v, "is out of range 0..1024", nil}
			}
			c.Main.Nodes = n
			return nil
		},
		show: func(c *Config) string { return strconv.Itoa(c.Main.Nodes) },
	},
	{
		key: "loops",
		def: "cpus",
		parse: func(c *Config, v string) error {
			n, cpus, err := parseCount(v, 1)
			if err == nil {
				c.Main.Loops, c.loopsPerCPU = n, cpus
			}
			return err
		},
		show: func(c *Config) string { return strconv.Itoa(c.Main.Loops) },
	},
	boolSetting("single_accept", "true", func(m *Main) *bool { return &m.SingleAccept }),
	intSetting("threadpool_size", "4", 1, maxThreadpool, func(m *Main) *int { return &m.ThreadpoolSize }),
	{
		// No def: applySMTP fills in the host name when the file sets none.
		key: "me",
		parse: func(c *Config, v string) error {
			if !plausibleHost(v) {
				return &valueError{v, "is not a plausible host name", nil}
			}
			c.Main.Hostname = v
			return nil
		},
		show: func(c *Config) string { return c.Main.Hostname },
	},
	// RFC 5321 4.5.3.2.7: at least 5 minutes.
	durationSetting("inactivity_timeout", "300s", time.Second, func(m *Main) *time.Duration { return &m.InactivityTimeout }),
	// docs/protocol.md (Timeouts) says why these values.
	durationSetting("command_timeout", "60s", time.Second, func(m *Main) *time.Duration { return &m.CommandTimeout }),
	sizeSetting("data_min_rate", "1k", 1, func(m *Main) *int64 { return &m.DataMinRate }),
	intSetting("stress_threshold", "80", 0, 100, func(m *Main) *int { return &m.StressThreshold }),
	durationSetting("stress_timeout", "10s", time.Second, func(m *Main) *time.Duration { return &m.StressTimeout }),
	sizeSetting("max_message_size", "25m", 1, func(m *Main) *int64 { return &m.MaxMessageSize }),
	// docs/config.md (Message bodies) says why these values.
	sizeSetting("spool_after", "64k", 0, func(m *Main) *int64 { return &m.SpoolAfter }),
	sizeSetting("max_body_memory", "64m", 0, func(m *Main) *int64 { return &m.MaxBodyMemory }),
	{
		key: "spool_dir",
		def: "./var/spool/tmp",
		parse: func(c *Config, v string) error {
			if strings.TrimSpace(v) == "" {
				return &valueError{v, "is empty (name a directory on a local disk)", nil}
			}
			c.Main.SpoolDir = strings.TrimSpace(v)
			return nil
		},
		show: func(c *Config) string { return c.Main.SpoolDir },
	},
	// RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted.
	intSetting("max_recipients", "100", 1, noMax, func(m *Main) *int { return &m.MaxRecipients }),
	intSetting("max_line_length", "512", minLineLength, maxLineLength, func(m *Main) *int { return &m.MaxLineLength }),
	{
		key: "max_data_line_length",
		def: "1000",
		parse: func(c *Config, v string) error {
			n, err := parseInt(v)
			if err != nil {
				return err
			}
			if n != 0 && n < minDataLineLength {
				return &valueError{v, fmt.Sprintf("is out of range (0 for unlimited, or at least %d)", minDataLineLength), nil}
			}
			c.Main.MaxDataLineLength = n
			return nil
		},
		show: func(c *Config) string { return strconv.Itoa(c.Main.MaxDataLineLength) },
	},
	choiceSetting("long_lines", "reject", func(c *Config) *string { return &c.Main.LongLines }, "reject", "keep"),
	choiceSetting("bare_line_endings", "reject", func(c *Config) *string { return &c.Main.BareLineEndings }, "reject", "keep"),
	boolSetting("allow_source_route", "false", func(m *Main) *bool { return &m.AllowSourceRoute }),
	boolSetting("allow_percent_hack", "false", func(m *Main) *bool { return &m.AllowPercentHack }),
	boolSetting("allow_bang_path", "false", func(m *Main) *bool { return &m.AllowBangPath }),
	intSetting("max_connections", "10000", 0, noMax, func(m *Main) *int { return &m.MaxConnections }),
	intSetting("max_connections_per_ip", "20", 0, noMax, func(m *Main) *int { return &m.MaxConnectionsPerIP }),
	intSetting("per_ip_v4_prefix", "32", 8, 32, func(m *Main) *int { return &m.PerIPPrefixV4 }),
	intSetting("per_ip_v6_prefix", "64", 16, 128, func(m *Main) *int { return &m.PerIPPrefixV6 }),
	intSetting("max_errors", "10", 1, noMax, func(m *Main) *int { return &m.MaxErrors }),
	durationSetting("graceful_timeout", "30s", 0, func(m *Main) *time.Duration { return &m.GracefulTimeout }),
	durationSetting("drain_grace", "0s", 0, func(m *Main) *time.Duration { return &m.DrainGrace }),
	intSetting("max_pipeline_buffer", "16384", minPipelineBuffer, noMax, func(m *Main) *int { return &m.MaxPipelineBuffer }),
	intSetting("work_queue_size", "1024", 1, noMax, func(m *Main) *int { return &m.WorkQueueSize }),
	{
		key: "user",
		parse: func(c *Config, v string) error {
			c.Main.User = strings.TrimSpace(v)
			return nil
		},
		show: func(c *Config) string { return c.Main.User },
	},
	{
		key: "group",
		parse: func(c *Config, v string) error {
			c.Main.Group = strings.TrimSpace(v)
			return nil
		},
		show: func(c *Config) string { return c.Main.Group },
	},
	choiceSetting("sched_policy", "shared", func(c *Config) *string { return &c.Main.SchedPolicy }, "shared", "reuseport"),
	intSetting("backlog", "4096", 1, 1<<20, func(m *Main) *int { return &m.Backlog }),
	durationSetting("tcp_keepalive", "120s", 0, func(m *Main) *time.Duration { return &m.TCPKeepalive }),
	intSetting("recv_buffer", "0", 0, 1<<30, func(m *Main) *int { return &m.RecvBuffer }),
	intSetting("send_buffer", "0", 0, 1<<30, func(m *Main) *int { return &m.SendBuffer }),
	durationSetting("restart_backoff_max", "30s", time.Second, func(m *Main) *time.Duration { return &m.RestartBackoffMax }),
	optionalListen("smtps_listen", func(c *Config) *[]string { return &c.Main.SMTPSListen }),
	optionalListen("proxy_listen", func(c *Config) *[]string { return &c.Main.ProxyListen }),
	{
		key: "proxy_trusted",
		parse: func(c *Config, v string) error {
			var out []netip.Prefix
			for item := range strings.SplitSeq(v, ",") {
				item = strings.TrimSpace(item)
				if item == "" {
					continue
				}
				p, err := netip.ParsePrefix(item)
				if err != nil {
					a, aerr := netip.ParseAddr(item)
					if aerr != nil {
						return &valueError{item, "is not an IP address or CIDR", err}
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				out = append(out, p.Masked())
			}
			c.Main.ProxyTrusted = out
			return nil
		},
		show: func(c *Config) string {
			var parts []string
			for _, p := range c.Main.ProxyTrusted {
				parts = append(parts, p.String())
			}
			return strings.Join(parts, ", ")
		},
	},
	durationSetting("proxy_timeout", "10s", time.Second, func(m *Main) *time.Duration { return &m.ProxyTimeout }),
	{
		key: "metrics_listen",
		parse: func(c *Config, v string) error {
			if strings.TrimSpace(v) == "" {
				c.Main.MetricsListen = ""
				return nil
			}
			addrs, err := parseListen(v)
			if err == nil && len(addrs) > 1 {
				err = &valueError{v, "names more than one address", nil}
			}
			if err == nil {
				c.Main.MetricsListen = addrs[0]
			}
			return err
		},
		show: func(c *Config) string { return c.Main.MetricsListen },
	},
	boolSetting("metrics_pprof", "false", func(m *Main) *bool { return &m.MetricsPprof }),
}

// optionalListen is a listen list that may be empty.
func optionalListen(key string, field func(*Config) *[]string) setting {
	return setting{
		key: key,
		parse: func(c *Config, v string) error {
			if strings.TrimSpace(v) == "" {
				*field(c) = nil
				return nil
			}
			addrs, err := parseListen(v)
			if err == nil {
				*field(c) = addrs
			}
			return err
		},
		show: func(c *Config) string { return strings.Join(*field(c), ", ") },
	}
}

// logSettings lists the keys of [log].
var logSettings = []setting{
	choiceSetting("level", "info", func(c *Config) *string { return &c.Log.Level }, "trace", "debug", "info", "warn", "error"),
	choiceSetting("format", "json", func(c *Config) *string { return &c.Log.Format }, "json", "console"),
}

// applyDefaults sets every key of smtp.ini to its declared default, except
// me, which applySMTP fills in from the host name.
func (c *Config) applyDefaults() {
	c.Main, c.Log, c.loopsPerCPU = Main{}, Log{}, false
	for _, set := range [][]setting{mainSettings, logSettings} {
		for _, s := range set {
			if s.def == "" {
				continue
			}
			if err := s.parse(c, s.def); err != nil {
				// TestDefaultsParse keeps this from ever happening.
				panic(fmt.Sprintf("config: the default of %s, %q, is refused: %v", s.key, s.def, err))
			}
		}
	}
}

// hostname is os.Hostname, replaceable by tests.
var hostname = os.Hostname

// applySMTP fills c.Main and c.Log from smtp.ini (f) and the environment.
// Every key is looked at before the first bad value is returned, so that
// the unknown-key check knows which keys were read.
func (c *Config) applySMTP(f *iniFile, env func(string) (string, bool)) error {
	c.applyDefaults()
	c.setIn = make(map[string]bool)
	apply := func(section string, settings []setting) {
		for _, s := range settings {
			v, ok := f.lookup(section, s.key)
			if !ok {
				continue
			}
			c.setIn[slot(section, s.key)] = true
			if err := s.parse(c, v); err != nil {
				f.fail(section, s.key, err)
			}
		}
	}
	apply("", mainSettings)
	apply("log", logSettings)
	if err := f.check(); err != nil {
		return err
	}

	if c.Main.Hostname == "" {
		name, err := hostname()
		if err != nil {
			return fmt.Errorf("config: %s: [main] me: not set, and the host name is unknown: %w", f.name, err)
		}
		if !plausibleHost(name) {
			return fmt.Errorf("config: %s: [main] me: not set, and the host name %q is not a plausible host name", f.name, name)
		}
		c.Main.Hostname = name
	}

	// An empty UV_THREADPOOL_SIZE counts as unset, so `UV_THREADPOOL_SIZE=
	// loopmx` can switch an inherited override off.
	if v, ok := env(threadpoolEnv); ok && v != "" {
		n, err := parseIntIn(v, 1, maxThreadpool)
		if err != nil {
			return fmt.Errorf("config: %s: %w", threadpoolEnv, err)
		}
		c.Main.ThreadpoolSize = n
		c.threadpoolFromEnv = true
	}
	return nil
}

// noEnv is the environment used when Load or Default get a nil env.
func noEnv(string) (string, bool) { return "", false }
