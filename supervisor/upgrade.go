package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/config"
)

// USR2 replaces the supervisor's binary in place: the supervisor execs the
// binary on disk with its own arguments (same PID, so systemd and the
// workers notice nothing), keeping the listening sockets open across the
// exec and describing them and the running workers in envHandoff. The new
// image adopts the workers, which are still its children, then replaces
// them one at a time as a reload does. Connections keep being accepted
// throughout: the sockets never close and the old workers serve until
// their replacements are ready.

// envHandoff carries the supervisor's state across the exec of a USR2.
const envHandoff = "LOOPMX_SUPERVISOR_HANDOFF"

// handoffSignals catches the supervisor's signals from the first moment of
// an image started by a USR2, before main has loaded the config and called
// Run: a TERM in that gap must drain the workers, not kill the supervisor.
var handoffSignals chan os.Signal

func init() {
	if os.Getenv(envHandoff) != "" {
		handoffSignals = make(chan os.Signal, 8)
		signal.Notify(handoffSignals, supervisorSignals...)
	}
}

// handoff is the state one supervisor image passes to the next.
type handoff struct {
	Gen int `json:"gen"`
	// Images counts the binaries this supervisor has run in place.
	Images int `json:"images,omitempty"`
	// Listeners are what the sockets are bound to. Listen is what images
	// before Listeners handed over: the addresses of listen only.
	Listeners []config.Listener `json:"listeners,omitempty"`
	Listen    []string          `json:"listen,omitempty"`
	Backlog   int               `json:"backlog"`
	Reuseport bool              `json:"reuseport,omitempty"`
	Systemd   bool              `json:"systemd,omitempty"`
	Shared    []int             `json:"shared,omitempty"` // descriptors
	Slots     []handoffSlot     `json:"slots"`
	Draining  []handoffProc     `json:"draining,omitempty"` // workers asked to stop that still run
	// TicketKeys is the descriptor of the shared session-ticket keys
	// (ticketkeys.Share); 0 from images that had none.
	TicketKeys int `json:"ticket_keys,omitempty"`
}

type handoffSlot struct {
	ID       int   `json:"id"`
	FDs      []int `json:"fds,omitempty"` // reuseport: this worker's sockets
	PID      int   `json:"pid,omitempty"` // 0: a restart was pending
	Gen      int   `json:"gen,omitempty"`
	Started  int64 `json:"started,omitempty"` // unix nanoseconds
	Failures int   `json:"failures,omitempty"`
}

type handoffProc struct {
	ID      int   `json:"id"`
	PID     int   `json:"pid"`
	Gen     int   `json:"gen"`
	Started int64 `json:"started"`
}

// handoff describes the current state for the next image.
func (s *sup) handoff() handoff {
	k := s.socks
	h := handoff{Gen: s.gen, Images: s.images, Listeners: k.specs, Backlog: k.backlog, Reuseport: k.reuseport, Systemd: k.systemd, Shared: k.shared}
	current := map[*proc]bool{}
	for _, sl := range s.slots {
		hs := handoffSlot{ID: sl.id, FDs: k.slots[sl.id], Failures: sl.failures}
		if sl.cur != nil {
			hs.PID, hs.Gen, hs.Started = sl.cur.pid, sl.cur.gen, sl.cur.started.UnixNano()
			current[sl.cur] = true
		}
		h.Slots = append(h.Slots, hs)
	}
	for _, p := range s.procs {
		if !current[p] {
			h.Draining = append(h.Draining, handoffProc{ID: p.id, PID: p.pid, Gen: p.gen, Started: p.started.UnixNano()})
		}
	}
	if s.tickets != nil {
		h.TicketKeys = s.tickets.share.Fd()
	}
	return h
}

// takeHandoff reads and removes envHandoff. ok is false when this image
// was not started by a USR2.
func takeHandoff() (h *handoff, ok bool, err error) {
	v, ok := os.LookupEnv(envHandoff)
	if !ok {
		return nil, false, nil
	}
	os.Unsetenv(envHandoff)
	h = &handoff{}
	if err := json.Unmarshal([]byte(v), h); err != nil {
		return nil, true, fmt.Errorf("supervisor: %s: %w", envHandoff, err)
	}
	return h, true, nil
}

// adopt takes over the sockets and workers of the previous image.
func (s *sup) adopt(h *handoff) error {
	k := &sockets{specs: h.Listeners, backlog: h.Backlog, reuseport: h.Reuseport, systemd: h.Systemd,
		shared: h.Shared, slots: map[int][]int{}, open: s.opts.Listen}
	if len(k.specs) == 0 {
		for _, a := range h.Listen {
			k.specs = append(k.specs, config.Listener{Addr: a})
		}
	}
	for i, hs := range h.Slots {
		if hs.ID != i+1 {
			return fmt.Errorf("supervisor: %s: worker ids are not 1..%d", envHandoff, len(h.Slots))
		}
		if len(hs.FDs) > 0 {
			k.slots[hs.ID] = hs.FDs
		}
	}
	for _, fd := range k.all() {
		if !isListener(fd) {
			return fmt.Errorf("supervisor: %s: descriptor %d is not a listening socket", envHandoff, fd)
		}
		unix.CloseOnExec(fd)
	}
	if len(h.Slots) == 0 || (!k.reuseport && len(k.shared) == 0) {
		return fmt.Errorf("supervisor: %s: no workers or no sockets", envHandoff)
	}
	if !k.systemd {
		sets := [][]int{k.shared}
		if k.reuseport {
			sets = sets[:0]
			for _, id := range k.slotIDs() {
				sets = append(sets, k.slots[id])
			}
		}
		for _, fds := range sets {
			if len(fds) != len(k.specs) {
				return fmt.Errorf("supervisor: %s: %d sockets for %d listeners", envHandoff, len(fds), len(k.specs))
			}
		}
	}
	s.socks, s.gen, s.images = k, h.Gen, h.Images
	if h.TicketKeys > 0 {
		s.ticketFD = h.TicketKeys
	}
	s.adopted, s.announced = true, true
	for _, hs := range h.Slots {
		sl := &slot{id: hs.ID, failures: hs.Failures}
		s.slots = append(s.slots, sl)
		if hs.PID > 0 {
			sl.cur = s.adoptProc(hs.ID, hs.PID, hs.Gen, hs.Started)
		}
	}
	for _, hp := range h.Draining {
		if p := s.adoptProc(hp.ID, hp.PID, hp.Gen, hp.Started); p != nil {
			// It was sent TERM already; a second one would cut its drain short.
			p.retiring = true
			p.kill = time.AfterFunc(p.graceful+s.stopMargin, func() { s.send(event{kind: evKill, proc: p}) })
		}
	}
	return nil
}

