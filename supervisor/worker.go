package supervisor

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/config"
)

// proc is one worker process. Its fields are touched only by the
// supervisor's main goroutine; the goroutines that wait for the process
// report through events.
type proc struct {
	id       int // worker id, 1..nodes
	gen      int
	pid      int
	handle   *os.Process
	started  time.Time
	graceful time.Duration // graceful_timeout of the config it was started with

	ready    bool // it wrote READY (or was adopted from the previous image)
	retiring bool // we sent TERM: it drains and its exit is expected
	exited   bool
	kill     *time.Timer // SIGKILL if a retiring worker outlives its drain
}

// slot is one worker position: worker id N is always served by exactly
// one current process, which is replaced when it dies or on a reload.
type slot struct {
	id       int
	cur      *proc       // nil while a restart is pending
	failures int         // quick deaths in a row, for the backoff
	restart  *time.Timer // pending restart, or nil
}

// Restart pacing.
const (
	backoffMin  = 100 * time.Millisecond // first restart after a crash
	stableAfter = 30 * time.Second       // uptime that resets the backoff
)

// backoff is the wait before restarting a worker that died after
// failures quick deaths in a row: lo, 2*lo, 4*lo ... capped at hi.
func backoff(failures int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 0; i < failures && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// envNotForWorkers are variables of the supervisor's own environment that
// a worker must not see: systemd talks to the supervisor only, and the
// contract variables are set afresh for each worker.
var envNotForWorkers = []string{
	"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
	EnvRole, EnvWorkerID, EnvGeneration, EnvListenFDs, EnvListenSpec, EnvReadyFD, EnvTicketKeysFD, EnvMetricsFD, envHandoff,
}

// workerEnviron returns base without envNotForWorkers, plus the worker
// contract for worker id of generation gen with n listeners at fds 3..
// (described by specs when there are any), the ready pipe right after
// them, when tickets is set, the shared session-ticket keys after it and,
// when metrics is set, the metrics channel last.
func workerEnviron(base []string, id, gen, n int, specs []config.Listener, tickets, metrics bool) []string {
	env := withoutVars(base, envNotForWorkers...)
	env = append(env,
		EnvRole+"=worker",
		EnvWorkerID+"="+strconv.Itoa(id),
		EnvGeneration+"="+strconv.Itoa(gen),
		EnvListenFDs+"="+strconv.Itoa(n),
		EnvReadyFD+"="+strconv.Itoa(3+n),
	)
	if len(specs) > 0 {
		env = append(env, EnvListenSpec+"="+strings.Join(specStrings(specs), ","))
	}
	next := 4 + n // the first descriptor after the ready pipe
	if tickets {
		env = append(env, EnvTicketKeysFD+"="+strconv.Itoa(next))
		next++
	}
	if metrics {
		env = append(env, EnvMetricsFD+"="+strconv.Itoa(next))
	}
	return env
}

// withoutVars returns env without the variables named in names.
func withoutVars(env []string, names ...string) []string {
	out := make([]string, 0, len(env))
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// credentialFor returns the user and groups workers run as: the user and
// group of smtp.ini when the supervisor runs as root, otherwise nil (the
// workers run as the supervisor does).
func credentialFor(m config.Main) (*syscall.Credential, error) {
	if m.User == "" || os.Geteuid() != 0 {
		return nil, nil
	}
	a, err := config.LookupAccount(m.User, m.Group)
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	c := &syscall.Credential{Uid: uint32(a.UID), Gid: uint32(a.GID)}
	for _, g := range a.Groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	return c, nil
}

// workerArgs is the command line of a worker: the same binary on the same
// config directory.
func (s *sup) workerArgs() []string {
	if s.opts.ConfigDir == "" {
		return []string{s.opts.Exe}
	}
	return []string{s.opts.Exe, "-c", s.opts.ConfigDir}
}

// spawn starts a worker of generation gen for sl, running as cred. The
// caller decides whether it becomes the slot's current worker.
func (s *sup) spawn(sl *slot, gen int, graceful time.Duration, cred *syscall.Credential) (*proc, error) {
	fds, err := s.socks.forSlot(sl.id)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("supervisor: ready pipe: %w", err)
	}
	// stdin is /dev/null; stdout and stderr are the supervisor's stderr,
	// so every line of every worker lands in one log.
	files := []uintptr{s.devnull.Fd(), 2, 2}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	files = append(files, w.Fd())
	if s.tickets != nil {
		files = append(files, uintptr(s.tickets.share.Fd()))
	}
	var mine, theirs *os.File
	if s.opts.Observer != nil {
		if mine, theirs, err = metricsPair(); err != nil {
			r.Close()
			w.Close()
			return nil, fmt.Errorf("supervisor: metrics channel: %w", err)
		}
		files = append(files, theirs.Fd())
	}
	pid, err := syscall.ForkExec(s.opts.Exe, s.workerArgs(), &syscall.ProcAttr{
		Env:   workerEnviron(os.Environ(), sl.id, gen, len(fds), s.socks.specs, s.tickets != nil, theirs != nil),
		Files: files,
		Sys:   &syscall.SysProcAttr{Credential: cred},
	})
	w.Close()
	if theirs != nil {
		theirs.Close()
	}
	if err != nil {
		r.Close()
		if mine != nil {
			mine.Close()
		}
		return nil, fmt.Errorf("supervisor: start worker %d: %s: %w", sl.id, s.opts.Exe, err)
	}
	p, err := s.track(sl.id, gen, pid, graceful)
	if err != nil {
		r.Close()
		if mine != nil {
			mine.Close()
		}
		return nil, err
	}
	if mine != nil {
		s.opts.Observer.WorkerStarted(sl.id, pid, mine)
	}
	s.publishSockets() // a reuseport slot may have bound its sockets
	go s.readReady(p, r)
	s.log.Info().Int("worker", p.id).Int("worker_pid", pid).Int("generation", gen).Msg("worker started")
	return p, nil
}

// track starts reaping pid, a child of this process, as worker id.
func (s *sup) track(id, gen, pid int, graceful time.Duration) (*proc, error) {
	h, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("supervisor: worker %d pid %d: %w", id, pid, err)
	}
	p := &proc{id: id, gen: gen, pid: pid, handle: h, started: time.Now(), graceful: graceful}
	s.procs[pid] = p
	go s.reap(p)
	s.observe()
	return p, nil
}

