// Command loopmx is an inbound SMTP server (an MX) on event loops.
//
//	loopmx [-c DIR]                run in the foreground (embedded default config without -c)
//	loopmx check-config [-c DIR]   check a config directory as the server would, change nothing
//	loopmx doctor [-c DIR]         check kernel settings and limits against the config
//	loopmx --version               print the version
//	loopmx -h                      the usage, signals, environment and where the docs are
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
	"sync"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/logstamp"
	"loopmx/internal/metrics"
	"loopmx/internal/ticketkeys"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
	"loopmx/supervisor"

	// The built-in plugins register themselves.
	_ "loopmx/plugins/access"
	_ "loopmx/plugins/auth_results"
	_ "loopmx/plugins/dkim"
	_ "loopmx/plugins/dmarc"
	_ "loopmx/plugins/dnsbl"
	_ "loopmx/plugins/early_talker"
	_ "loopmx/plugins/fcrdns"
	_ "loopmx/plugins/greylist"
	_ "loopmx/plugins/headers"
	_ "loopmx/plugins/helo.checks"
	_ "loopmx/plugins/limit"
	_ "loopmx/plugins/mail_from.is_resolvable"
	_ "loopmx/plugins/milter"
	_ "loopmx/plugins/queue/discard"
	_ "loopmx/plugins/queue/lmtp"
	_ "loopmx/plugins/queue/maildir"
	_ "loopmx/plugins/queue/smtp_forward"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	_ "loopmx/plugins/rcpt_to.valid"
	_ "loopmx/plugins/rcpt_to.verify"
	_ "loopmx/plugins/results"
	_ "loopmx/plugins/rspamd"
	_ "loopmx/plugins/spf"
	_ "loopmx/plugins/toobusy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// helpText is what `loopmx -h` prints.
const helpText = `loopmx %s: an inbound SMTP server (an MX) on event loops

usage:
  loopmx [-c DIR]                run the server in the foreground
  loopmx check-config [-c DIR]   check DIR as the server would at start, change nothing,
                                 print the effective settings
  loopmx doctor [-c DIR]         compare kernel settings, limits and the config's needs
  loopmx --version               print the version
  loopmx COMMAND -h              help on one command

  -c DIR  the config directory: smtp.ini, plugins, host_list, one <plugin>.ini per
          plugin, tls.ini, redis.ini. Without -c the built-in default runs:
          127.0.0.1:2525, mail for localhost and example.com stored in ./var/spool.

signals (with nodes >= 1, send them to the supervisor, the main pid):
  TERM, INT  stop accepting; open transactions may finish within graceful_timeout;
             exit 0. A second one exits at once.
  HUP        nodes = 0: reload the config (plugins, their files, protocol
             settings, certificates) for new connections.
             nodes >= 1: re-read the whole config, replace the workers one at a time.
  USR2       nodes >= 1: run the binary on disk in place (same pid) and replace
             the workers one at a time.

environment:
  UV_THREADPOOL_SIZE  threads for the hooks that block (DNS, Redis, disk), 1..128;
                      overrides threadpool_size of smtp.ini.

documentation: README.md and docs/ in the source tree (config.md lists every
smtp.ini key; plugins.md, supervisor.md, tls.md, protocol.md, metrics.md), each plugin's
README.md, and contrib/config, a commented example directory. Installed as
contrib/systemd/loopmx.service says, docs/ is in /usr/local/share/doc/loopmx.
`

// checkConfigHelp is what `loopmx check-config -h` prints.
const checkConfigHelp = `usage: loopmx check-config [-c DIR]

Checks the config directory as the server does at start, without starting
it: smtp.ini, the plugins file and each plugin's settings, whether a queue
plugin takes the mail, the spool and whether the user the server runs as
can write it, tls.ini with its certificate and key files, redis.ini. It
changes nothing on disk and connects to nothing. It prints the effective
settings, what the plugins will do at start (such as creating the spool,
and as which user), then "config OK".

Exit status: 0 when the server would start on DIR; 1 with one line naming
the file, key and value at fault; 2 for a bad command line.

  -c DIR  the config directory (default: the built-in default config)
`

