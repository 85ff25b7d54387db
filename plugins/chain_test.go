package plugins_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// probe is a plugin with every hook. Each hook adds the probe's name to the
// connection's "trace" note, then panics (when panicWith is set) or returns
// res. blocks lists the hooks the probe declares as blocking.
type probe struct {
	name      string
	res       plugins.Result
	blocks    []plugins.Hook
	panicWith any
}

// probeHooks are the hooks a probe implements.
var probeHooks = []plugins.Hook{
	plugins.HookConnect, plugins.HookHelo, plugins.HookMail, plugins.HookRcpt,
	plugins.HookData, plugins.HookQueue, plugins.HookDisconnect,
}

func (p *probe) Name() string { return p.name }

func (p *probe) Blocks(h plugins.Hook) bool {
	for _, b := range p.blocks {
		if b == h {
			return true
		}
	}
	return false
}

func (p *probe) run(c *plugins.Conn) plugins.Result {
	trace, _ := c.Note("trace").([]string)
	c.SetNote("trace", append(trace, p.name))
	if p.panicWith != nil {
		panic(p.panicWith)
	}
	return p.res
}

func (p *probe) Connect(c *plugins.Conn) plugins.Result                   { return p.run(c) }
func (p *probe) Helo(c *plugins.Conn, _ string) plugins.Result            { return p.run(c) }
func (p *probe) Mail(c *plugins.Conn, _ string) plugins.Result            { return p.run(c) }
func (p *probe) Rcpt(c *plugins.Conn, _ string) plugins.Result            { return p.run(c) }
func (p *probe) Data(c *plugins.Conn) plugins.Result                      { return p.run(c) }
func (p *probe) Queue(c *plugins.Conn, _ *plugins.Message) plugins.Result { return p.run(c) }
func (p *probe) Disconnect(c *plugins.Conn)                               { p.run(c) }

// rcptOnly has a rcpt hook and nothing else.
type rcptOnly struct{}

func (rcptOnly) Name() string                              { return "test/rcpt-only" }
func (rcptOnly) Rcpt(*plugins.Conn, string) plugins.Result { return plugins.OK() }

// closer counts its Close calls in closes.
type closer struct{ probe }

var closes atomic.Int32

func (*closer) Close() error { closes.Add(1); return nil }

// The test plugins are registered once per process, as real plugins are,
// so that -count=N does not register them twice.
func init() {
	for _, n := range []string{"chaintest/alpha", "chaintest/beta", "chaintest/gamma"} {
		plugins.Register(n, func(*config.Config) (plugins.Plugin, error) {
			return &probe{name: n}, nil
		})
	}
	plugins.Register("chaintest/closer", func(*config.Config) (plugins.Plugin, error) {
		return &closer{probe{name: "chaintest/closer"}}, nil
	})
	plugins.Register("chaintest/broken", func(*config.Config) (plugins.Plugin, error) {
		return nil, errors.New("plugin/chaintest/broken: broken.ini: level: \"x\" is not a number")
	})
}

func trace(c *plugins.Conn) []string {
	t, _ := c.Note("trace").([]string)
	return t
}

// wire is the reply as the client reads it.
func wire(h plugins.Hook, r plugins.Result) string {
	return string(plugins.ReplyFor(h, r).AppendTo(nil))
}

