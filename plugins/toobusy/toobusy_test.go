package toobusy_test

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	"loopmx/plugins/toobusy"
)

const refusal = "421 4.7.0 mx.test Too busy, try again later"

// dialer makes the test clients; every refusal they read, the banner's
// included, must carry an enhanced status code.
var dialer = servertest.Dialer{Enhanced: servertest.Always}

// testPlugins holds the instances the factories of the test plugins hand
// to plugins.Build; a test sets them before it starts a server.
var testPlugins = map[string]plugins.Plugin{}

func init() {
	for _, name := range []string{"test/spin", "test/hold"} {
		plugins.Register(name, func(*config.Config) (plugins.Plugin, error) {
			p, ok := testPlugins[name]
			if !ok {
				return nil, fmt.Errorf("plugin/%s: the test set no instance", name)
			}
			return p, nil
		})
	}
}

func use(t *testing.T, p plugins.Plugin) {
	testPlugins[p.Name()] = p
	t.Cleanup(func() { delete(testPlugins, p.Name()) })
}

// spin is a connect hook that, while armed, burns the CPU of the event
// loop it runs on (inline, like a plugin that misbehaves) for d.
type spin struct {
	d       time.Duration
	armed   atomic.Bool
	started chan struct{}
	spins   atomic.Int32
	ended   atomic.Int64 // Unix nanoseconds of the end of the last spin
}

func (*spin) Name() string { return "test/spin" }

func (s *spin) Connect(*plugins.Conn) plugins.Result {
	if !s.armed.Load() {
		return plugins.NoOpinion()
	}
	s.spins.Add(1)
	select {
	case s.started <- struct{}{}:
	default:
	}
	for start := time.Now(); time.Since(start) < s.d; {
	}
	s.ended.Store(time.Now().UnixNano())
	return plugins.NoOpinion()
}

// hold is a blocking MAIL hook that waits on the workpool until release.
type hold struct {
	entered chan struct{}
	gate    chan struct{}
}

func (*hold) Name() string               { return "test/hold" }
func (*hold) Blocks(h plugins.Hook) bool { return h == plugins.HookMail }
func (h *hold) release()                 { close(h.gate) }
func (h *hold) Mail(*plugins.Conn, string) plugins.Result {
	h.entered <- struct{}{}
	<-h.gate
	return plugins.NoOpinion()
}

