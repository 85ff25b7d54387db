package plugins_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"loopmx/config"
	"loopmx/plugins"
)

// starter records Start and Close in a shared journal; failStart makes
// Start fail.
type starter struct {
	name      string
	journal   *[]string
	failStart bool
}

func (s *starter) Name() string { return s.name }

func (s *starter) Start() error {
	*s.journal = append(*s.journal, "start "+s.name)
	if s.failStart {
		return errors.New("cannot bind the thing")
	}
	return nil
}

func (s *starter) Close() error {
	*s.journal = append(*s.journal, "close "+s.name)
	return nil
}

func (s *starter) Plan() string { return "will do " + s.name }

// queueOnly is a plugin with a queue hook and nothing to start.
type queueOnly struct{}

func (queueOnly) Name() string { return "queue/lifecycletest" }
func (queueOnly) Queue(*plugins.Conn, *plugins.Message) plugins.Result {
	return plugins.Result{Action: plugins.Accept}
}

func init() {
	plugins.Register("queue/lifecycletest", func(*config.Config) (plugins.Plugin, error) { return queueOnly{}, nil })
}

// TestChainStart: Start runs in config order and stops at the first
// error, which names the plugin; Close then runs once for every plugin,
// started or not; Plans collects what each plugin will do.
func TestChainStart(t *testing.T) {
	var journal []string
	a := &starter{name: "a", journal: &journal}
	b := &starter{name: "b", journal: &journal, failStart: true}
	c := &starter{name: "c", journal: &journal}
	ch := plugins.NewChain(a, b, c)
	if got := strings.Join(ch.Plans(), "; "); got != "a: will do a; b: will do b; c: will do c" {
		t.Errorf("Plans() = %q", got)
	}
	if len(journal) != 0 {
		t.Fatalf("building and planning ran %q", journal)
	}
	err := ch.Start()
	if err == nil || err.Error() != "plugin/b: cannot bind the thing" {
		t.Errorf("Start: %v, want plugin/b: cannot bind the thing", err)
	}
	ch.Close()
	if got := strings.Join(journal, ", "); got != "start a, start b, close a, close b, close c" {
		t.Errorf("journal %q", got)
	}
}

// TestCheckDelivers: a config directory without a plugins file, or with
// no queue plugin in it, is refused with the file named; the built-in
// default and a chain with a queue plugin pass.
func TestCheckDelivers(t *testing.T) {
	cfg := configDir(t, map[string]string{"smtp.ini": "me = mx.example.net\n"})
	ch, err := plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = plugins.CheckDelivers(cfg, ch)
	if err == nil || !strings.Contains(err.Error(), "config: "+filepath.Join(cfg.Dir, "plugins")+": no such file") {
		t.Errorf("no plugins file: %v", err)
	}

	cfg = configDir(t, map[string]string{"smtp.ini": "me = mx.example.net\n", "plugins": "# nothing yet\n"})
	ch, err = plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = plugins.CheckDelivers(cfg, ch)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(cfg.Dir, "plugins")+": no queue plugin") ||
		!strings.Contains(err.Error(), "queue/lifecycletest") {
		t.Errorf("no queue plugin: %v, want the file and the queue plugins there are", err)
	}

	cfg = configDir(t, map[string]string{"smtp.ini": "me = mx.example.net\n", "plugins": "queue/lifecycletest\n"})
	ch, err = plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := plugins.CheckDelivers(cfg, ch); err != nil {
		t.Errorf("a chain with a queue plugin: %v", err)
	}
}