// configDir writes a config directory holding files and loads it.
func configDir(t *testing.T, files map[string]string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	if _, ok := files["smtp.ini"]; !ok {
		files["smtp.ini"] = "[main]\nme = mx.example.net\n"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestChainRunsHooksInConfigOrder(t *testing.T) {
	cfg := configDir(t, map[string]string{"plugins": "chaintest/gamma\nchaintest/alpha\nchaintest/beta\n"})
	ch, err := plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	want := []string{"chaintest/gamma", "chaintest/alpha", "chaintest/beta"}
	if got := ch.Names(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Names() = %q, want %q", got, want)
	}
	for _, h := range probeHooks {
		c := &plugins.Conn{ID: "t.1"}
		res, _, done := ch.Step(c, &plugins.Call{Hook: h, Msg: &plugins.Message{}}, 0)
		if !done {
			t.Fatalf("%s: Step stopped although no plugin blocks", h)
		}
		if got := trace(c); !reflect.DeepEqual(got, want) {
			t.Errorf("%s hooks ran as %q, want %q", h, got, want)
		}
		if h != plugins.HookQueue && res.Action != plugins.Continue {
			t.Errorf("%s: nobody decided, but the result is %s", h, res.Action)
		}
	}
}

func TestFirstDecisionWins(t *testing.T) {
	for _, tc := range []struct {
		name   string
		res    plugins.Result
		action plugins.Action
	}{
		{"accept", plugins.OK(), plugins.Accept},
		{"reject", plugins.Deny(550, "5.1.1", "No such user"), plugins.Reject},
		{"tempfail", plugins.DenySoft(450, "4.2.1", "Try later"), plugins.TempFail},
		{"reject and disconnect", plugins.Result{Action: plugins.RejectDisconnect}, plugins.RejectDisconnect},
		{"tempfail and disconnect", plugins.Result{Action: plugins.TempFailDisconnect}, plugins.TempFailDisconnect},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := plugins.NewChain(
				&probe{name: "first"},
				&probe{name: "decider", res: tc.res},
				&probe{name: "never", res: plugins.OK()},
			)
			c := &plugins.Conn{ID: "t.1"}
			res, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt, Arg: "user@example.com"}, 0)
			if !done {
				t.Fatal("Step stopped although no plugin blocks")
			}
			if res.Action != tc.action || res.Plugin != "decider" {
				t.Errorf("result = %s by %q, want %s by \"decider\"", res.Action, res.Plugin, tc.action)
			}
			if res.Reply != tc.res.Reply {
				t.Errorf("reply = %#v, want the decider's %#v", res.Reply, tc.res.Reply)
			}
			if got := trace(c); !reflect.DeepEqual(got, []string{"first", "decider"}) {
				t.Errorf("ran %q; nothing after the decision may run", got)
			}
		})
	}
}

// argPlugin records what each hook was given.
type argPlugin struct{ got []string }

func (*argPlugin) Name() string { return "test/args" }
func (a *argPlugin) Helo(c *plugins.Conn, name string) plugins.Result {
	a.got = append(a.got, "helo "+name)
	return plugins.NoOpinion()
}
func (a *argPlugin) Mail(c *plugins.Conn, from string) plugins.Result {
	a.got = append(a.got, "mail "+from)
	return plugins.NoOpinion()
}
func (a *argPlugin) Rcpt(c *plugins.Conn, to string) plugins.Result {
	a.got = append(a.got, "rcpt "+to)
	return plugins.NoOpinion()
}
func (a *argPlugin) Queue(c *plugins.Conn, m *plugins.Message) plugins.Result {
	a.got = append(a.got, "queue "+m.Protocol+" "+string(m.Bytes()))
	return plugins.OK()
}

func TestHooksGetTheirArguments(t *testing.T) {
	a := &argPlugin{}
	ch := plugins.NewChain(a)
	c := &plugins.Conn{ID: "t.1"}
	for _, call := range []plugins.Call{
		{Hook: plugins.HookHelo, Arg: "client.example.org"},
		{Hook: plugins.HookMail, Arg: ""},
		{Hook: plugins.HookRcpt, Arg: "user@example.com"},
		{Hook: plugins.HookQueue, Msg: plugins.NewMessage([]byte("Subject: x\r\n\r\nhi\r\n"), "ESMTP")},
	} {
		ch.Step(c, &call, 0)
	}
	want := []string{"helo client.example.org", "mail ", "rcpt user@example.com", "queue ESMTP Subject: x\r\n\r\nhi\r\n"}
	if !reflect.DeepEqual(a.got, want) {
		t.Errorf("hooks got %q, want %q", a.got, want)
	}
}