// acceptedAgain dials until the server greets again (the loop's lag is
// the worst of the last half-second windows, so it takes up to a second
// after the load ends) and returns the number of refusals met meanwhile.
func acceptedAgain(t *testing.T, addr string) int {
	t.Helper()
	deadline := time.Now().Add(servertest.IOTimeout)
	for refused := 0; ; refused++ {
		c := dialer.Dial(t, addr)
		r, err := c.Read()
		if err != nil {
			t.Fatalf("reading the greeting: %v", err)
		}
		line := r.Last()
		if strings.HasPrefix(line, "220 ") {
			c.Cmd("QUIT", "221 ")
			return refused
		}
		if line != refusal {
			t.Fatalf("got %q, want the banner or %q", line, refusal)
		}
		c.ExpectEOF()
		if time.Now().After(deadline) {
			t.Fatalf("still refused after the load ended (%d refusals)", refused+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLoadedLoopRefusesNewConnections(t *testing.T) {
	const spinFor = 200 * time.Millisecond
	sp := &spin{d: spinFor, started: make(chan struct{}, 1)}
	use(t, sp)
	s := servertest.Start(t, map[string]string{"plugins": "toobusy\ntest/spin\n"})

	// Client A arrives while the server is idle; its connect hook then
	// keeps the server's only event loop busy.
	sp.armed.Store(true)
	a := dialer.Dial(t, s.Addr)
	select {
	case <-sp.started:
	case <-time.After(servertest.IOTimeout):
		t.Fatal("the spin never started")
	}

	// Client B connects during the spin. It waits in the backlog until
	// the loop is free, and then must be refused at once, by toobusy,
	// before the next plugin (which would spin again) sees it.
	b := dialer.Dial(t, s.Addr)
	if got := b.Expect("4"); got != refusal {
		t.Fatalf("B got %q, want %q", got, refusal)
	}
	answered := time.Now()
	b.ExpectEOF()
	sp.armed.Store(false)
	if late := answered.Sub(time.Unix(0, sp.ended.Load())); late >= spinFor {
		t.Errorf("B's refusal came %v after the spin ended, want well under another spin (%v)", late, spinFor)
	}
	if n := sp.spins.Load(); n != 1 {
		t.Errorf("the spinning plugin ran %d times, want once: a refused connection reached it", n)
	}

	// A was admitted before the load and is served.
	a.Expect("220 mx.test ")
	a.Cmd("EHLO client.test", "250")
	a.Cmd("QUIT", "221 ")

	// The load is gone: new connections are served again.
	acceptedAgain(t, s.Addr)

	log := s.Log.String()
	for _, want := range []string{
		`"level":"info","plugin":"toobusy","reason":"event loop lag","refused":1,`,
		`"max_lag_ms":70`,
		`"level":"debug","plugin":"toobusy","loop_lag_ms":`,
		`"plugin":"toobusy","code":421`, // the loop's own line for the refusal
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

func TestQueuedWorkpoolRefusesNewConnections(t *testing.T) {
	h := &hold{entered: make(chan struct{}, 8), gate: make(chan struct{})}
	use(t, h)
	s := servertest.Start(t, map[string]string{
		"smtp.ini":    servertest.SMTPINI + "threadpool_size = 1\nwork_queue_size = 16\n",
		"plugins":     "toobusy\ntest/hold\n",
		"toobusy.ini": "max_queue = 1\n",
	})
	released := false
	release := func() {
		if !released {
			released = true
			h.release()
		}
	}
	t.Cleanup(release) // before the server stops (cleanups run last first)

	// One MAIL holds the only worker, two more wait in its queue.
	var held []*servertest.Client
	for i := range 3 {
		c := dialer.Dial(t, s.Addr)
		c.Expect("220 ")
		c.Cmd("EHLO client.test", "250")
		c.Send(fmt.Sprintf("MAIL FROM:<s%d@example.org>", i))
		held = append(held, c)
		if i == 0 {
			<-h.entered
		}
	}
	servertest.Eventually(t, 5*time.Millisecond, "two queued jobs", func() bool { return s.Pool.Queued() == 2 })

	d := dialer.Dial(t, s.Addr)
	if got := d.Expect("4"); got != refusal {
		t.Fatalf("got %q with 2 jobs queued and max_queue = 1, want %q", got, refusal)
	}
	d.ExpectEOF()

	release()
	for _, c := range held {
		c.Expect("250 2.1.0")
		c.Cmd("QUIT", "221 ")
	}
	servertest.Eventually(t, 5*time.Millisecond, "an empty queue", func() bool { return s.Pool.Queued() == 0 })
	if n := acceptedAgain(t, s.Addr); n != 0 {
		t.Errorf("%d connections refused after the queue drained", n)
	}
	if log := s.Log.String(); !strings.Contains(log, `"reason":"workpool queue","refused":1,`) {
		t.Errorf("log lacks the refusal:\n%s", log)
	}
}

// load is a LoadReporter with fixed figures.
type load plugins.LoadInfo

func (l load) Load() plugins.LoadInfo { return plugins.LoadInfo(l) }

// connect runs the chain's connect hooks as the loop does and returns what
// the client reads ("" for the banner).
func connect(t *testing.T, ch *plugins.Chain, ld plugins.LoadInfo, logs *bytes.Buffer) string {
	t.Helper()
	got, _ := connectConn(t, ch, ld, logs)
	return got
}

// connectConn is connect that also returns the connection, for its
// findings.
func connectConn(t *testing.T, ch *plugins.Chain, ld plugins.LoadInfo, logs *bytes.Buffer) (string, *plugins.Conn) {
	t.Helper()
	l := zerolog.New(logs)
	c := &plugins.Conn{ID: "t.1", Hostname: "mx.test", LoadSource: load(ld), Log: &l}
	res, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0)
	if !done {
		t.Fatal("toobusy went to the workpool; it must run inline")
	}
	if res.Action == plugins.Continue {
		if res.Delay != 0 {
			t.Fatalf("toobusy asked for a delay of %v", res.Delay)
		}
		return "", c
	}
	return string(plugins.ReplyFor(plugins.HookConnect, res).AppendTo(nil)), c
}

func TestLimits(t *testing.T) {
	const refused = refusal + "\r\n"
	for _, tc := range []struct {
		name     string
		maxLag   time.Duration
		maxQueue int
		ld       plugins.LoadInfo
		want     string
		finding  string // the message of the fail recorded, "" for none
	}{
		{"idle", toobusy.DefaultMaxLag, 0, plugins.LoadInfo{}, "", ""},
		{"lag at the limit", toobusy.DefaultMaxLag, 0, plugins.LoadInfo{LoopLag: 70 * time.Millisecond}, "", ""},
		{"lag over the limit", toobusy.DefaultMaxLag, 0, plugins.LoadInfo{LoopLag: 71 * time.Millisecond}, refused,
			"event loop lag 71ms over max_lag 70ms"},
		{"lag check off", 0, 0, plugins.LoadInfo{LoopLag: time.Hour}, "", ""},
		{"queue check off by default", toobusy.DefaultMaxLag, toobusy.DefaultMaxQueue, plugins.LoadInfo{PoolQueued: 100000}, "", ""},
		{"queue at the limit", toobusy.DefaultMaxLag, 10, plugins.LoadInfo{PoolQueued: 10, PoolBusy: 4, PoolWorkers: 4}, "", ""},
		{"queue over the limit", toobusy.DefaultMaxLag, 10, plugins.LoadInfo{PoolQueued: 11, PoolBusy: 4, PoolWorkers: 4}, refused,
			"workpool queue 11 over max_queue 10"},
		{"busy workers alone are fine", toobusy.DefaultMaxLag, 10, plugins.LoadInfo{PoolBusy: 4, PoolWorkers: 4}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			got, c := connectConn(t, plugins.NewChain(toobusy.New(tc.maxLag, tc.maxQueue)), tc.ld, &logs)
			if got != tc.want {
				t.Errorf("client reads %q, want %q", got, tc.want)
			}
			var want []plugins.Finding
			if tc.finding != "" {
				want = []plugins.Finding{{Plugin: toobusy.Name, Outcome: plugins.Fail, Message: tc.finding}}
			}
			if f, _ := c.Findings(); !reflect.DeepEqual(f, want) {
				t.Errorf("findings %+v, want %+v", f, want)
			}
		})
	}
}

func TestRefusalStopsTheChain(t *testing.T) {
	sp := &spin{started: make(chan struct{}, 1)}
	sp.armed.Store(true)
	ch := plugins.NewChain(toobusy.New(toobusy.DefaultMaxLag, 0), sp)
	var logs bytes.Buffer
	if got := connect(t, ch, plugins.LoadInfo{LoopLag: time.Second}, &logs); got != refusal+"\r\n" {
		t.Fatalf("client reads %q", got)
	}
	if sp.spins.Load() != 0 {
		t.Error("the plugin after toobusy ran for a refused connection")
	}
}

func TestLogIsRateLimited(t *testing.T) {
	ch := plugins.NewChain(toobusy.New(toobusy.DefaultMaxLag, 0))
	var logs bytes.Buffer
	const n = 1000
	for range n {
		connect(t, ch, plugins.LoadInfo{LoopLag: time.Second}, &logs)
	}
	// n refusals take well under a second, so at most two seconds are
	// touched: at most two lines of each kind.
	var info, debug int
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		switch {
		case strings.Contains(l, `"level":"info"`):
			info++
		case strings.Contains(l, `"level":"debug"`):
			debug++
		default:
			t.Errorf("unexpected log line %s", l)
		}
	}
	if info < 1 || info > 2 || debug < 1 || debug > 2 {
		t.Errorf("%d refusals wrote %d info and %d debug lines, want 1 or 2 each:\n%s", n, info, debug, logs.String())
	}
	if !strings.Contains(logs.String(), `"refused":1,`) {
		t.Errorf("the first refusal line does not count 1:\n%s", logs.String())
	}
}

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		name, ini string
		err       []string // empty: must load
	}{
		{"no file", "", nil},
		{"both limits", "max_lag = 100ms\nmax_queue = 64\n", nil},
		{"checks off", "max_lag = 0\nmax_queue = 0\n", nil},
		{"unknown key", "maxlag = 1s\n", []string{"config: toobusy.ini:", `"maxlag"`}},
		{"bad duration", "max_lag = fast\n", []string{"config: toobusy.ini:", "max_lag", `"fast"`}},
		{"negative lag", "max_lag = -1s\n", []string{"config: toobusy.ini:", "max_lag", `"-1s"`}},
		{"negative queue", "max_queue = -5\n", []string{"config: toobusy.ini:", "max_queue", `"-5"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"plugins": "toobusy\n"}
			if tc.ini != "" {
				files["toobusy.ini"] = tc.ini
			}
			servertest.CheckBuild(t, files, tc.err...)
		})
	}
}
