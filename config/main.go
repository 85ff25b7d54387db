package config

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
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
	Me                  string         // me: host name for the banner and Received
	InactivityTimeout   time.Duration  // inactivity_timeout: idle time before a client is dropped
	MaxMessageSize      int64          // max_message_size: bytes, advertised as SIZE
	MaxRecipients       int            // max_recipients: RCPT TO per transaction
	MaxLineLength       int            // max_line_length: command line bytes incl. CRLF
	MaxDataLineLength   int            // max_data_line_length: message line bytes incl. CRLF; 0 = unlimited
	LongLines           string         // long_lines: "reject" or "keep"
	BareLineEndings     string         // bare_line_endings: "reject" or "keep"
	MaxConnections      int            // max_connections: per process; 0 = unlimited
	MaxConnectionsPerIP int            // max_connections_per_ip: 0 = unlimited
	MaxErrors           int            // max_errors: protocol errors before the connection is closed
	GracefulTimeout     time.Duration  // graceful_timeout: how long a drain waits for open sessions
	MaxPipelineBuffer   int            // max_pipeline_buffer: unprocessed input kept while a hook runs
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

// Limits and defaults that the docs and the error messages quote.
const (
	defaultListen     = "127.0.0.1:2525"
	defaultThreadpool = 4
	maxThreadpool     = 128 // the cap libuv puts on UV_THREADPOOL_SIZE
	threadpoolEnv     = "UV_THREADPOOL_SIZE"
	minLineLength     = 512 // RFC 5321 4.5.3.1.4: command lines of 512 octets
	maxLineLength     = 65536
	minDataLineLength = 1000 // RFC 5321 4.5.3.1.6: text lines of 1000 octets
	minPipelineBuffer = 4096
	defaultInactivity = 300 * time.Second // RFC 5321 4.5.3.2.7: at least 5 minutes
)

// defaultMain returns [main] as it is when smtp.ini sets nothing, except
// for me, which is filled in from the host name after parsing.
func defaultMain() Main {
	return Main{
		Listen:            []string{defaultListen},
		Nodes:             0,
		Loops:             runtime.NumCPU(),
		SingleAccept:      true,
		ThreadpoolSize:    defaultThreadpool,
		InactivityTimeout: defaultInactivity,
		MaxMessageSize:    25 << 20,
		MaxRecipients:     100, // RFC 5321 4.5.3.1.8: at least 100 must be accepted
		MaxLineLength:     minLineLength,
		MaxDataLineLength: minDataLineLength,
		LongLines:         "reject",
		BareLineEndings:   "reject",
		MaxConnections:    10000,
		GracefulTimeout:   30 * time.Second,
		MaxErrors:         10,
		MaxPipelineBuffer: 65536,
		WorkQueueSize:     1024,
		SchedPolicy:       "shared",
		Backlog:           4096,
		TCPKeepalive:      120 * time.Second,
		RestartBackoffMax: 30 * time.Second,
		ProxyTimeout:      10 * time.Second,
	}
}

func defaultLog() Log { return Log{Level: "info", Format: "json"} }

// setting is one key of smtp.ini: how to parse its value into the config
// and how to show the effective value again.
type setting struct {
	key   string
	parse func(c *Config, v string) error
	show  func(c *Config) string
}

// intSetting is a setting for an integer field with the range lo..hi.
func intSetting(key string, field func(*Config) *int, lo, hi int) setting {
	return setting{
		key: key,
		parse: func(c *Config, v string) error {
			n, err := parseIntIn(v, lo, hi)
			if err == nil {
				*field(c) = n
			}
			return err
		},
		show: func(c *Config) string { return strconv.Itoa(*field(c)) },
	}
}

// durationSetting is a setting for a duration field of at least lo.
func durationSetting(key string, field func(*Config) *time.Duration, lo time.Duration) setting {
	return setting{
		key: key,
		parse: func(c *Config, v string) error {
			d, err := parseDurationMin(v, lo)
			if err == nil {
				*field(c) = d
			}
			return err
		},
		show: func(c *Config) string { return formatDuration(*field(c)) },
	}
}