func TestStepStopsAtBlockingHook(t *testing.T) {
	rcpt := plugins.HookRcpt
	t.Run("the blocking plugin decides", func(t *testing.T) {
		ch := plugins.NewChain(
			&probe{name: "inline"},
			&probe{name: "dns", blocks: []plugins.Hook{rcpt}, res: plugins.Deny(550, "5.7.1", "Listed")},
			&probe{name: "after", res: plugins.OK()},
		)
		c := &plugins.Conn{ID: "t.1"}
		call := &plugins.Call{Hook: rcpt, Arg: "user@example.com"}
		_, next, done := ch.Step(c, call, 0)
		if done {
			t.Fatal("Step ran a blocking hook inline")
		}
		if got := trace(c); !reflect.DeepEqual(got, []string{"inline"}) {
			t.Fatalf("Step ran %q, want only the inline plugin before the blocking one", got)
		}
		res := ch.RunFrom(c, call, next)
		if res.Action != plugins.Reject || res.Plugin != "dns" {
			t.Errorf("RunFrom = %s by %q, want reject by dns", res.Action, res.Plugin)
		}
		if got := trace(c); !reflect.DeepEqual(got, []string{"inline", "dns"}) {
			t.Errorf("ran %q; the inline plugin must not run twice, nothing after the decision", got)
		}
	})
	t.Run("RunFrom goes on past the blocking plugin", func(t *testing.T) {
		ch := plugins.NewChain(
			&probe{name: "inline"},
			&probe{name: "dns", blocks: []plugins.Hook{rcpt}},
			&probe{name: "after", res: plugins.DenySoft(451, "4.7.1", "Greylisted")},
		)
		c := &plugins.Conn{ID: "t.1"}
		call := &plugins.Call{Hook: rcpt}
		_, next, done := ch.Step(c, call, 0)
		if done {
			t.Fatal("Step ran a blocking hook inline")
		}
		res := ch.RunFrom(c, call, next)
		if res.Action != plugins.TempFail || res.Plugin != "after" {
			t.Errorf("RunFrom = %s by %q, want tempfail by after", res.Action, res.Plugin)
		}
		if got := trace(c); !reflect.DeepEqual(got, []string{"inline", "dns", "after"}) {
			t.Errorf("ran %q", got)
		}
	})
	t.Run("an inline decision before the blocking plugin", func(t *testing.T) {
		ch := plugins.NewChain(
			&probe{name: "inline", res: plugins.OK()},
			&probe{name: "dns", blocks: []plugins.Hook{rcpt}},
		)
		c := &plugins.Conn{ID: "t.1"}
		res, _, done := ch.Step(c, &plugins.Call{Hook: rcpt}, 0)
		if !done || res.Plugin != "inline" {
			t.Errorf("Step = done %v by %q, want done by inline", done, res.Plugin)
		}
		if got := trace(c); !reflect.DeepEqual(got, []string{"inline"}) {
			t.Errorf("ran %q; the blocking plugin was not needed", got)
		}
	})
	t.Run("blocking at another hook does not stop this one", func(t *testing.T) {
		ch := plugins.NewChain(
			&probe{name: "queue-blocker", blocks: []plugins.Hook{plugins.HookQueue}},
			&probe{name: "decider", res: plugins.OK()},
		)
		c := &plugins.Conn{ID: "t.1"}
		res, _, done := ch.Step(c, &plugins.Call{Hook: rcpt}, 0)
		if !done || res.Plugin != "decider" {
			t.Errorf("Step = done %v by %q, want done by decider", done, res.Plugin)
		}
	})
}

// logTo returns a zerolog logger writing JSON lines into buf.
func logTo(buf *bytes.Buffer) *zerolog.Logger {
	l := zerolog.New(buf)
	return &l
}

