package supervisor

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

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
	// Observer, when set, hears what the supervisor does, and every
	// worker gets a metrics channel (EnvMetricsFD) whose other end goes
	// to Observer.WorkerStarted.
	Observer Observer
}

// supervisorSignals are the signals the supervisor acts on: TERM and INT
// drain and stop, HUP reloads, USR2 replaces the binary.
var supervisorSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2}

// Run is the supervisor's main loop; it returns the process exit code.
//
// It opens the listeners (or takes systemd's, or the previous image's
// after a USR2), starts cfg.Main.Nodes workers and keeps them running
// until TERM or INT.
func Run(cfg *config.Config, opts Options) int {
	sigs := handoffSignals
	if sigs == nil {
		sigs = make(chan os.Signal, 8)
		signal.Notify(sigs, supervisorSignals...)
	}
	defer signal.Stop(sigs)
	s, err := newSup(cfg, opts, sigs)
	if err != nil {
		opts.Log.Error().Err(err).Msg("supervisor cannot start")
		return 1
	}
	return s.run()
}

// event is something a helper goroutine reports to the main goroutine.
type event struct {
	kind   eventKind
	proc   *proc
	slot   *slot
	status syscall.WaitStatus
	err    error
}

type eventKind uint8

const (
	evReady   eventKind = iota + 1 // proc wrote READY
	evExit                         // proc exited (status, err)
	evRestart                      // slot's restart delay is over
	evKill                         // proc's drain time is over
)

// sup is the supervisor's state. Everything in it belongs to the main
// goroutine (run and what it calls).
type sup struct {
	cfg     *config.Config // the config of the current workers
	opts    Options
	log     zerolog.Logger
	socks   *sockets
	cred    *syscall.Credential
	devnull *os.File

	slots  []*slot       // slots[i].id == i+1
	procs  map[int]*proc // every live worker, current or retiring, by pid
	gen    int
	images int // binaries run in place: 1, +1 per USR2

	events chan event
	sigs   <-chan os.Signal
	done   chan struct{} // closed when run returns

	watchdog <-chan time.Time
	tickets  *tickets
	ticketFD int // after a USR2: the previous image's shared ticket keys, else -1

	announced   bool      // READY=1 was sent for the first generation
	adopted     bool      // this image took over from the previous one (USR2)
	failed      error     // a first-generation worker could not start
	stopSig     os.Signal // TERM or INT received: drain and exit
	forceSig    os.Signal // a second TERM or INT: exit now
	wantReload  bool
	wantUpgrade bool

	// Timings, shortened by tests.
	backoffMin   time.Duration
	stableAfter  time.Duration
	readyTimeout time.Duration // a new worker of a reload must be ready within it
	stopMargin   time.Duration // grace beyond graceful_timeout before SIGKILL
}

// newSup prepares a supervisor: the listeners, the user workers run as,
// and, after a USR2, the workers of the previous image.
func newSup(cfg *config.Config, opts Options, sigs <-chan os.Signal) (*sup, error) {
	s := &sup{
		cfg:          cfg,
		opts:         opts,
		log:          opts.Log,
		procs:        map[int]*proc{},
		events:       make(chan event, 64),
		sigs:         sigs,
		done:         make(chan struct{}),
		backoffMin:   backoffMin,
		stableAfter:  stableAfter,
		readyTimeout: 30 * time.Second,
		stopMargin:   5 * time.Second,
		ticketFD:     -1,
	}
	if cfg.Main.Nodes < 1 {
		return nil, fmt.Errorf("supervisor: nodes = %d: a supervisor needs at least one worker", cfg.Main.Nodes)
	}
	var err error
	if s.cred, err = credentialFor(cfg.Main); err != nil {
		return nil, err
	}
	if cfg.Main.User != "" && s.cred == nil {
		s.log.Warn().Str("user", cfg.Main.User).Msg("smtp.ini sets user, but loopmx does not run as root: workers run as the current user")
	}
	if s.cred != nil && cfg.Main.SpoolAfter > 0 {
		// The workers spill bodies into spool_dir as the user; create it
		// for them, as root, when it is missing.
		if err := makeDirFor(cfg.Path(cfg.Main.SpoolDir), int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, fmt.Errorf("config: smtp.ini: [main] spool_dir = %s: %w", cfg.Main.SpoolDir, err)
		}
	}
	if s.devnull, err = os.Open(os.DevNull); err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	if h, ok, err := takeHandoff(); ok {
		if err == nil {
			err = s.adopt(h)
		}
		if err != nil {
			s.devnull.Close()
			return nil, err
		}
	} else {
		m := cfg.Main
		files, specs := SystemdListeners()
		s.socks, err = openSockets(m.Listeners(), m.Backlog, m.SchedPolicy == "reuseport", m.Nodes, opts.Listen, files, specs)
		if err != nil {
			s.devnull.Close()
			return nil, err
		}
		for id := 1; id <= m.Nodes; id++ {
			s.slots = append(s.slots, &slot{id: id})
		}
	}
	if err := s.startTickets(cfg, s.ticketFD); err != nil {
		s.socks.close()
		s.devnull.Close()
		return nil, err
	}
	s.images++
	s.publishSockets()
	if s.socks.systemd && cfg.Main.SchedPolicy == "reuseport" {
		s.log.Warn().Msg("sched_policy = reuseport is not possible with systemd's sockets: every worker shares them")
	}
	s.watchdog = WatchdogTicker()
	return s, nil
}

