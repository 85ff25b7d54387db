// Package plugins is the contract between loopmx and its plugins: the hook
// interfaces, the Result a hook returns, the registry filled by init()
// functions, and the Chain that runs hooks in the order of the `plugins`
// config file.
//
// A plugin is a value with a Name and any of the hook interfaces below.
// Hooks that may wait (DNS, Redis, disk, network) must say so through
// Blocker; the event loop then runs them, and every hook after them in the
// same chain, on the bounded workpool. All other hooks run inline on the
// event loop and must finish in microseconds.
package plugins

import (
	"sort"
	"sync"

	"loopmx/config"
)

// Plugin is anything registered under a name.
type Plugin interface {
	Name() string
}

// Blocker is implemented by plugins that have hooks which may wait.
type Blocker interface {
	// Blocks reports whether the plugin's hook h may wait for I/O.
	Blocks(h Hook) bool
}

// ConnBlocker refines Blocker per call: a plugin whose hook blocks only
// sometimes (a DNS lookup that the cache or an address rule can answer)
// says for this connection whether it will wait. It is asked on the event
// loop right before the hook runs and must answer in microseconds. It is
// consulted only for hooks that Blocks reports as blocking.
type ConnBlocker interface {
	BlocksConn(c *Conn, h Hook) bool
}

// Closer is implemented by plugins holding resources to release at exit.
type Closer interface {
	Close() error
}

// Factory builds a plugin from the config directory. It reads its own
// <name>.ini through cfg.Plugin and reports bad settings as errors that name
// file, key and value.
type Factory func(cfg *config.Config) (Plugin, error)

var (
	regMu    sync.Mutex
	registry = map[string]Factory{}
)

// Register makes a plugin available under name. It is called from init()
// and panics on a duplicate name, which is a programming error.
func Register(name string, f Factory) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("plugins: duplicate registration of " + name)
	}
	registry[name] = f
}

// Registered lists the registered plugin names in sorted order.
func Registered() []string {
	regMu.Lock()
	defer regMu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func lookup(name string) (Factory, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	f, ok := registry[name]
	return f, ok
}
