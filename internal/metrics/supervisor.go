package metrics

import (
	"os"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Supervisor is the metrics side of a supervisor: its own series, the
// listening sockets it holds, and its workers' channels. Its methods
// (but Gatherer and Ready) are called by the supervisor's main goroutine.
type Supervisor struct {
	Workers *Workers
	reg     *Registry
	log     zerolog.Logger

	workers    *prometheus.GaugeVec
	crashes    prometheus.Counter
	restarts   prometheus.Counter
	rollouts   *prometheus.CounterVec
	generation prometheus.Gauge
	images     prometheus.Gauge

	ready   atomic.Bool
	sockMu  sync.Mutex
	sockets []Socket
}

// NewSupervisor returns the metrics of a supervisor of loopmx version.
func NewSupervisor(version string, log zerolog.Logger) *Supervisor {
	s := &Supervisor{Workers: NewWorkers(), log: log}
	s.reg = NewRegistry(Options{
		Version:       version,
		Sockets:       s.socketList,
		Host:          true,
		ProcessLabels: prometheus.Labels{WorkerLabel: "supervisor"},
	})
	s.workers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "loopmx_supervisor_workers",
		Help: "Worker processes by state: ready (serving), starting (not yet ready), draining (asked to stop).",
	}, []string{"state"})
	s.crashes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "loopmx_supervisor_worker_crashes_total",
		Help: "Workers that exited without being asked to.",
	})
	s.restarts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "loopmx_supervisor_worker_restarts_total",
		Help: "Workers started to replace one that crashed.",
	})
	s.rollouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "loopmx_supervisor_rollouts_total",
		Help: "Reloads (HUP) and binary upgrades (USR2) by outcome: ok, or failed (a bad config, a worker that did not start, a binary that did not run).",
	}, []string{"kind", "outcome"})
	s.generation = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "loopmx_supervisor_generation",
		Help: "The workers' generation: 1 at start, +1 for every reload or upgrade.",
	})
	s.images = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "loopmx_supervisor_upgrade_generation",
		Help: "Binaries this supervisor has run in place: 1 at start, +1 for every binary upgrade (USR2).",
	})
	for _, st := range []string{"ready", "starting", "draining"} {
		s.workers.WithLabelValues(st)
	}
	for _, k := range []string{"reload", "upgrade"} {
		for _, o := range []string{"ok", "failed"} {
			s.rollouts.WithLabelValues(k, o)
		}
	}
	s.reg.MustRegister(s.workers, s.crashes, s.restarts, s.rollouts, s.generation, s.images)
	return s
}

// Gatherer is what the endpoint serves: the supervisor's series and
// every worker's.
func (s *Supervisor) Gatherer() prometheus.Gatherer { return prometheus.Gatherers{s.reg, s.Workers} }

// Close stops the supervisor's background sampling and its channels.
func (s *Supervisor) Close() {
	s.reg.Close()
	s.Workers.Close()
}

// Ready reports whether every worker slot has a ready worker and no stop
// is under way.
func (s *Supervisor) Ready() bool { return s.ready.Load() }

// WorkerStarted starts gathering from a new worker.
func (s *Supervisor) WorkerStarted(slot, pid int, channel *os.File) {
	if err := s.Workers.Add(slot, pid, channel); err != nil {
		s.log.Warn().Err(err).Int("worker", slot).Msg("worker's metrics left out")
	}
}

// WorkerCrashed counts a worker that exited unasked.
func (s *Supervisor) WorkerCrashed(slot, pid int) { s.crashes.Inc() }

// WorkerRestarted counts a replacement for a crashed worker.
func (s *Supervisor) WorkerRestarted(slot int) { s.restarts.Inc() }

// Rollout counts a reload or an upgrade.
func (s *Supervisor) Rollout(what string, ok bool) {
	outcome := "ok"
	if !ok {
		outcome = "failed"
	}
	s.rollouts.WithLabelValues(what, outcome).Inc()
}

// State sets the workers' gauges.
func (s *Supervisor) State(ready, starting, draining, generation, images int, isReady bool) {
	s.workers.WithLabelValues("ready").Set(float64(ready))
	s.workers.WithLabelValues("starting").Set(float64(starting))
	s.workers.WithLabelValues("draining").Set(float64(draining))
	s.generation.Set(float64(generation))
	s.images.Set(float64(images))
	s.ready.Store(isReady)
}

// SetSockets sets the listening sockets whose accept queues are reported.
func (s *Supervisor) SetSockets(socks []Socket) {
	s.sockMu.Lock()
	s.sockets = socks
	s.sockMu.Unlock()
}

func (s *Supervisor) socketList() []Socket {
	s.sockMu.Lock()
	defer s.sockMu.Unlock()
	return s.sockets
}