func TestPanickingPluginTempfails(t *testing.T) {
	const internal = "451 4.3.0 Internal error, try again later\r\n"
	for _, h := range []plugins.Hook{plugins.HookMail, plugins.HookRcpt, plugins.HookQueue} {
		t.Run(h.String(), func(t *testing.T) {
			var logBuf bytes.Buffer
			ch := plugins.NewChain(
				&probe{name: "before"},
				&probe{name: "test/boom", panicWith: "secret detail"},
				&probe{name: "after", res: plugins.OK()},
			)
			c := &plugins.Conn{ID: "t.1", Log: logTo(&logBuf)}
			res, _, done := ch.Step(c, &plugins.Call{Hook: h, Msg: &plugins.Message{}}, 0)
			if !done {
				t.Fatal("Step stopped although no plugin blocks")
			}
			if got := wire(h, res); got != internal {
				t.Errorf("client reads %q, want %q", got, internal)
			}
			if res.Plugin != "test/boom" {
				t.Errorf("Result.Plugin = %q, want the plugin that panicked", res.Plugin)
			}
			if got := trace(c); !reflect.DeepEqual(got, []string{"before", "test/boom"}) {
				t.Errorf("ran %q; nothing may run after a panic", got)
			}
			log := logBuf.String()
			for _, want := range []string{`"plugin":"test/boom"`, `"hook":"` + h.String() + `"`, "secret detail", `"level":"error"`} {
				if !strings.Contains(log, want) {
					t.Errorf("log %q lacks %s", log, want)
				}
			}
		})
	}
	t.Run("blocking plugin on the workpool", func(t *testing.T) {
		var logBuf bytes.Buffer
		ch := plugins.NewChain(&probe{name: "test/slow-boom", blocks: []plugins.Hook{plugins.HookQueue}, panicWith: errors.New("disk on fire")})
		c := &plugins.Conn{ID: "t.1", Log: logTo(&logBuf)}
		call := &plugins.Call{Hook: plugins.HookQueue, Msg: &plugins.Message{}}
		_, next, done := ch.Step(c, call, 0)
		if done {
			t.Fatal("Step ran a blocking hook inline")
		}
		res := ch.RunFrom(c, call, next)
		if got := wire(plugins.HookQueue, res); got != internal {
			t.Errorf("client reads %q, want %q", got, internal)
		}
		if !strings.Contains(logBuf.String(), `"plugin":"test/slow-boom"`) {
			t.Errorf("log %q lacks the plugin name", logBuf.String())
		}
	})
	t.Run("no logger", func(t *testing.T) {
		ch := plugins.NewChain(&probe{name: "test/boom", panicWith: 42})
		c := &plugins.Conn{ID: "t.1"}
		res, _, _ := ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt}, 0)
		if got := wire(plugins.HookRcpt, res); got != internal {
			t.Errorf("client reads %q, want %q", got, internal)
		}
	})
	t.Run("disconnect hook", func(t *testing.T) {
		ch := plugins.NewChain(&probe{name: "test/boom", panicWith: "x"}, &probe{name: "after"})
		c := &plugins.Conn{ID: "t.1"}
		ch.Step(c, &plugins.Call{Hook: plugins.HookDisconnect}, 0) // must not panic
	})
}

// TestPanicValueIsLogged checks that the log says what the panic was when
// the value is an error, as runtime errors (index out of range) and
// panic(err) are.
func TestPanicValueIsLogged(t *testing.T) {
	for _, v := range []any{errors.New("disk on fire"), indexPanic()} {
		var logBuf bytes.Buffer
		ch := plugins.NewChain(&probe{name: "test/boom", panicWith: v})
		ch.Step(&plugins.Conn{ID: "t.1", Log: logTo(&logBuf)}, &plugins.Call{Hook: plugins.HookRcpt}, 0)
		if want := v.(error).Error(); !strings.Contains(logBuf.String(), want) {
			t.Errorf("log %q lacks the panic %q", logBuf.String(), want)
		}
	}
}

// indexPanic returns the value of a real index-out-of-range panic.
func indexPanic() (v any) {
	defer func() { v = recover() }()
	var s []int
	i := len(os.Args) + 1
	_ = s[i]
	return nil
}

func TestQueueNeedsAnAcceptingPlugin(t *testing.T) {
	const internal = "451 4.3.0 Internal error, try again later\r\n"
	for _, tc := range []struct {
		name string
		ch   *plugins.Chain
	}{
		{"no plugins at all", plugins.NewChain()},
		{"no queue plugin", plugins.NewChain(rcptOnly{})},
		{"queue plugins without an opinion", plugins.NewChain(&probe{name: "a"}, &probe{name: "b"})},
		{"a blocking queue plugin without an opinion", plugins.NewChain(&probe{name: "a", blocks: []plugins.Hook{plugins.HookQueue}})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &plugins.Conn{ID: "t.1"}
			call := &plugins.Call{Hook: plugins.HookQueue, Msg: plugins.NewMessage([]byte("x\r\n"), "")}
			res, next, done := tc.ch.Step(c, call, 0)
			if !done {
				res = tc.ch.RunFrom(c, call, next)
			}
			if res.Action != plugins.TempFail {
				t.Errorf("action = %s, want tempfail", res.Action)
			}
			if got := wire(plugins.HookQueue, res); got != internal {
				t.Errorf("client reads %q, want %q (never 250)", got, internal)
			}
		})
	}
	t.Run("an accepting queue plugin", func(t *testing.T) {
		ch := plugins.NewChain(&probe{name: "a"}, &probe{name: "q", res: plugins.OK()})
		res, _, _ := ch.Step(&plugins.Conn{ID: "t.1"}, &plugins.Call{Hook: plugins.HookQueue, Msg: &plugins.Message{}}, 0)
		if got := wire(plugins.HookQueue, res); got != "250 2.0.0 Ok: queued\r\n" {
			t.Errorf("client reads %q, want the default 250", got)
		}
	})
}

