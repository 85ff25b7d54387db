package metrics

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

// familyNames lists the names of what a gatherer returned.
func familyNames(mfs []*dto.MetricFamily, err error) ([]string, error) {
	var out []string
	for _, mf := range mfs {
		out = append(out, mf.GetName())
	}
	return out, err
}

// repoFile reads a file of the repository from this package's directory.
func repoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fullSource reports a little of everything, so that every series of the
// server shows.
type fullSource struct{}

func (fullSource) MetricsSnapshot(s *Snapshot) {
	s.Shard = *NewShard(1)
	s.Listeners = []string{"127.0.0.1:25"}
	l := &s.Shard.Listeners[0]
	l.Opened, l.Closed["quit"] = 2, 1
	l.Banner.Observe(time.Millisecond)
	s.Replies[CmdConnect][2] = 2
	s.Refusals[Refusal{"rcpt_to.in_host_list", "rcpt", 550}] = 1
	s.Hook("rcpt_to.in_host_list", "rcpt").Observe(time.Microsecond)
	s.Messages[MessageKey{"queue/maildir", "queued"}] = 1
	s.TLS[TLSKey{"ok", "1.3"}] = 1
	s.LoopLag = []time.Duration{time.Millisecond}
}

// TestDocsListEverySeries: every loopmx_ series a worker, a single process
// or a supervisor exports has its line in docs/metrics.md, and every
// series the contrib rules and dashboard use exists.
func TestDocsListEverySeries(t *testing.T) {
	doc := repoFile(t, "docs/metrics.md")
	reg := NewRegistry(Options{Version: "test", Source: fullSource{}, Sockets: func() []Socket { return nil }, Host: true})
	defer reg.Close()
	sup := NewSupervisor("test", zerolog.Nop())
	defer sup.Close()
	exported := map[string]bool{}
	for _, gather := range []func() ([]string, error){
		func() ([]string, error) { return familyNames(reg.Gather()) },
		func() ([]string, error) { return familyNames(sup.Gatherer().Gather()) },
	} {
		names, err := gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if strings.HasPrefix(n, "loopmx_") {
				exported[n] = true
			}
		}
	}
	// The listen queue series need a listening socket; their names are
	// checked from their descriptions.
	for _, d := range []string{"loopmx_listen_queue_length", "loopmx_listen_queue_limit", "loopmx_listen_queue_recent_max", "loopmx_redis_calls_total", "loopmx_redis_breaker_state"} {
		exported[d] = true
	}
	for n := range exported {
		if !strings.Contains(doc, "`"+n+"`") {
			t.Errorf("docs/metrics.md does not list %s", n)
		}
	}
	used := regexp.MustCompile(`\bloopmx_[a-z_]+`)
	for _, f := range []string{"contrib/prometheus/loopmx.rules.yml", "contrib/grafana/loopmx.json"} {
		for _, n := range used.FindAllString(repoFile(t, f), -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
			if strings.HasPrefix(n, "loopmx_banner_slow") {
				continue // a recording rule's name
			}
			if !exported[base] {
				t.Errorf("%s uses %s, which loopmx does not export", f, n)
			}
		}
	}
	var dash map[string]any
	if err := json.Unmarshal([]byte(repoFile(t, "contrib/grafana/loopmx.json")), &dash); err != nil {
		t.Errorf("contrib/grafana/loopmx.json: %v", err)
	}
}

// TestContribRules: the alerting rules pass promtool's check and their
// own unit tests (a fast burn of the banner SLO pages, one crash warns).
func TestContribRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus, or make deps as root)")
	}
	dir := filepath.Join("..", "..", "contrib", "prometheus")
	for _, args := range [][]string{{"check", "rules", "loopmx.rules.yml"}, {"test", "rules", "loopmx.rules.test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