// doctorHelp is what `loopmx doctor -h` prints.
const doctorHelp = `usage: loopmx doctor [-c DIR]

Compares this machine with what the config needs, and says what to change
and why: the checks of check-config, net.core.somaxconn and
tcp_max_syn_backlog against backlog, tcp_syncookies, the open-file limit,
fs.nr_open and fs.file-max against max_connections and nodes, buffer
maxima against recv_buffer / send_buffer, tcp_migrate_req for
sched_policy = reuseport, the local port range for forwarding queues, and
the user of smtp.ini. Each line is OK, CHANGE (with why and the fix) or
UNKNOWN. Run it as the user the service runs as: the open-file limit it
reads is its own. docs/supervisor.md describes every check.

Exit status: 0 when nothing needs changing, 1 otherwise, 2 for a bad
command line.

  -c DIR  the config directory (default: the built-in default config)
`

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	help := fmt.Sprintf(helpText, version)
	switch cmd {
	case "serve", "version":
	case "help":
		fmt.Fprint(stdout, help)
		return 0
	case "check-config":
		help = checkConfigHelp
	case "doctor":
		help = doctorHelp
	default:
		fmt.Fprintf(stderr, "loopmx: unknown command %q; loopmx -h lists the commands\n", cmd)
		return 2
	}
	fs := flag.NewFlagSet("loopmx", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // -h prints help below; a bad flag gets one line
	dir := fs.String("c", "", "config directory")
	var showVersion *bool
	if cmd == "serve" {
		showVersion = fs.Bool("version", false, "print the version and exit")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, help)
			return 0
		}
		fmt.Fprintln(stderr, "loopmx -h shows the usage")
		return 2
	}
	if cmd == "version" || showVersion != nil && *showVersion {
		fmt.Fprintf(stdout, "loopmx %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loopmx: unexpected argument %q; loopmx -h shows the usage\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(*dir)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	switch cmd {
	case "doctor":
		return supervisor.Doctor(cfg, stdout, func() error {
			chain, _, err := prepare(cfg)
			if err == nil {
				chain.Close()
			}
			return err
		})
	case "check-config":
		chain, tlsConf, err := prepare(cfg)
		if err == nil && tlsConf != nil && tlsConf.Tickets.File != "" {
			// The server reads it at start (the supervisor, or the
			// process alone); workers get the keys from the supervisor.
			if _, err = ticketkeys.ReadFile(tlsConf.Tickets.File); err != nil {
				chain.Close()
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		plans := chain.Plans()
		chain.Close()
		fmt.Fprint(stdout, cfg.Summary())
		if len(plans) > 0 {
			fmt.Fprintf(stdout, "\n# at start\n")
			for _, p := range plans {
				fmt.Fprintln(stdout, p)
			}
		}
		fmt.Fprintln(stdout, "config OK")
		return 0
	}
	w, isWorker, err := supervisor.WorkerEnv()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if isWorker {
		return serve(cfg, stderr, sockets{files: w.Listeners, specs: w.Specs, ready: w.Ready, worker: w.ID, tickets: w.TicketKeys, metrics: w.MetricsChannel()})
	}
	if cfg.Main.Nodes >= 1 {
		return superviseRun(cfg, *dir, stderr)
	}
	// One process, no supervisor: systemd may have opened the sockets.
	files, specs := supervisor.SystemdListeners()
	return serve(cfg, stderr, sockets{files: files, specs: specs, ready: func() { supervisor.Notify("READY=1") }})
}

func loadConfig(dir string) (*config.Config, error) {
	if dir == "" {
		return config.Default(os.LookupEnv)
	}
	return config.Load(dir, os.LookupEnv)
}

// prepare checks everything the server checks before it serves, and
// changes nothing on the system: it builds the plugin chain (each
// factory validates its settings), makes sure the chain can deliver, and
// loads tls.ini with its certificate and key files. check-config, doctor,
// the supervisor (at start and for a reload) and the server itself all
// go through it. The caller owns the chain and closes it.
func prepare(cfg *config.Config) (*plugins.Chain, *loop.TLSConfig, error) {
	chain, err := plugins.Build(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := plugins.CheckDelivers(cfg, chain); err != nil {
		chain.Close()
		return nil, nil, err
	}
	tlsConf, err := loop.LoadTLS(cfg)
	if err == nil && tlsConf == nil && len(cfg.Main.SMTPSListen) > 0 {
		// loop.New refuses the same; saying it here lets check-config
		// and a supervisor see it before any socket is bound.
		err = fmt.Errorf("config: smtp.ini: [main] smtps_listen: %q speaks TLS from the first byte and needs a certificate: tls.ini sets no cert and key",
			strings.Join(cfg.Main.SMTPSListen, ", "))
	}
	if err != nil {
		chain.Close()
		return nil, nil, err
	}
	return chain, tlsConf, nil
}

// isTerminal reports whether w is a terminal. go-isatty is the check
// zerolog's console writer already depends on; it knows each system's
// ioctl (TCGETS on Linux, TIOCGETA on the BSDs and macOS).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

// logSink is the writer a logger on w writes its lines to: w itself for
// the json format, a console writer over w for the console format, with
// colours only when w is a terminal, so a log file or journal gets plain
// text.
func logSink(cfg *config.Config, w io.Writer) io.Writer {
	if cfg.Log.Format == "console" {
		return zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !isTerminal(w)}
	}
	return w
}

// newLogger logs to w as [log] says.
func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	w = logSink(cfg, w)
	lvl, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Int("pid", os.Getpid()).Logger().Hook(logstamp.Hook{})
}

// superviseRun runs this process as the supervisor of cfg.Main.Nodes
// worker processes. It refuses to start on a config its workers would
// refuse, before it binds anything.
func superviseRun(cfg *config.Config, dir string, stderr io.Writer) int {
	log := newLogger(cfg, stderr).With().Str("role", "supervisor").Str("version", version).Logger()
	check := func(c *config.Config) error {
		chain, _, err := prepare(c)
		if err == nil {
			chain.Close()
		}
		return err
	}
	if err := check(cfg); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "loopmx: cannot find my own binary:", err)
		return 1
	}
	var observer supervisor.Observer
	if m := cfg.Main; m.MetricsListen != "" {
		sm := metrics.NewSupervisor(version, log)
		ep, err := metrics.Listen(m.MetricsListen, metrics.EndpointOptions{Gatherer: sm.Gatherer(), Ready: sm.Ready, Pprof: m.MetricsPprof, Log: log})
		if err != nil {
			log.Error().Err(err).Msg("supervisor cannot start")
			return 1
		}
		defer ep.Close()
		defer sm.Close()
		log.Info().Str("metrics_listen", ep.Addr()).Msg("metrics endpoint ready")
		observer = supervisorMetrics{sm}
	}
	return supervisor.Run(cfg, supervisor.Options{
		ConfigDir: dir,
		Exe:       exe,
		Load: func() (*config.Config, error) {
			c, err := loadConfig(dir)
			if err == nil {
				err = check(c)
			}
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		Listen:   loop.ListenFile,
		Log:      log,
		Observer: observer,
	})
}