// run starts the workers and serves signals and events until the stop.
func (s *sup) run() int {
	defer close(s.done)
	defer s.devnull.Close()
	defer s.socks.close()

	if !s.adopted {
		s.gen = 1
	}
	src := "bound"
	switch {
	case s.adopted:
		src = "previous image"
	case s.socks.systemd:
		src = "systemd"
	}
	s.log.Info().Int("nodes", len(s.slots)).Bool("reuseport", s.socks.reuseport).Strs("listen", specStrings(s.socks.specs)).
		Str("sockets", src).Int("generation", s.gen).Msg("supervisor started")

	if s.adopted {
		s.rolledOut("upgrade", s.rollout(s.cfg, "upgrade"))
		s.notify(readyState(s))
	} else {
		for _, sl := range s.slots {
			p, err := s.spawn(sl, s.gen, s.cfg.Main.GracefulTimeout, s.cred)
			if err != nil {
				s.failed = err
				break
			}
			sl.cur = p
		}
	}
	for {
		switch {
		case s.failed != nil:
			s.log.Error().Err(s.failed).Msg("workers cannot start; stopping")
			s.stop()
			return 1
		case s.stopSig != nil:
			return s.stop()
		case s.wantUpgrade && s.announced:
			s.wantUpgrade = false
			s.upgrade()
		case s.wantReload && s.announced:
			s.wantReload = false
			s.reload()
		default:
			s.pump(nil)
		}
	}
}

// pump waits for one signal, event or watchdog tick and handles it. It
// reports true when timeout fired first.
func (s *sup) pump(timeout <-chan time.Time) bool {
	select {
	case sig := <-s.sigs:
		s.onSignal(sig)
	case ev := <-s.events:
		s.handle(ev)
	case <-s.watchdog:
		s.notify("WATCHDOG=1")
	case <-s.ticketTimer():
		s.rotateTickets()
	case <-timeout:
		return true
	}
	return false
}

// onSignal records what a signal asks for; run acts on it when what it
// is doing allows.
func (s *sup) onSignal(sig os.Signal) {
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT:
		if s.stopSig != nil {
			s.forceSig = sig
			return
		}
		s.stopSig = sig
	case syscall.SIGHUP:
		s.log.Info().Msg("SIGHUP: reload queued")
		s.wantReload = true
	case syscall.SIGUSR2:
		s.log.Info().Msg("SIGUSR2: binary upgrade queued")
		s.wantUpgrade = true
	}
}

// send hands an event from a helper goroutine to the main goroutine.
func (s *sup) send(ev event) {
	select {
	case s.events <- ev:
	case <-s.done:
	}
}

func (s *sup) handle(ev event) {
	defer s.observe()
	p := ev.proc
	switch ev.kind {
	case evReady:
		if p.exited || p.ready {
			return
		}
		p.ready = true
		s.log.Info().Int("worker", p.id).Int("worker_pid", p.pid).Int("generation", p.gen).
			Dur("startup_ms", time.Since(p.started)).Msg("worker ready")
		s.announceFirst()
	case evExit:
		s.onExit(p, ev.status, ev.err)
	case evRestart:
		s.onRestart(ev.slot)
	case evKill:
		if !p.exited {
			s.log.Warn().Int("worker", p.id).Int("worker_pid", p.pid).Dur("graceful_timeout_ms", p.graceful).
				Msg("worker still running after its drain time; sending SIGKILL")
			p.handle.Signal(syscall.SIGKILL)
		}
	}
}

