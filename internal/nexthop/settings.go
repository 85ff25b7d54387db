package nexthop

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"loopmx/config"
	"loopmx/plugins"
)

// Protocol is the dialect spoken to the next hop.
type Protocol uint8

const (
	// SMTP is RFC 5321 with EHLO; one reply for the whole message.
	SMTP Protocol = iota
	// LMTP is RFC 2033: LHLO, and one reply per recipient after the
	// message.
	LMTP
)

// Settings are a forwarder's settings, as read from <plugin>.ini.
type Settings struct {
	// Hosts are tried in order: "host:port", or "unix:/path" for a
	// stream socket.
	Hosts []string
	// Helo is the name we give in EHLO/LHLO.
	Helo string
	// StartTLS requires STARTTLS (RFC 3207) with every next hop.
	StartTLS bool
	// TLSVerify checks the next hop's certificate against the system
	// roots and TLSServerName (or the host name from Hosts).
	TLSVerify     bool
	TLSServerName string
	// ConnectTimeout bounds a connect; CommandTimeout the greeting and
	// each command's reply; DataTimeout sending the message and waiting
	// for the reply(s) to its end.
	ConnectTimeout, CommandTimeout, DataTimeout time.Duration
	// IdleTimeout is how long an unused session stays in the pool.
	IdleTimeout time.Duration
	// PoolSize is the number of idle sessions kept per host.
	PoolSize int
	// MaxMessages is the number of messages sent over one session.
	MaxMessages int
	// Budget bounds one whole delivery, all hosts and steps together. It
	// is kept below the chain's timeout for the plugin, so that the plugin
	// answers before the loop gives up on it.
	Budget time.Duration
}

// Defaults of the ini keys.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultCommandTimeout = 60 * time.Second
	DefaultDataTimeout    = 300 * time.Second
	DefaultIdleTimeout    = 60 * time.Second
	DefaultPoolSize       = 10
	DefaultMaxMessages    = 100
)

// budget is the part of the chain's timeout a delivery may use: all but a
// tenth of it, at most two seconds less.
func budget(timeout time.Duration) time.Duration {
	return timeout - min(timeout/10, 2*time.Second)
}

// Setup reads <name>.ini (named after the last part of name) and builds a
// forwarder speaking proto. It is the Factory of the smtp_forward and
// lmtp plugins.
func Setup(cfg *config.Config, name string, proto Protocol) (plugins.Plugin, error) {
	s, err := LoadSettings(cfg, name)
	if err != nil {
		return nil, err
	}
	return New(name, proto, s), nil
}

// LoadSettings reads and checks the settings of the forwarding plugin
// name from <name>.ini.
func LoadSettings(cfg *config.Config, name string) (Settings, error) {
	pc, err := cfg.Plugin(name)
	if err != nil {
		return Settings{}, err
	}
	s := Settings{
		Hosts:          pc.Strings("", "hosts", nil),
		Helo:           pc.String("", "helo", cfg.Main.Hostname),
		StartTLS:       pc.Bool("", "starttls", false),
		TLSVerify:      pc.Bool("", "tls_verify", true),
		TLSServerName:  pc.String("", "tls_server_name", ""),
		ConnectTimeout: pc.Duration("", "connect_timeout", DefaultConnectTimeout),
		CommandTimeout: pc.Duration("", "command_timeout", DefaultCommandTimeout),
		DataTimeout:    pc.Duration("", "data_timeout", DefaultDataTimeout),
		IdleTimeout:    pc.Duration("", "idle_timeout", DefaultIdleTimeout),
		PoolSize:       pc.Int("", "pool_size", DefaultPoolSize),
		MaxMessages:    pc.Int("", "max_messages_per_connection", DefaultMaxMessages),
		Budget:         budget(pc.Timeout()),
	}
	if err := pc.Check(); err != nil {
		return Settings{}, fmt.Errorf("plugin/%s: %w", name, err)
	}
	if err := s.check(); err != nil {
		return Settings{}, fmt.Errorf("plugin/%s: %s: %w", name, pc.File(), err)
	}
	return s, nil
}

// check validates settings that parsed; the error names the key.
func (s *Settings) check() error {
	if len(s.Hosts) == 0 {
		return errors.New("hosts: no next hop given (hosts = mail.example.net:25)")
	}
	for _, h := range s.Hosts {
		if err := checkHost(h); err != nil {
			return fmt.Errorf("hosts: %q: %w", h, err)
		}
	}
	if s.Helo == "" || strings.ContainsAny(s.Helo, " \t\r\n") {
		return fmt.Errorf("helo: %q is not a host name", s.Helo)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"connect_timeout", s.ConnectTimeout}, {"command_timeout", s.CommandTimeout},
		{"data_timeout", s.DataTimeout}, {"idle_timeout", s.IdleTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: %s must be more than 0", d.key, d.v)
		}
	}
	if s.PoolSize < 0 {
		return fmt.Errorf("pool_size: %d is negative", s.PoolSize)
	}
	if s.MaxMessages < 1 {
		return fmt.Errorf("max_messages_per_connection: %d must be at least 1", s.MaxMessages)
	}
	return nil
}

// checkHost accepts "host:port" with a port number, and "unix:/path".
func checkHost(h string) error {
	if path, ok := strings.CutPrefix(h, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return errors.New("a unix socket needs an absolute path (unix:/run/lmtp.sock)")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil || host == "" {
		return errors.New("want host:port or unix:/path")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return errors.New("the port is not a number from 1 to 65535")
	}
	return nil
}
