// Package lmtp is the queue/lmtp plugin: every message that passes the
// earlier hooks is handed to a mail store over LMTP (RFC 2033), and the
// client hears 250 only once the store said 250 for every recipient. The
// client side lives in internal/nexthop, shared with
// queue/smtp_forward; README.md says what the client is told when the
// store accepts the message for some recipients and not for others.
package lmtp

import (
	"loopmx/config"
	"loopmx/internal/nexthop"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file; its settings are in
// lmtp.ini.
const Name = "queue/lmtp"

func init() { plugins.Register(Name, setup) }

func setup(cfg *config.Config) (plugins.Plugin, error) {
	return nexthop.Setup(cfg, Name, nexthop.LMTP)
}