// announceFirst tells systemd READY=1 once every worker of the first
// generation accepts.
func (s *sup) announceFirst() {
	if s.announced {
		return
	}
	for _, sl := range s.slots {
		if sl.cur == nil || !sl.cur.ready {
			return
		}
	}
	s.announced = true
	s.log.Info().Int("workers", len(s.slots)).Msg("all workers ready")
	s.notify(readyState(s))
}

// onExit books a worker's exit and replaces it when it was not asked to go.
func (s *sup) onExit(p *proc, ws syscall.WaitStatus, err error) {
	p.exited = true
	delete(s.procs, p.pid)
	if p.kill != nil {
		p.kill.Stop()
	}
	status, code, sig := exitFields(ws, err)
	var sl *slot
	if p.id <= len(s.slots) && s.slots[p.id-1].cur == p {
		sl = s.slots[p.id-1]
		sl.cur = nil
	}
	lvl := zerolog.InfoLevel
	msg := "worker stopped"
	switch {
	case p.retiring || (s.stopSig != nil && sl != nil):
		// A planned stop (TERM, a reload or an upgrade replacing it)
		// ends with exit code 0; anything else went wrong on the way out.
		if code != 0 {
			lvl, msg = zerolog.WarnLevel, "worker stopped with an error"
		}
	case sl == nil:
		lvl, msg = zerolog.WarnLevel, "worker exited"
	default:
		lvl, msg = zerolog.ErrorLevel, "worker exited unexpectedly"
	}
	e := s.log.WithLevel(lvl).Int("worker", p.id).Int("worker_pid", p.pid).Int("generation", p.gen).
		Str("status", status).Dur("uptime_ms", time.Since(p.started).Round(time.Millisecond))
	if code >= 0 {
		e = e.Int("exit_code", code)
	}
	if sig != "" {
		e = e.Str("signal", sig)
	}
	e.Msg(msg)

	if sl == nil || p.retiring || s.stopSig != nil {
		return
	}
	if !s.announced && !p.ready {
		s.failed = fmt.Errorf("supervisor: worker %d %s before it was ready", p.id, status)
		return
	}
	if o := s.opts.Observer; o != nil {
		o.WorkerCrashed(p.id, p.pid)
	}
	s.scheduleRestart(sl, time.Since(p.started))
}

// scheduleRestart restarts sl after the backoff its recent deaths earn.
func (s *sup) scheduleRestart(sl *slot, uptime time.Duration) {
	if uptime >= s.stableAfter {
		sl.failures = 0
	}
	delay := backoff(sl.failures, s.backoffMin, s.cfg.Main.RestartBackoffMax)
	sl.failures++
	if delay >= time.Second && s.socks.closeSlot(sl.id) {
		// reuseport: do not let the kernel queue connections on a socket
		// nobody will accept from for a while; the other workers take them.
		s.log.Info().Int("worker", sl.id).Msg("closed this worker's reuseport sockets until it is back")
		s.publishSockets()
	}
	s.log.Info().Int("worker", sl.id).Dur("delay_ms", delay).Int("failures", sl.failures).Msg("restarting worker")
	if sl.restart != nil {
		sl.restart.Stop()
	}
	sl.restart = time.AfterFunc(delay, func() { s.send(event{kind: evRestart, slot: sl}) })
}

func (s *sup) onRestart(sl *slot) {
	sl.restart = nil
	if s.stopSig != nil || sl.cur != nil || sl.id > len(s.slots) || s.slots[sl.id-1] != sl {
		return
	}
	p, err := s.spawn(sl, s.gen, s.cfg.Main.GracefulTimeout, s.cred)
	if err != nil {
		s.log.Error().Err(err).Int("worker", sl.id).Msg("cannot restart worker")
		s.scheduleRestart(sl, 0)
		return
	}
	sl.cur = p
	if o := s.opts.Observer; o != nil {
		o.WorkerRestarted(sl.id)
	}
}

