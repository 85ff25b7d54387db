//go:build !linux

package loop

import (
	"time"

	"loopmx/internal/metrics"
)

// addLoopMeters: without event loops every connection counts in the
// stream transports' meter.
func (s *Server) addLoopMeters(*metrics.Shard) {}

// loopLags: there are no event loops to lag.
func (s *Server) loopLags() []time.Duration { return nil }

// MetricsSockets: accept queues are read on Linux only.
func (s *Server) MetricsSockets() []metrics.Socket { return nil }