// choiceSetting is a setting for a field that takes one of a few words.
func choiceSetting(key string, field func(*Config) *string, choices ...string) setting {
	return setting{
		key: key,
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

// mainSettings lists the keys of [main] in the order Summary shows them.
var mainSettings = []setting{
	{
		key: "listen",
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
		parse: func(c *Config, v string) error {
			n, cpus, err := parseCount(v, 1)
			if err == nil {
				c.Main.Loops, c.loopsPerCPU = n, cpus
			}
			return err
		},
		show: func(c *Config) string { return strconv.Itoa(c.Main.Loops) },
	},
	{
		key: "single_accept",
		parse: func(c *Config, v string) error {
			b, err := parseBool(v)
			if err == nil {
				c.Main.SingleAccept = b
			}
			return err
		},
		show: func(c *Config) string { return strconv.FormatBool(c.Main.SingleAccept) },
	},
	intSetting("threadpool_size", func(c *Config) *int { return &c.Main.ThreadpoolSize }, 1, maxThreadpool),
	{
		key: "me",
		parse: func(c *Config, v string) error {
			if !plausibleHost(v) {
				return &valueError{v, "is not a plausible host name", nil}
			}
			c.Main.Me = v
			return nil
		},
		show: func(c *Config) string { return c.Main.Me },
	},
	durationSetting("inactivity_timeout", func(c *Config) *time.Duration { return &c.Main.InactivityTimeout }, time.Second),
	{
		key: "max_message_size",
		parse: func(c *Config, v string) error {
			n, err := parseSize(v)
			if err != nil {
				return err
			}
			if n < 1 {
				return &valueError{v, "is out of range (minimum 1)", nil}
			}
			c.Main.MaxMessageSize = n
			return nil
		},
		show: func(c *Config) string { return formatSize(c.Main.MaxMessageSize) },
	},
	intSetting("max_recipients", func(c *Config) *int { return &c.Main.MaxRecipients }, 1, noMax),
	intSetting("max_line_length", func(c *Config) *int { return &c.Main.MaxLineLength }, minLineLength, maxLineLength),
	{
		key: "max_data_line_length",
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
	choiceSetting("long_lines", func(c *Config) *string { return &c.Main.LongLines }, "reject", "keep"),
	choiceSetting("bare_line_endings", func(c *Config) *string { return &c.Main.BareLineEndings }, "reject", "keep"),
	intSetting("max_connections", func(c *Config) *int { return &c.Main.MaxConnections }, 0, noMax),
	intSetting("max_connections_per_ip", func(c *Config) *int { return &c.Main.MaxConnectionsPerIP }, 0, noMax),
	intSetting("max_errors", func(c *Config) *int { return &c.Main.MaxErrors }, 1, noMax),
	durationSetting("graceful_timeout", func(c *Config) *time.Duration { return &c.Main.GracefulTimeout }, 0),
	intSetting("max_pipeline_buffer", func(c *Config) *int { return &c.Main.MaxPipelineBuffer }, minPipelineBuffer, noMax),
	intSetting("work_queue_size", func(c *Config) *int { return &c.Main.WorkQueueSize }, 1, noMax),
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
	choiceSetting("sched_policy", func(c *Config) *string { return &c.Main.SchedPolicy }, "shared", "reuseport"),
	intSetting("backlog", func(c *Config) *int { return &c.Main.Backlog }, 1, 1<<20),
	durationSetting("tcp_keepalive", func(c *Config) *time.Duration { return &c.Main.TCPKeepalive }, 0),
	intSetting("recv_buffer", func(c *Config) *int { return &c.Main.RecvBuffer }, 0, 1<<30),
	intSetting("send_buffer", func(c *Config) *int { return &c.Main.SendBuffer }, 0, 1<<30),
	durationSetting("restart_backoff_max", func(c *Config) *time.Duration { return &c.Main.RestartBackoffMax }, time.Second),
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
	durationSetting("proxy_timeout", func(c *Config) *time.Duration { return &c.Main.ProxyTimeout }, time.Second),
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
	choiceSetting("level", func(c *Config) *string { return &c.Log.Level }, "trace", "debug", "info", "warn", "error"),
	choiceSetting("format", func(c *Config) *string { return &c.Log.Format }, "json", "console"),
}

// hostname is os.Hostname, replaceable by tests.
var hostname = os.Hostname

// applySMTP fills c.Main and c.Log from smtp.ini (f) and the environment.
// Every key is looked at before the first bad value is returned, so that
// the unknown-key check knows which keys were read.
func (c *Config) applySMTP(f *iniFile, env func(string) (string, bool)) error {
	c.Main = defaultMain()
	c.Log = defaultLog()
	c.loopsPerCPU = true
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

	if c.Main.Me == "" {
		name, err := hostname()
		if err != nil {
			return fmt.Errorf("config: %s: [main] me: not set, and the host name is unknown: %w", f.name, err)
		}
		if !plausibleHost(name) {
			return fmt.Errorf("config: %s: [main] me: not set, and the host name %q is not a plausible host name", f.name, name)
		}
		c.Main.Me = name
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
