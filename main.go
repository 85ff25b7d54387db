// Command loopmx is an inbound SMTP server (an MX) on event loops.
//
//	loopmx [-c DIR]                run in the foreground (embedded default config without -c)
//	loopmx check-config [-c DIR]   validate a config directory and print the effective settings
//	loopmx doctor [-c DIR]         check kernel settings and limits against the config
//	loopmx --version               print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
	"loopmx/supervisor"

	// The built-in plugins register themselves.
	_ "loopmx/plugins/access"
	_ "loopmx/plugins/dnsbl"
	_ "loopmx/plugins/early_talker"
	_ "loopmx/plugins/headers"
	_ "loopmx/plugins/helo.checks"
	_ "loopmx/plugins/limit"
	_ "loopmx/plugins/queue/discard"
	_ "loopmx/plugins/queue/lmtp"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/queue/smtp_forward"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	_ "loopmx/plugins/results"
	_ "loopmx/plugins/toobusy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("loopmx", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("c", "", "config directory (default: the embedded default config)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage:\n  loopmx [-c DIR]               run the server in the foreground\n  loopmx check-config [-c DIR]  validate a config directory and print the effective settings\n  loopmx doctor [-c DIR]        check kernel settings and limits against the config\n  loopmx --version\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion || cmd == "version" {
		fmt.Fprintf(stdout, "loopmx %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loopmx: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(*dir)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	switch cmd {
	case "serve":
		w, isWorker, err := supervisor.WorkerEnv()
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if isWorker {
			return serve(cfg, stderr, w.Listeners, w.Ready, w.ID)
		}
		if cfg.Main.Nodes >= 1 {
			return superviseRun(cfg, *dir, stderr)
		}
		// One process, no supervisor: systemd may have opened the sockets.
		return serve(cfg, stderr, supervisor.SystemdListeners(), func() { supervisor.Notify("READY=1") }, 0)
	case "doctor":
		return supervisor.Doctor(cfg, stdout)
	case "check-config":
		chain, err := plugins.Build(cfg)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		chain.Close()
		fmt.Fprint(stdout, cfg.Summary())
		fmt.Fprintln(stdout, "config OK")
		return 0
	default:
		fmt.Fprintf(stderr, "loopmx: unknown command %q\n", cmd)
		fs.Usage()
		return 2
	}
}

func loadConfig(dir string) (*config.Config, error) {
	if dir == "" {
		return config.Default(os.LookupEnv)
	}
	return config.Load(dir, os.LookupEnv)
}

func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	if cfg.Log.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	lvl, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Int("pid", os.Getpid()).Logger()
}

// superviseRun runs this process as the supervisor of cfg.Main.Nodes
// worker processes.
func superviseRun(cfg *config.Config, dir string, stderr io.Writer) int {
	log := newLogger(cfg, stderr).With().Str("role", "supervisor").Str("version", version).Logger()
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "loopmx: cannot find my own binary:", err)
		return 1
	}
	return supervisor.Run(cfg, supervisor.Options{
		ConfigDir: dir,
		Exe:       exe,
		Load: func() (*config.Config, error) {
			c, err := loadConfig(dir)
			if err != nil {
				return nil, err
			}
			chain, err := plugins.Build(c)
			if err != nil {
				return nil, err
			}
			chain.Close()
			return c, nil
		},
		Listen: loop.ListenFile,
		Log:    log,
	})
}

// serve runs the SMTP server in this process: on listeners handed over by
// a supervisor or systemd, or on its own. ready is called once it accepts.
func serve(cfg *config.Config, stderr io.Writer, listeners []*os.File, ready func(), worker int) int {
	log := newLogger(cfg, stderr)
	if worker > 0 {
		log = log.With().Int("worker", worker).Logger()
	}
	chain, err := plugins.Build(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer chain.Close()
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	opts := loop.OptionsFrom(cfg, log)
	opts.Listeners = listeners
	tlsConf, err := loop.LoadTLS(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	opts.TLS = tlsConf
	srv, err := loop.New(opts, chain, pool)
	if err != nil {
		log.Error().Err(err).Msg("cannot listen")
		return 1
	}
	if err := srv.Start(); err != nil {
		log.Error().Err(err).Msg("cannot start event loops")
		return 1
	}
	addrs := make([]string, 0, len(srv.Addrs()))
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Info().Strs("listen", addrs).Int("loops", cfg.Main.Loops).Int("threadpool_size", pool.Workers()).Bool("starttls", tlsConf != nil).
		Strs("plugins", chain.Names()).Str("config", cfgName(cfg)).Str("version", version).Msg("loopmx ready")
	ready()

	// HUP reloads the TLS certificates in place (open connections keep
	// theirs). Everything else in the config needs a restart, or a
	// supervisor's rolling reload (nodes >= 1).
	hups := make(chan os.Signal, 1)
	if worker == 0 {
		signal.Notify(hups, syscall.SIGHUP)
	}
	go func() {
		for range hups {
			if tlsConf == nil {
				log.Info().Msg("SIGHUP: no TLS certificate to reload")
				continue
			}
			if err := tlsConf.Reload(); err != nil {
				log.Error().Err(err).Msg("SIGHUP: certificates not reloaded; the old ones stay in use")
				continue
			}
			log.Info().Msg("SIGHUP: TLS certificates reloaded")
		}
	}()
	sigs := make(chan os.Signal, 2)
	if worker > 0 {
		// The supervisor handles a terminal's Ctrl-C and hang-up and tells
		// its workers with TERM (they share its process group).
		signal.Ignore(syscall.SIGINT, syscall.SIGHUP)
		signal.Notify(sigs, syscall.SIGTERM)
	} else {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	}
	sig := <-sigs
	log.Info().Str("signal", sig.String()).Dur("graceful_timeout", cfg.Main.GracefulTimeout).
		Msg("stopping: no new connections, open transactions may finish")
	go func() {
		s := <-sigs
		log.Warn().Str("signal", s.String()).Msg("second signal: exiting now")
		os.Exit(1)
	}()
	if worker == 0 {
		supervisor.Notify("STOPPING=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Main.GracefulTimeout)
	srv.Shutdown(ctx)
	cancel()
	pool.Close()
	if err := chain.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		log.Warn().Err(err).Msg("closing plugins")
	}
	log.Info().Msg("stopped")
	return 0
}

func cfgName(cfg *config.Config) string {
	if cfg.Embedded {
		return "(embedded default)"
	}
	return cfg.Dir
}