func TestReplyFor(t *testing.T) {
	reply := func(a plugins.Action, code int, enh, text string) plugins.Result {
		return plugins.Result{Action: a, Reply: smtpproto.Reply{Code: code, Enhanced: enh, Text: text}}
	}
	for _, tc := range []struct {
		name string
		hook plugins.Hook
		res  plugins.Result
		want string
	}{
		{"reject default", plugins.HookRcpt, plugins.Result{Action: plugins.Reject}, "550 5.7.1 Rejected\r\n"},
		{"reject default at connect", plugins.HookConnect, plugins.Result{Action: plugins.Reject}, "554 5.7.1 Rejected\r\n"},
		{"reject_disconnect default", plugins.HookMail, plugins.Result{Action: plugins.RejectDisconnect}, "550 5.7.1 Rejected\r\n"},
		{"reject_disconnect at connect", plugins.HookConnect, plugins.Result{Action: plugins.RejectDisconnect}, "554 5.7.1 Rejected\r\n"},
		{"tempfail default", plugins.HookRcpt, plugins.Result{Action: plugins.TempFail}, "451 4.3.0 Temporary failure, try again later\r\n"},
		{"tempfail default at connect", plugins.HookConnect, plugins.Result{Action: plugins.TempFail}, "421 4.3.0 Temporary failure, try again later\r\n"},
		{"tempfail_disconnect default", plugins.HookData, plugins.Result{Action: plugins.TempFailDisconnect}, "451 4.3.0 Temporary failure, try again later\r\n"},
		{"accept at queue", plugins.HookQueue, plugins.OK(), "250 2.0.0 Ok: queued\r\n"},
		{"custom reject kept", plugins.HookRcpt, plugins.Deny(553, "5.1.8", "Bad sender domain"), "553 5.1.8 Bad sender domain\r\n"},
		{"custom tempfail kept", plugins.HookRcpt, plugins.DenySoft(450, "4.2.1", "Mailbox busy"), "450 4.2.1 Mailbox busy\r\n"},
		{"custom reject at connect kept", plugins.HookConnect, plugins.Deny(550, "5.7.1", "Listed"), "550 5.7.1 Listed\r\n"},
		{"reject with text only", plugins.HookRcpt, reply(plugins.Reject, 0, "", "Go away"), "550 5.7.1 Go away\r\n"},
		{"reject with a 4xx reply", plugins.HookRcpt, reply(plugins.Reject, 450, "4.2.0", "Busy"), "550 5.7.1 Busy\r\n"},
		{"reject with a 2xx reply", plugins.HookMail, reply(plugins.Reject, 250, "2.1.0", "Ok"), "550 5.7.1 Ok\r\n"},
		{"reject keeps a 5.x.x code", plugins.HookRcpt, reply(plugins.Reject, 250, "5.1.1", "No such user"), "550 5.1.1 No such user\r\n"},
		{"tempfail with a 5xx reply", plugins.HookRcpt, reply(plugins.TempFail, 550, "5.1.1", "No such user"), "451 4.3.0 No such user\r\n"},
		{"tempfail with a 2xx reply at connect", plugins.HookConnect, reply(plugins.TempFail, 220, "", "Hello"), "421 4.3.0 Hello\r\n"},
		{"tempfail_disconnect with a 5xx reply", plugins.HookRcpt, reply(plugins.TempFailDisconnect, 554, "5.7.1", "No"), "451 4.3.0 No\r\n"},
		{"internal error", plugins.HookRcpt, plugins.InternalError(), "451 4.3.0 Internal error, try again later\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := wire(tc.hook, tc.res); got != tc.want {
				t.Errorf("%s at %s: client reads %q, want %q", tc.res.Action, tc.hook, got, tc.want)
			}
		})
	}
	t.Run("enhanced code of the wrong class", func(t *testing.T) {
		// The reply code is right, the enhanced code is not: what goes on
		// the wire must still carry an enhanced code of the reply's class.
		for _, tc := range []struct {
			res  plugins.Result
			want string
		}{
			{reply(plugins.Reject, 550, "4.7.1", "No"), "550 5."},
			{reply(plugins.TempFail, 451, "5.7.1", "Later"), "451 4."},
		} {
			if got := wire(plugins.HookRcpt, tc.res); !strings.HasPrefix(got, tc.want) {
				t.Errorf("%s with %#v: client reads %q, want it to start %q", tc.res.Action, tc.res.Reply, got, tc.want)
			}
		}
	})
	t.Run("accept without a reply leaves the text to the session", func(t *testing.T) {
		for _, h := range []plugins.Hook{plugins.HookConnect, plugins.HookHelo, plugins.HookMail, plugins.HookRcpt, plugins.HookData} {
			for _, r := range []plugins.Result{plugins.OK(), plugins.NoOpinion()} {
				if rep := plugins.ReplyFor(h, r); !rep.IsZero() {
					t.Errorf("%s at %s: reply %#v, want the zero Reply", r.Action, h, rep)
				}
			}
		}
	})
}

