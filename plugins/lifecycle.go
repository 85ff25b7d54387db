package plugins

import (
	"fmt"
	"strings"

	"loopmx/config"
)

// A plugin lives through three steps:
//
//  1. Its Factory reads and validates the config and builds the plugin
//     value. It changes nothing on the system: no directory is created, no
//     connection opened, no file written. `loopmx check-config`, `loopmx
//     doctor` and a supervisor checking a reload run this step only.
//  2. Start, for plugins that implement Starter, does what touches the
//     system (creating the spool, opening a socket). The server calls it
//     once, in every process that serves, before the first connection.
//  3. Close, for plugins that implement Closer, releases what the plugin
//     holds. It runs once, whether or not Start ran or succeeded.

// Starter is implemented by plugins that must touch the system before
// they can serve. A Start error stops the server's start; it names the
// file, key and value at fault, as a Factory error does.
type Starter interface {
	Start() error
}

// Planner is implemented by plugins whose Start changes the system. Plan
// says, without changing anything, what Start will find or do ("the
// spool /var/spool/loopmx will be created by loopmx (uid 998)"), for
// check-config to print.
type Planner interface {
	Plan() string
}

// Start runs Start of every plugin that has one, in config order, and
// stops at the first error, which it returns with the plugin's name. The
// caller closes the chain either way.
func (ch *Chain) Start() error {
	for i := range ch.entries {
		e := &ch.entries[i]
		if s, ok := e.p.(Starter); ok {
			if err := s.Start(); err != nil {
				return fmt.Errorf("plugin/%s: %w", e.name, err)
			}
		}
	}
	return nil
}

// Plans returns what each Planner says its Start will do, one line per
// plugin, prefixed with the plugin's name.
func (ch *Chain) Plans() []string {
	var out []string
	for i := range ch.entries {
		e := &ch.entries[i]
		if p, ok := e.p.(Planner); ok {
			if s := p.Plan(); s != "" {
				out = append(out, e.name+": "+s)
			}
		}
	}
	return out
}

// CheckDelivers refuses a chain that cannot deliver mail: a config
// directory without a plugins file (the server would run no plugin at
// all), or a chain without a queue hook (every message would be answered
// 451, since nothing takes it). The server and check-config both call
// it after Build.
func CheckDelivers(cfg *config.Config, ch *Chain) error {
	file := cfg.Path("plugins")
	if cfg.Embedded {
		file = "plugins (built-in default)"
	}
	if !cfg.Embedded && !cfg.HasPluginsFile() {
		return fmt.Errorf("config: %s: no such file: without it no plugin runs and every message would get 451; "+
			"list the plugins one a line (contrib/config/plugins is an example), with a queue plugin last", file)
	}
	for i := range ch.entries {
		if _, ok := ch.entries[i].p.(QueueHook); ok {
			return nil
		}
	}
	hint := "add a queue plugin"
	var queues []string
	for _, n := range Registered() {
		if strings.HasPrefix(n, "queue/") {
			queues = append(queues, n)
		}
	}
	if len(queues) > 0 {
		hint = "add one of " + strings.Join(queues, ", ")
	}
	return fmt.Errorf("config: %s: no queue plugin: nothing would take a message and every one would get 451; %s", file, hint)
}
