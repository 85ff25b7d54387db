package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Endpoint is the HTTP server of metrics_listen.
type Endpoint struct {
	srv *http.Server
	ln  net.Listener
}

// EndpointOptions configure Listen.
type EndpointOptions struct {
	// Gatherer is what /metrics serves.
	Gatherer prometheus.Gatherer
	// Ready answers /readyz: the listeners are open and the server is
	// not draining.
	Ready func() bool
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// Log gets the errors of a scrape.
	Log zerolog.Logger
}

// Listen binds addr and serves the endpoint on it in the background:
// /metrics in the Prometheus text format or OpenMetrics (as the scraper
// asks), /healthz (the process is up: always 200), /readyz (200 when
// ready, 503 otherwise), and /debug/pprof/ when asked.
func Listen(addr string, o EndpointOptions) (*Endpoint, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		// A worker that does not answer in time is left out, not the
		// whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      errorLog{o.Log},
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if o.Ready != nil && !o.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if o.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	e := &Endpoint{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// A CPU profile or trace may take its seconds= parameter's time.
		WriteTimeout: 5 * time.Minute,
	}}
	go func() {
		if err := e.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.Log.Error().Err(err).Msg("metrics endpoint stopped")
		}
	}()
	return e, nil
}

// Addr is the address the endpoint listens on.
func (e *Endpoint) Addr() string { return e.ln.Addr().String() }

// Close stops the endpoint, letting a scrape in progress finish for up to
// a second.
func (e *Endpoint) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
}

// errorLog writes promhttp's errors to the log.
type errorLog struct{ log zerolog.Logger }

func (l errorLog) Println(v ...any) {
	l.log.Warn().Str("error", fmt.Sprint(v...)).Msg("metrics: scrape incomplete")
}
