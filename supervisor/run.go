package supervisor

import (
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"loopmx/config"
)

// Options wire the supervisor to the rest of loopmx without importing it.
type Options struct {
	// ConfigDir is the directory given with -c ("" for the embedded
	// default); workers get the same.
	ConfigDir string
	// Exe is the path of the loopmx binary; workers are started from this
	// path, so a binary replaced on disk is picked up by new workers.
	Exe string
	// Load reads and fully validates the config (plugins included), for
	// HUP: a config that fails keeps the old one running.
	Load func() (*config.Config, error)
	// Listen opens a listening socket (loop.ListenFile).
	Listen func(addr string, backlog int, reuseport bool) (*os.File, error)
	// Log is the supervisor's logger.
	Log zerolog.Logger
}

// Run is the supervisor's main loop; it returns the process exit code.
func Run(cfg *config.Config, opts Options) int {
	opts.Log.Error().Err(errNotImplemented).Msg("nodes >= 1 needs the supervisor")
	return 1
}

// Doctor compares the running kernel's settings, the open-file limit and
// the config against what the config needs, prints what to change and
// why, and returns the exit code (0 when nothing needs changing).
func Doctor(cfg *config.Config, w io.Writer) int {
	fmt.Fprintln(w, errNotImplemented)
	return 1
}
