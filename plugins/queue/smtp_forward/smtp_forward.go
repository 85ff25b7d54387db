// Package smtpforward is the queue/smtp_forward plugin: every message
// that passes the earlier hooks is handed to a next hop over SMTP, and the
// client hears 250 only once the next hop said 250. The client side lives
// in internal/nexthop, shared with queue/lmtp; README.md says what the
// client is told in each case.
package smtpforward

import (
	"loopmx/config"
	"loopmx/internal/nexthop"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file; its settings are in
// smtp_forward.ini.
const Name = "queue/smtp_forward"

func init() { plugins.Register(Name, setup) }

func setup(cfg *config.Config) (plugins.Plugin, error) {
	return nexthop.Setup(cfg, Name, nexthop.SMTP)
}