// TestRefusalTextNeverOk checks that a refusal that sets only a code (or a
// code and an enhanced code) gets a default text, not the "Ok" of the zero
// Reply.
func TestRefusalTextNeverOk(t *testing.T) {
	for _, r := range []plugins.Result{
		plugins.Deny(550, "5.7.1", ""),
		plugins.Deny(554, "", ""),
		plugins.DenySoft(451, "", ""),
		plugins.DenySoft(450, "4.2.1", ""),
	} {
		if got := wire(plugins.HookRcpt, r); strings.HasSuffix(got, " Ok\r\n") {
			t.Errorf("%s with %#v: client reads %q", r.Action, r.Reply, got)
		}
	}
}

// TestAcceptReplyIsPositive checks that an Accept is never turned into a
// refusal by a custom reply of the wrong class: at the queue hook that
// would tell the client 4xx/5xx for a message the plugin has stored.
func TestAcceptReplyIsPositive(t *testing.T) {
	for _, h := range []plugins.Hook{plugins.HookRcpt, plugins.HookQueue} {
		for _, code := range []int{451, 550} {
			r := plugins.Result{Action: plugins.Accept, Reply: smtpproto.Reply{Code: code, Text: "Stored"}}
			if got := wire(h, r); !strings.HasPrefix(got, "2") {
				t.Errorf("accept with a %d reply at %s: client reads %q", code, h, got)
			}
		}
	}
}

func TestActionDisconnects(t *testing.T) {
	for a, want := range map[plugins.Action]bool{
		plugins.Continue: false, plugins.Accept: false, plugins.Reject: false, plugins.TempFail: false,
		plugins.RejectDisconnect: true, plugins.TempFailDisconnect: true,
	} {
		if a.Disconnects() != want {
			t.Errorf("%s.Disconnects() = %v, want %v", a, !want, want)
		}
	}
}

func TestBuildUnknownPlugin(t *testing.T) {
	cfg := configDir(t, map[string]string{"plugins": "chaintest/closer\nchaintest/alpha\nno.such/plugin\n"})
	before := closes.Load()
	ch, err := plugins.Build(cfg)
	if err == nil {
		ch.Close()
		t.Fatal("Build accepted an unknown plugin")
	}
	msg := err.Error()
	for _, want := range []string{"plugins", `"no.such/plugin"`, "chaintest/alpha", "chaintest/beta", "chaintest/gamma"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %s", msg, want)
		}
	}
	if closes.Load() != before+1 {
		t.Errorf("the plugins built before the unknown one were not closed")
	}
}

func TestBuildUnknownPluginNamesLine(t *testing.T) {
	cfg := configDir(t, map[string]string{"plugins": "# first line is a comment\nchaintest/alpha\nno.such/plugin\n"})
	_, err := plugins.Build(cfg)
	if err == nil || !strings.Contains(err.Error(), "plugins:3") {
		t.Errorf("error %v does not name plugins:3", err)
	}
}

func TestBuildFactoryError(t *testing.T) {
	cfg := configDir(t, map[string]string{"plugins": "chaintest/closer\nchaintest/broken\nchaintest/alpha\n"})
	before := closes.Load()
	ch, err := plugins.Build(cfg)
	if err == nil {
		ch.Close()
		t.Fatal("Build ignored a plugin's setup error")
	}
	if !strings.Contains(err.Error(), "broken.ini: level") {
		t.Errorf("error %q is not the plugin's own", err)
	}
	if closes.Load() != before+1 {
		t.Errorf("the plugins built before the failing one were not closed")
	}
}

