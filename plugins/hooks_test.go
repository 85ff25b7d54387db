package plugins_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/plugins"
)

func TestRunOneRunsOnlyThatPlugin(t *testing.T) {
	ch := plugins.NewChain(
		&probe{name: "inline"},
		&probe{name: "dns", blocks: []plugins.Hook{plugins.HookRcpt}},
		&probe{name: "after", res: plugins.OK()},
	)
	c := &plugins.Conn{ID: "t.1"}
	call := &plugins.Call{Hook: plugins.HookRcpt}
	_, next, done := ch.Step(c, call, 0)
	if done || next != 1 {
		t.Fatalf("Step = next %d done %v, want to stop at the blocking plugin 1", next, done)
	}
	if res := ch.RunOne(c, call, next); res.Action != plugins.Continue || res.Plugin != "dns" {
		t.Fatalf("RunOne = %s by %q, want dns's no-opinion", res.Action, res.Plugin)
	}
	if got := trace(c); !reflect.DeepEqual(got, []string{"inline", "dns"}) {
		t.Fatalf("ran %q; RunOne must run the blocking plugin only", got)
	}
	// The loop goes on inline after the blocking plugin.
	res, _, done := ch.Step(c, call, next+1)
	if !done || res.Action != plugins.Accept || res.Plugin != "after" {
		t.Errorf("Step after RunOne = %s by %q (done %v), want accept by after", res.Action, res.Plugin, done)
	}
	if res := ch.RunOne(c, &plugins.Call{Hook: plugins.HookQueue, Msg: &plugins.Message{}}, 99); res.Action != plugins.TempFail {
		t.Errorf("RunOne past the end of the queue chain = %s, want the never-250 tempfail", res.Action)
	}
}

func TestDelayStopsStep(t *testing.T) {
	ch := plugins.NewChain(
		&probe{name: "first"},
		&probe{name: "pause", res: plugins.Result{Delay: time.Second}},
		&probe{name: "after", res: plugins.OK()},
	)
	c := &plugins.Conn{ID: "t.1"}
	res, next, done := ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0)
	if !done || next != 1 || res.Delay != time.Second || res.Action != plugins.Continue || res.Plugin != "pause" {
		t.Errorf("Step = %s delay %v by %q at %d (done %v), want pause's delay at 1", res.Action, res.Delay, res.Plugin, next, done)
	}
	if got := trace(c); !reflect.DeepEqual(got, []string{"first", "pause"}) {
		t.Errorf("ran %q; nothing may run during a delay", got)
	}
}

func TestPluginTimeoutFromConfig(t *testing.T) {
	cfg := configDir(t, map[string]string{
		"plugins":   "chaintest/alpha\nchaintest/beta\n",
		"alpha.ini": "timeout = 2s\n",
	})
	ch, err := plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if got := ch.Timeout(plugins.HookRcpt, 0); got != 2*time.Second {
		t.Errorf("alpha's timeout = %v, want 2s from alpha.ini", got)
	}
	if got := ch.Timeout(plugins.HookRcpt, 1); got != config.DefaultPluginTimeout {
		t.Errorf("beta's timeout = %v, want the default %v", got, config.DefaultPluginTimeout)
	}
	if got := ch.PluginAt(plugins.HookRcpt, 1); got != "chaintest/beta" {
		t.Errorf("PluginAt(rcpt, 1) = %q", got)
	}
}

// TestBadPluginTimeout checks that Build itself refuses a bad timeout, the
// one key every <name>.ini has, also for a plugin whose factory never opens
// its ini file (it has no settings of its own).
func TestBadPluginTimeout(t *testing.T) {
	for _, bad := range []string{"timeout = 0\n", "timeout = soon\n"} {
		cfg := configDir(t, map[string]string{"plugins": "chaintest/alpha\n", "alpha.ini": bad})
		if ch, err := plugins.Build(cfg); err == nil {
			ch.Close()
			t.Errorf("alpha.ini %q was accepted", bad)
		} else if !strings.Contains(err.Error(), "alpha.ini") || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("error %q does not name alpha.ini and timeout", err)
		}
	}
}

// capsPlugin edits the EHLO keywords; denyPlugin records refusals. Either
// panics when told to.
type capsPlugin struct {
	name  string
	edit  func([]string) []string
	panic bool
}

func (p *capsPlugin) Name() string { return p.name }
func (p *capsPlugin) Capabilities(_ *plugins.Conn, caps []string) []string {
	if p.panic {
		panic("caps broke")
	}
	return p.edit(caps)
}

type denyPlugin struct {
	name  string
	seen  *[]string
	panic bool
}

func (p *denyPlugin) Name() string { return p.name }
func (p *denyPlugin) Denied(_ *plugins.Conn, h plugins.Hook, r plugins.Result) {
	*p.seen = append(*p.seen, p.name+" "+h.String()+" "+r.Plugin)
	if p.panic {
		panic("deny broke")
	}
}

func TestCapabilities(t *testing.T) {
	var logBuf bytes.Buffer
	ch := plugins.NewChain(
		&capsPlugin{name: "add", edit: func(c []string) []string { return append(c, "XCLIENT") }},
		&capsPlugin{name: "broken", panic: true},
		&capsPlugin{name: "drop", edit: func(c []string) []string {
			var out []string
			for _, k := range c {
				if k != "CHUNKING" {
					out = append(out, k)
				}
			}
			return out
		}},
	)
	if !ch.Has(plugins.HookCapabilities) {
		t.Fatal("Has(capabilities) is false")
	}
	got := ch.Capabilities(&plugins.Conn{ID: "t.1", Log: logTo(&logBuf)}, []string{"PIPELINING", "CHUNKING"})
	if want := []string{"PIPELINING", "XCLIENT"}; !reflect.DeepEqual(got, want) {
		t.Errorf("keywords = %q, want %q (in config order, the panicking plugin skipped)", got, want)
	}
	if !strings.Contains(logBuf.String(), `"plugin":"broken"`) {
		t.Errorf("the panic was not logged with the plugin name: %q", logBuf.String())
	}
	if plugins.NewChain(rcptOnly{}).Has(plugins.HookCapabilities) {
		t.Error("Has(capabilities) is true without a capabilities plugin")
	}
}

func TestDenied(t *testing.T) {
	var seen []string
	var logBuf bytes.Buffer
	ch := plugins.NewChain(
		&denyPlugin{name: "karma", seen: &seen, panic: true},
		&denyPlugin{name: "log", seen: &seen},
	)
	if !ch.Has(plugins.HookDeny) {
		t.Fatal("Has(deny) is false")
	}
	ch.Denied(&plugins.Conn{ID: "t.1", Log: logTo(&logBuf)}, plugins.HookRcpt, plugins.Result{Action: plugins.Reject, Plugin: "rcpt_to.in_host_list"})
	want := []string{"karma rcpt rcpt_to.in_host_list", "log rcpt rcpt_to.in_host_list"}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("deny hooks saw %q, want %q (a panic in one must not stop the next)", seen, want)
	}
	if !strings.Contains(logBuf.String(), `"plugin":"karma"`) {
		t.Errorf("the panic was not logged with the plugin name: %q", logBuf.String())
	}
}
