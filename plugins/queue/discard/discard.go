// Package discard is the queue/discard plugin: it accepts every message
// and throws it away. It exists for benchmarks and tests; it says so in the
// log when it starts, because a production MX that loads it loses mail.
package discard

import (
	"os"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/logstamp"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "queue/discard"

func init() { plugins.Register(Name, setup) }

// Discard accepts and drops messages.
type Discard struct{}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	if err := pc.Check(); err != nil {
		return nil, err
	}
	l := zerolog.New(os.Stderr).Hook(logstamp.Hook{})
	l.Warn().Str("plugin", Name).Msg("every accepted message is DISCARDED: use this plugin only for benchmarks and tests")
	return Discard{}, nil
}

// Name implements plugins.Plugin.
func (Discard) Name() string { return Name }

// Queue implements plugins.QueueHook; it runs inline, it never waits.
func (Discard) Queue(c *plugins.Conn, _ *plugins.Message) plugins.Result {
	return plugins.Queued(c, "discarded")
}

var _ plugins.QueueHook = Discard{}