// supervisorMetrics is the metrics endpoint as the supervisor's observer.
type supervisorMetrics struct{ *metrics.Supervisor }

// Sockets hands the supervisor's listening sockets to the endpoint.
func (m supervisorMetrics) Sockets(socks []supervisor.Socket) {
	out := make([]metrics.Socket, len(socks))
	for i, s := range socks {
		out[i] = metrics.Socket{Listener: s.Listener, Socket: s.Socket, FD: s.FD}
	}
	m.SetSockets(out)
}

// sockets are the listening sockets a server was handed, and what to do
// once it accepts.
type sockets struct {
	files  []*os.File        // from a supervisor or systemd; nil: bind the config's addresses
	specs  []config.Listener // what each of files is
	ready  func()            // called once the server accepts
	worker int               // the worker id under a supervisor, 0 alone
	// tickets are the supervisor's session-ticket keys, shared by all its
	// workers; nil alone, where the process keeps keys of its own.
	tickets *ticketkeys.Share
	metrics *os.File // a worker's metrics channel to its supervisor, or nil
}

// serve runs the SMTP server in this process: on listeners handed over by
// a supervisor or systemd, or on its own. It owns the plugin chain: it
// builds it, starts it once and closes it once, after the last
// connection is done with it.
func serve(cfg *config.Config, stderr io.Writer, socks sockets) int {
	log := newLogger(cfg, stderr)
	if socks.worker > 0 {
		log = log.With().Int("worker", socks.worker).Logger()
	}
	chain, tlsConf, err := prepare(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	code := serveChain(cfg, log, stderr, socks, &chain, tlsConf)
	if err := chain.Close(); err != nil {
		log.Warn().Err(err).Msg("closing plugins")
	}
	if code == 0 {
		log.Info().Msg("stopped")
	}
	return code
}

// serveChain starts the plugins and the event loops, serves until TERM
// (or INT when alone) and drains. It leaves the chain open.
func serveChain(cfg *config.Config, log zerolog.Logger, stderr io.Writer, socks sockets, current **plugins.Chain, tlsConf *loop.TLSConfig) int {
	chain := *current
	if err := chain.Start(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	defer pool.Close()
	opts := loop.OptionsFrom(cfg, log)
	opts.LogOut = logSink(cfg, stderr)
	opts.Listeners = socks.files
	if len(socks.specs) > 0 {
		opts.Specs = socks.specs
	}
	opts.TLS = tlsConf
	opts.Metrics = socks.metrics != nil || (socks.worker == 0 && cfg.Main.MetricsListen != "")
	local, err := startTickets(log, socks, tlsConf)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	srv, err := loop.New(opts, chain, pool)
	if err != nil {
		log.Error().Err(err).Msg("cannot listen")
		return 1
	}
	if err := srv.Start(); err != nil {
		log.Error().Err(err).Msg("cannot start event loops")
		return 1
	}
	stopMetrics, err := serveMetrics(cfg, log, srv, socks)
	if err != nil {
		log.Error().Err(err).Msg("cannot serve metrics")
		return 1
	}
	defer stopMetrics()
	// Signals are handled from here on, before the server says it is
	// ready: a HUP or TERM sent the moment it is ready must not find the
	// default action (exit) in place.
	// HUP (nodes = 0) reloads the config: new connections get the new
	// plugin chain and protocol settings, open ones finish on theirs; the
	// TLS certificates are reloaded in place. Under a supervisor, it does
	// a rolling reload of the workers instead.
	hups := make(chan os.Signal, 1)
	if socks.worker == 0 {
		signal.Notify(hups, syscall.SIGHUP)
	}
	if socks.worker == 0 {
		// systemd's watchdog (WatchdogSec) for a single process: the
		// supervisor pings for its workers, this process for itself.
		if tick := supervisor.WatchdogTicker(); tick != nil {
			go func() {
				for range tick {
					supervisor.Notify("WATCHDOG=1")
				}
			}()
		}
	}
	var mu sync.Mutex // guards *current against the shutdown below
	go func() {
		for range hups {
			supervisor.Notify("RELOADING=1")
			mu.Lock()
			if next, err := reloadChain(cfg, log, srv, tlsConf, local, *current); err == nil {
				*current = next
			}
			mu.Unlock()
			supervisor.Notify("READY=1")
		}
	}()
	sigs := make(chan os.Signal, 2)
	if socks.worker > 0 {
		// The supervisor handles a terminal's Ctrl-C and hang-up and tells
		// its workers with TERM (they share its process group).
		signal.Ignore(syscall.SIGINT, syscall.SIGHUP)
		signal.Notify(sigs, syscall.SIGTERM)
	} else {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	}
	addrs := make([]string, 0, len(srv.Addrs()))
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Info().Strs("listen", addrs).Int("loops", cfg.Main.Loops).Int("threadpool_size", pool.Workers()).Bool("starttls", tlsConf != nil).
		Strs("plugins", chain.Names()).Str("config", cfgName(cfg)).Str("version", version).Msg("loopmx ready")
	socks.ready()

	sig := <-sigs
	log.Info().Str("signal", sig.String()).Dur("graceful_timeout_ms", cfg.Main.GracefulTimeout).
		Msg("stopping: no new connections, open transactions may finish")
	go func() {
		s := <-sigs
		log.Warn().Str("signal", s.String()).Msg("second signal: exiting now")
		os.Exit(1)
	}()
	if socks.worker == 0 {
		supervisor.Notify("STOPPING=1")
		if g := cfg.Main.DrainGrace; g > 0 {
			// A load balancer's health check sees /readyz fail and stops
			// sending new clients; those it sent meanwhile are served.
			srv.Leave()
			log.Info().Dur("drain_grace_ms", g).Msg("not ready: serving new connections for drain_grace, then draining")
			time.Sleep(g)
		}
	}
	signal.Stop(hups)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Main.GracefulTimeout)
	srv.Shutdown(ctx)
	cancel()
	mu.Lock() // a reload in progress finishes first
	defer mu.Unlock()
	return 0
}

// reloadChain reads the config directory again (HUP with nodes = 0) and
// gives the server a new plugin chain and protocol settings for new
// connections. A config the server would refuse is logged and the old one
// stays in force. Settings that only a restart can change (listeners,
// loops, workpool, connection limits, timeouts) are named in a warning.
func reloadChain(cfg *config.Config, log zerolog.Logger, srv *loop.Server, tlsConf *loop.TLSConfig, tickets *ticketkeys.Local, prev *plugins.Chain) (*plugins.Chain, error) {
	dir := cfg.Dir
	if cfg.Embedded {
		dir = ""
	}
	next, err := loadConfig(dir)
	var chain *plugins.Chain
	if err == nil {
		chain, _, err = prepare(next)
	}
	if err == nil && tickets != nil {
		// A key file that cannot be read fails the reload, as under a
		// supervisor; the keys in use stay.
		if err = reloadTickets(next, tickets); err != nil {
			chain.Close()
		}
	}
	if err == nil {
		if err = chain.Start(); err != nil {
			chain.Close()
		}
	}
	if err != nil {
		log.Error().Err(err).Msg("SIGHUP: config not reloaded; the running one stays in force")
		return nil, err
	}
	if tlsConf != nil {
		if err := tlsConf.Reload(); err != nil {
			log.Error().Err(err).Msg("SIGHUP: certificates not reloaded; the old ones stay in use")
		} else {
			log.Info().Msg("SIGHUP: TLS certificates reloaded")
		}
	}

	opts := loop.OptionsFrom(next, log)
	if err := srv.Reload(chain, opts.Proto, func() {
		if err := prev.Close(); err != nil {
			log.Warn().Err(err).Msg("closing the plugins of the previous config")
		}
	}); err != nil {
		chain.Close()
		log.Error().Err(err).Msg("SIGHUP: config not reloaded; the running one stays in force")
		return nil, err
	}
	if changed := restartOnly(cfg, next); len(changed) > 0 {
		log.Warn().Strs("keys", changed).Msg("SIGHUP: these smtp.ini settings take effect only after a restart")
	}
	log.Info().Strs("plugins", chain.Names()).Msg("SIGHUP: config reloaded; new connections use it, open ones finish on the old one")
	return chain, nil
}

// restartOnly lists the smtp.ini keys that differ between the config the
// server started with and next, and that a reload cannot apply.
func restartOnly(started, next *config.Config) []string {
	a, b := started.Main, next.Main
	var keys []string
	add := func(differ bool, key string) {
		if differ {
			keys = append(keys, key)
		}
	}
	add(fmt.Sprint(a.Listeners()) != fmt.Sprint(b.Listeners()), "listen/smtps_listen/proxy_listen")
	add(a.Loops != b.Loops, "loops")
	add(a.ThreadpoolSize != b.ThreadpoolSize, "threadpool_size")
	add(a.MaxConnections != b.MaxConnections, "max_connections")
	add(a.MaxConnectionsPerIP != b.MaxConnectionsPerIP, "max_connections_per_ip")
	add(a.InactivityTimeout != b.InactivityTimeout, "inactivity_timeout")
	add(a.MaxPipelineBuffer != b.MaxPipelineBuffer, "max_pipeline_buffer")
	add(fmt.Sprint(a.ProxyTrusted) != fmt.Sprint(b.ProxyTrusted), "proxy_trusted")
	add(a.Nodes != b.Nodes, "nodes")
	add(a.MetricsListen != b.MetricsListen || a.MetricsPprof != b.MetricsPprof, "metrics_listen/metrics_pprof")
	return keys
}

// startTickets installs the TLS session-ticket keys before the server
// accepts: a worker follows its supervisor's shared set, a process alone
// keeps its own (generated and rotated, or read from ticket_key_file)
// and returns it for reloads.
func startTickets(log zerolog.Logger, socks sockets, tlsConf *loop.TLSConfig) (*ticketkeys.Local, error) {
	if tlsConf == nil || tlsConf.Tickets.Disabled {
		return nil, nil
	}
	if socks.tickets != nil {
		return nil, socks.tickets.Follow(tlsConf.SetTicketKeys, func(err error) {
			log.Error().Err(err).Msg("cannot read the supervisor's session-ticket keys; the ones in use stay")
		})
	}
	return ticketkeys.StartLocal(tlsConf.Tickets, tlsConf.SetTicketKeys)
}

// reloadTickets gives a process alone the ticket settings of next.
func reloadTickets(next *config.Config, tickets *ticketkeys.Local) error {
	p, err := ticketkeys.PolicyFrom(next)
	if err != nil {
		return err
	}
	return tickets.Reload(p)
}

func cfgName(cfg *config.Config) string {
	if cfg.Embedded {
		return "(embedded default)"
	}
	return cfg.Dir
}

// serveMetrics starts what the metrics need once srv runs: the endpoint
// of a single process (metrics_listen), or a worker's answers to its
// supervisor. The function returned runs after the drain: a worker sends
// its final counts, the endpoint closes.
func serveMetrics(cfg *config.Config, log zerolog.Logger, srv *loop.Server, socks sockets) (func(), error) {
	if socks.metrics != nil {
		reg := metrics.NewRegistry(metrics.Options{Version: version, Source: srv})
		ch, err := metrics.ServeWorker(socks.metrics, reg)
		if err != nil {
			return nil, err
		}
		return func() { ch.Final(); reg.Close() }, nil
	}
	m := cfg.Main
	if socks.worker > 0 || m.MetricsListen == "" {
		return func() {}, nil
	}
	reg := metrics.NewRegistry(metrics.Options{Version: version, Source: srv, Sockets: srv.MetricsSockets, Host: true})
	ep, err := metrics.Listen(m.MetricsListen, metrics.EndpointOptions{Gatherer: reg, Ready: srv.Ready, Pprof: m.MetricsPprof, Log: log})
	if err != nil {
		reg.Close()
		return nil, err
	}
	log.Info().Str("metrics_listen", ep.Addr()).Msg("metrics endpoint ready")
	return func() { ep.Close(); reg.Close() }, nil
}