// readReady waits for the worker's READY line on its pipe. The pipe ends
// without one when the worker dies first.
func (s *sup) readReady(p *proc, r *os.File) {
	defer r.Close()
	var got []byte
	buf := make([]byte, 64)
	for len(got) < 256 {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if bytes.Contains(got, []byte("READY\n")) {
			s.send(event{kind: evReady, proc: p})
			return
		}
		if err != nil {
			return
		}
	}
}

// reap waits for the worker to exit.
func (s *sup) reap(p *proc) {
	ev := event{kind: evExit, proc: p}
	st, err := p.handle.Wait()
	if err != nil {
		ev.err = err
	} else if ws, ok := st.Sys().(syscall.WaitStatus); ok {
		ev.status = ws
	}
	s.send(ev)
}

// retire asks p to drain (SIGTERM) and arranges a SIGKILL should it
// outlive its graceful_timeout by more than the stop margin.
func (s *sup) retire(p *proc) {
	if p.retiring || p.exited {
		return
	}
	p.retiring = true
	defer s.observe()
	p.handle.Signal(syscall.SIGTERM)
	p.kill = time.AfterFunc(p.graceful+s.stopMargin, func() { s.send(event{kind: evKill, proc: p}) })
}

// exitFields describes how a worker ended, for the log.
func exitFields(ws syscall.WaitStatus, err error) (status string, code int, sig string) {
	switch {
	case err != nil:
		return "unknown: " + err.Error(), -1, ""
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus()), ws.ExitStatus(), ""
	case ws.Signaled():
		sig = unix.SignalName(ws.Signal())
		if sig == "" {
			sig = ws.Signal().String()
		}
		status = "killed by " + sig
		if ws.CoreDump() {
			status += " (core dumped)"
		}
		return status, -1, sig
	}
	return ws.Signal().String(), -1, ""
}
