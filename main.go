// Command loopmx is an inbound SMTP server (an MX) on event loops.
//
//	loopmx [-c DIR]                run in the foreground (embedded default config without -c)
//	loopmx check-config [-c DIR]   validate a config directory and print the effective settings
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

	// The built-in plugins register themselves.
	_ "loopmx/plugins/queue/discard"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/rcpt_to.in_host_list"
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
		fmt.Fprintf(stderr, "usage:\n  loopmx [-c DIR]               run the server in the foreground\n  loopmx check-config [-c DIR]  validate a config directory and print the effective settings\n  loopmx --version\n\nflags:\n")
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
		return serve(cfg, stderr)
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

func serve(cfg *config.Config, stderr io.Writer) int {
	log := newLogger(cfg, stderr)
	chain, err := plugins.Build(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer chain.Close()
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	srv, err := loop.New(loop.OptionsFrom(cfg, log), chain, pool)
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
	log.Info().Strs("listen", addrs).Int("loops", cfg.Main.Loops).Int("threadpool_size", pool.Workers()).
		Strs("plugins", chain.Names()).Str("config", cfgName(cfg)).Str("version", version).Msg("loopmx ready")

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	sig := <-sigs
	log.Info().Str("signal", sig.String()).Dur("graceful_timeout", cfg.Main.GracefulTimeout).
		Msg("stopping: no new connections, open transactions may finish")
	go func() {
		s := <-sigs
		log.Warn().Str("signal", s.String()).Msg("second signal: exiting now")
		os.Exit(1)
	}()
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