// adoptProc tracks pid, a worker started by the previous image, or
// returns nil when it is not (or no longer) a child of this process.
func (s *sup) adoptProc(id, pid, gen int, started int64) *proc {
	if ppid, err := parentOf(pid); err != nil || ppid != os.Getpid() {
		s.log.Warn().Int("worker", id).Int("worker_pid", pid).Msg("handed-over worker is not a child of this process; not adopted")
		return nil
	}
	p, err := s.track(id, gen, pid, s.cfg.Main.GracefulTimeout)
	if err != nil {
		s.log.Warn().Err(err).Msg("cannot adopt worker")
		return nil
	}
	p.ready = true
	if started > 0 {
		p.started = time.Unix(0, started)
	}
	s.log.Info().Int("worker", id).Int("worker_pid", pid).Int("generation", gen).Msg("worker adopted")
	return p
}

// parentOf reads the parent pid of pid from /proc/PID/stat.
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("supervisor: bad /proc stat line")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("supervisor: bad /proc stat line")
	}
	return strconv.Atoi(f[1])
}

// upgrade answers USR2: it checks the binary on disk, then execs it in
// place, handing over the sockets and the workers. When anything fails
// before the exec, this image keeps running as it was.
func (s *sup) upgrade() {
	s.notify(reloadingState())
	s.log.Info().Str("exe", s.opts.Exe).Msg("upgrade: checking the binary on disk")
	checked := make(chan error, 1)
	go func() { checked <- s.checkBinary() }()
	var err error
wait:
	for {
		select {
		case err = <-checked:
			break wait
		case sig := <-s.sigs:
			s.onSignal(sig)
		case ev := <-s.events:
			s.handle(ev)
		case <-s.watchdog:
			s.notify("WATCHDOG=1")
		}
	}
	if err != nil {
		s.log.Error().Err(err).Msg("upgrade failed; this binary keeps running")
		s.rolledOut("upgrade", false)
		s.notify(readyState(s))
		return
	}
	// Take in what is queued so the state handed over is current; a stop
	// asked for meanwhile wins over the upgrade.
	for more := true; more; {
		select {
		case sig := <-s.sigs:
			s.onSignal(sig)
		case ev := <-s.events:
			s.handle(ev)
		default:
			more = false
		}
	}
	if s.stopSig != nil || s.failed != nil {
		return
	}
	data, err := json.Marshal(s.handoff())
	if err != nil {
		s.log.Error().Err(err).Msg("upgrade failed; this binary keeps running")
		s.rolledOut("upgrade", false)
		s.notify(readyState(s))
		return
	}
	fds := s.socks.all()
	if s.tickets != nil {
		fds = append(fds, s.tickets.share.Fd())
	}
	for _, fd := range fds {
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0) // keep it open across the exec
	}
	env := append(withoutVars(os.Environ(), envHandoff), envHandoff+"="+string(data))
	s.log.Info().Int("workers", len(s.procs)).Msg("upgrade: executing the new binary; the workers keep serving")
	err = syscall.Exec(s.opts.Exe, os.Args, env)
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	s.log.Error().Err(err).Str("exe", s.opts.Exe).Msg("upgrade failed: cannot execute the new binary; this one keeps running")
	s.rolledOut("upgrade", false)
	s.notify(readyState(s))
}

// nodesLine finds the nodes setting in the output of check-config.
var nodesLine = regexp.MustCompile(`(?m)^nodes\s*=\s*(\d+)`)

// checkBinary runs `EXE check-config [-c DIR]`: it proves that the binary
// on disk starts on this machine and accepts the config, plugins included.
func (s *sup) checkBinary() error {
	args := []string{"check-config"}
	if s.opts.ConfigDir != "" {
		args = append(args, "-c", s.opts.ConfigDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.opts.Exe, args...)
	cmd.Env = withoutVars(os.Environ(), envNotForWorkers...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("supervisor: %s check-config: %w: %s", s.opts.Exe, err, lastLine(out))
	}
	if m := nodesLine.FindSubmatch(out); m != nil && string(m[1]) == "0" {
		return errors.New("supervisor: the config on disk has nodes = 0 (no supervisor); that change takes a restart")
	}
	return nil
}

// lastLine returns the last non-empty line of out, which holds the error
// of a failed check-config.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}