func TestBuildEmpty(t *testing.T) {
	ch, err := plugins.Build(configDir(t, map[string]string{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Names()) != 0 || ch.Has(plugins.HookRcpt) {
		t.Errorf("a config without a plugins file built %q", ch.Names())
	}
}

func TestRegister(t *testing.T) {
	names := plugins.Registered()
	if !strings.Contains(strings.Join(names, " "), "chaintest/alpha chaintest/beta") {
		t.Errorf("Registered() = %q, want the test plugins in sorted order", names)
	}
	defer func() {
		v := recover()
		if v == nil {
			t.Fatal("a second Register of the same name did not panic")
		}
		if !strings.Contains(v.(string), "chaintest/alpha") {
			t.Errorf("panic %q does not name the plugin", v)
		}
	}()
	plugins.Register("chaintest/alpha", func(*config.Config) (plugins.Plugin, error) { return rcptOnly{}, nil })
}

func TestHas(t *testing.T) {
	ch := plugins.NewChain(rcptOnly{})
	if !ch.Has(plugins.HookRcpt) || ch.Has(plugins.HookQueue) || ch.Has(plugins.HookConnect) {
		t.Error("Has does not match the hooks the plugin implements")
	}
	if err := ch.Close(); err != nil {
		t.Errorf("Close of plugins without Close: %v", err)
	}
}

func TestNotes(t *testing.T) {
	c := &plugins.Conn{ID: "w1.7"}
	if c.Note("spf") != nil {
		t.Fatal("a fresh connection has a note")
	}
	c.SetNote("spf", "pass")
	c.SetNote("score", 3)
	if c.Note("spf") != "pass" || c.Note("score") != 3 {
		t.Errorf("notes = %v, %v", c.Note("spf"), c.Note("score"))
	}

	now := time.Date(2024, 3, 5, 14, 7, 9, 0, time.UTC)
	tx := c.BeginTx("sender@example.org", now)
	if c.Tx != tx || tx.ID != "w1.7.1" || tx.From != "sender@example.org" || !tx.Started.Equal(now) {
		t.Fatalf("BeginTx = %+v", tx)
	}
	if tx.Note("spf") != nil {
		t.Error("connection notes leak into the transaction")
	}
	tx.SetNote("spam", true)
	if tx.Note("spam") != true || c.Note("spam") != nil {
		t.Error("transaction notes are not kept apart from connection notes")
	}

	c.EndTx()
	if c.Tx != nil {
		t.Error("EndTx left the transaction")
	}
	if c.Note("spf") != "pass" {
		t.Error("EndTx dropped a connection note")
	}
	tx2 := c.BeginTx("", now)
	if tx2.ID != "w1.7.2" || tx2.From != "" {
		t.Errorf("second transaction = %q from %q, want w1.7.2 from the null sender", tx2.ID, tx2.From)
	}
	if tx2.Note("spam") != nil {
		t.Error("a new transaction inherited the last one's notes")
	}
	// A MAIL after a MAIL without EndTx (the host replaced the
	// transaction) still gets a fresh id.
	if tx3 := c.BeginTx("a@example.org", now); tx3.ID != "w1.7.3" {
		t.Errorf("third transaction id = %q, want w1.7.3", tx3.ID)
	}
	var zero plugins.Transaction
	if zero.Note("x") != nil {
		t.Error("a zero Transaction has a note")
	}
}

// byRecipient blocks at RCPT only for the recipients not in inline, as a
// cache would; it also has a ConnBlocker that would block every call.
type byRecipient struct {
	probe
	inline map[string]bool
}

func (p *byRecipient) BlocksCall(_ *plugins.Conn, call *plugins.Call) bool {
	return !p.inline[call.Arg]
}
func (p *byRecipient) BlocksConn(*plugins.Conn, plugins.Hook) bool { return true }

func TestCallBlockerSeesTheRecipient(t *testing.T) {
	p := &byRecipient{probe: probe{name: "cache", blocks: []plugins.Hook{plugins.HookRcpt}, res: plugins.OK()},
		inline: map[string]bool{"known@example.com": true}}
	ch := plugins.NewChain(p)
	for to, wantDone := range map[string]bool{"known@example.com": true, "other@example.com": false} {
		c := &plugins.Conn{ID: "t.1"}
		_, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt, Arg: to}, 0)
		if done != wantDone {
			t.Errorf("RCPT TO:<%s>: Step done = %v, want %v (BlocksCall decides, not BlocksConn)", to, done, wantDone)
		}
	}
}
