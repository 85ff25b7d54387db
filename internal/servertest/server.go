// Package servertest runs a real loopmx server for tests and talks SMTP
// to it: a config directory written from a map of file name to content,
// loaded with config.Load and built with plugins.Build as main.go does,
// served by loop.Server on 127.0.0.1:0 until the test ends; a raw SMTP
// client that checks every reply it reads; and a net/smtp sender.
//
// It is test support: only _test.go files import it. The code of a
// plugin, of loop or of main never does (TestOnlyTestsImportIt checks).
package servertest

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/testlog"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
)

// Host is the host name (me in smtp.ini) of a test server. A Client
// knows the EHLO and HELO replies by it.
const Host = "mx.test"

// SMTPINI is the smtp.ini a config directory gets when the test gives
// none: one event loop, an ephemeral port, and the name Host.
const SMTPINI = "[main]\nlisten = 127.0.0.1:0\nloops = 1\nme = " + Host + "\n"

// unlimitedPerIP lifts the per-address connection limit: every test
// client comes from 127.0.0.1, and a suite may hold more than its default
// share open. A test of the limit sets max_connections_per_ip itself.
const unlimitedPerIP = "max_connections_per_ip = 0\n"

// IOTimeout bounds every read and write of a Client and every wait, so
// that a hung server fails the test instead of the whole run.
const IOTimeout = 20 * time.Second

// WriteDir writes files (file name -> content) into a new directory that
// the test removes when it ends, and returns it. The directory gets
// SMTPINI as its smtp.ini unless files has one.
func WriteDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if _, ok := files["smtp.ini"]; !ok {
		Write(t, dir, "smtp.ini", SMTPINI+unlimitedPerIP)
	}
	for name, content := range files {
		if name == "smtp.ini" && !strings.Contains(content, "max_connections_per_ip") {
			if rest, ok := strings.CutPrefix(content, "[main]\n"); ok {
				content = "[main]\n" + unlimitedPerIP + rest
			} else {
				content = unlimitedPerIP + content
			}
		}
		Write(t, dir, name, content)
	}
	return dir
}

// Write writes one file of a config directory.
func Write(t testing.TB, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// LoadDir loads the config directory dir; an error fails the test.
func LoadDir(t testing.TB, dir string) *config.Config {
	t.Helper()
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// BuildDir loads dir (an error fails the test) and builds the chain its
// plugins file names, returning plugins.Build's error. The chain is
// closed when the test ends.
func BuildDir(t testing.TB, dir string) (*plugins.Chain, error) {
	t.Helper()
	ch, err := plugins.Build(LoadDir(t, dir))
	if err == nil {
		t.Cleanup(func() { ch.Close() })
	}
	return ch, err
}

// Build is BuildDir for a directory holding files (see WriteDir).
func Build(t testing.TB, files map[string]string) (*plugins.Chain, error) {
	t.Helper()
	return BuildDir(t, WriteDir(t, files))
}

// CheckBuild builds files (see Build) and requires the outcome: a chain
// when want is empty, otherwise an error that holds every one of want.
func CheckBuild(t testing.TB, files map[string]string, want ...string) {
	t.Helper()
	_, err := Build(t, files)
	switch {
	case len(want) == 0 && err != nil:
		t.Fatalf("Build: %v", err)
	case len(want) > 0 && err == nil:
		t.Fatalf("Build accepted the config, want an error with %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %s", err, w)
		}
	}
}

// Server is a running loopmx server.
type Server struct {
	Addr  string // the address of the first listener
	Loop  *loop.Server
	Pool  *workpool.Pool
	Chain *plugins.Chain
	Log   *Buffer // what the server logged; set by Start and StartDir

	once sync.Once
}

// Serve starts a server for cfg as main.go does: the chain from
// plugins.Build, started (plugins.Chain.Start), the options from loop.OptionsFrom with the certificates
// of tls.ini (loop.LoadTLS), a workpool of threadpool_size workers and
// work_queue_size queued jobs. The server logs to log. Stop ends it.
func Serve(cfg *config.Config, log io.Writer) (*Server, error) {
	chain, err := plugins.Build(cfg)
	if err != nil {
		return nil, err
	}
	if err := chain.Start(); err != nil {
		chain.Close()
		return nil, err
	}
	lo := loop.OptionsFrom(cfg, zerolog.New(log))
	if lo.TLS, err = loop.LoadTLS(cfg); err != nil {
		chain.Close()
		return nil, err
	}
	pool := workpool.New(cfg.Main.ThreadpoolSize, cfg.Main.WorkQueueSize)
	srv, err := loop.New(lo, chain, pool)
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		pool.Close()
		chain.Close()
		return nil, err
	}
	return &Server{Addr: srv.Addrs()[0].String(), Loop: srv, Pool: pool, Chain: chain}, nil
}

// Stop lets the hooks at work report back (it waits up to IOTimeout for
// the workpool to have no job running or queued), then shuts the server
// down as main.go does, the loops before the pool, and closes the
// plugins. Calls after the first do nothing.
func (s *Server) Stop() {
	s.once.Do(func() {
		deadline := time.Now().Add(IOTimeout)
		for (s.Pool.Busy() > 0 || s.Pool.Queued() > 0) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Loop.Shutdown(ctx)
		s.Pool.Close()
		s.Chain.Close()
	})
}

// StartDir serves the config directory dir until the test ends, logging
// into the server's Log. A directory that does not load or a server
// that does not start fails the test.
func StartDir(t testing.TB, dir string) *Server {
	t.Helper()
	cfg := LoadDir(t, dir)
	logs := &Buffer{}
	s, err := Serve(cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	s.Log = logs
	t.Cleanup(s.Stop)
	return s
}

// Start is StartDir for a directory holding files (see WriteDir).
func Start(t testing.TB, files map[string]string) *Server {
	t.Helper()
	return StartDir(t, WriteDir(t, files))
}

// Buffer is the shared log sink (internal/testlog).
type Buffer = testlog.Buffer

// Eventually calls cond every interval until it holds, and fails the
// test when IOTimeout passes first.
func Eventually(t testing.TB, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(IOTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(interval)
	}
}