// stop drains every worker: TERM, then up to graceful_timeout plus a
// margin for them to finish, then SIGKILL. A second TERM or INT kills
// them at once.
func (s *sup) stop() int {
	sig := s.stopSig
	if sig == nil {
		sig = syscall.SIGTERM
	}
	s.log.Info().Str("signal", sig.String()).Dur("graceful_timeout_ms", s.cfg.Main.GracefulTimeout).
		Int("workers", len(s.procs)).Msg("stopping: draining workers")
	s.notify("STOPPING=1")
	if g := s.cfg.Main.DrainGrace; g > 0 && s.forceSig == nil {
		s.graceBeforeDrain(g)
	}
	wait := s.cfg.Main.GracefulTimeout
	for _, sl := range s.slots {
		if sl.restart != nil {
			sl.restart.Stop()
			sl.restart = nil
		}
	}
	for _, p := range s.procs {
		wait = max(wait, p.graceful)
		s.retire(p) // a worker that drains already gets no second TERM
		if p.kill != nil {
			p.kill.Stop() // one deadline for all, below
		}
	}
	// Let go of the sockets: once the last worker stops accepting, the
	// kernel refuses new clients (they try the next MX) instead of queueing
	// them where nobody accepts. systemd's sockets stay open in systemd.
	s.socks.close()
	s.publishSockets()
	if s.forceSig != nil {
		return s.killAll(s.forceSig)
	}
	deadline := time.NewTimer(wait + s.stopMargin)
	defer deadline.Stop()
	for len(s.procs) > 0 {
		select {
		case sig := <-s.sigs:
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				return s.killAll(sig)
			}
			s.log.Info().Str("signal", sig.String()).Msg("ignored while stopping")
		case ev := <-s.events:
			s.handle(ev)
		case <-s.watchdog:
			s.notify("WATCHDOG=1")
		case <-deadline.C:
			s.log.Warn().Int("workers", len(s.procs)).Msg("workers still running after graceful_timeout; sending SIGKILL")
			for _, p := range s.procs {
				p.handle.Signal(syscall.SIGKILL)
			}
			s.drainExits(5 * time.Second)
			s.log.Info().Msg("supervisor stopped")
			return 0
		}
	}
	s.log.Info().Msg("supervisor stopped")
	return 0
}

// killAll answers a second TERM or INT: SIGKILL to every worker, exit now.
func (s *sup) killAll(sig os.Signal) int {
	s.log.Warn().Str("signal", sig.String()).Int("workers", len(s.procs)).Msg("second signal: killing workers, exiting now")
	for _, p := range s.procs {
		p.handle.Signal(syscall.SIGKILL)
	}
	return 1
}

// drainExits handles exit events until no worker is left or d is over.
func (s *sup) drainExits(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for len(s.procs) > 0 {
		select {
		case ev := <-s.events:
			s.handle(ev)
		case <-t.C:
			return
		}
	}
}

// notify sends a state to systemd when it listens; a failure is logged,
// never fatal.
func (s *sup) notify(state string) {
	if _, err := Notify(state); err != nil {
		s.log.Warn().Err(err).Msg("sd_notify failed")
	}
}

// readyState is READY=1 with a STATUS line for systemctl status.
func readyState(s *sup) string {
	return fmt.Sprintf("READY=1\nSTATUS=%d workers, generation %d", len(s.slots), s.gen)
}

// reloadingState is RELOADING=1 with the monotonic time systemd expects
// alongside it (sd_notify(3)).
func reloadingState() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}

// WatchdogTicker ticks at half of systemd's WatchdogSec (WATCHDOG_USEC),
// or returns nil when the watchdog is off or meant for another process.
func WatchdogTicker() <-chan time.Time {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return nil
	}
	return time.NewTicker(time.Duration(usec) * time.Microsecond / 2).C
}

// makeDirFor creates dir and its missing parents (mode 0700) owned by
// uid:gid. Directories that exist are left as they are.
func makeDirFor(dir string, uid, gid int) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range missing {
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// graceBeforeDrain is smtp.ini's drain_grace: /readyz already says not
// ready (a stop is under way), and the workers go on serving new
// connections for g, so that a load balancer's health check takes this
// host out before its listeners close. Another TERM or INT ends the grace
// at once.
func (s *sup) graceBeforeDrain(g time.Duration) {
	s.observe()
	s.log.Info().Dur("drain_grace_ms", g).Msg("not ready: workers serve new connections for drain_grace, then drain")
	grace := time.NewTimer(g)
	defer grace.Stop()
	for {
		select {
		case sig := <-s.sigs:
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				s.log.Info().Str("signal", sig.String()).Msg("drain_grace cut short")
				return
			}
			s.log.Info().Str("signal", sig.String()).Msg("ignored while stopping")
		case ev := <-s.events:
			s.handle(ev)
		case <-s.watchdog:
			s.notify("WATCHDOG=1")
		case <-grace.C:
			return
		}
	}
}
