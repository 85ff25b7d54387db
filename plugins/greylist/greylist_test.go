package greylist

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/nexthop/nexthoptest"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/queue/smtp_forward"
	_ "loopmx/plugins/rcpt_to.in_host_list"
)

// fakeClock is the time the plugin sees in these tests: it moves only
// when the test says so.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// useFakeClock makes the plugin read a clock the test moves, until the
// test ends. Set it before any server starts.
func useFakeClock(t *testing.T) *fakeClock {
	f := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	clock = f.now
	t.Cleanup(func() { clock = time.Now })
	return f
}

// vouch is a test plugin that sets the notes other plugins would: the
// verified reverse DNS name for a client from 127.0.0.2, and an SPF
// result for the senders spf-pass@ and spf-fail@.
type vouch struct{}

func (vouch) Name() string { return "greylisttest/vouch" }

func (vouch) Connect(c *plugins.Conn) plugins.Result {
	if c.RemoteIP == netip.MustParseAddr("127.0.0.2") {
		c.SetNote(plugins.RDNSNote, "mail.example.net")
	}
	return plugins.NoOpinion()
}

func (vouch) Mail(c *plugins.Conn, from string) plugins.Result {
	if word, ok := strings.CutPrefix(strings.SplitN(from, "@", 2)[0], "spf-"); ok {
		c.Tx.SetNote("spf", word)
	}
	return plugins.NoOpinion()
}

func init() {
	plugins.Register("greylisttest/vouch", func(*config.Config) (plugins.Plugin, error) { return vouch{}, nil })
}

var dialer = servertest.Dialer{Enhanced: servertest.Always}

// start serves a config directory with greylist (greylist.ini as given)
// in front of the relay check, sharing rs, forwarding to backend.
func start(t *testing.T, rs *redistest.Server, backend, ini string) *servertest.Server {
	t.Helper()
	dir := servertest.WriteDir(t, map[string]string{
		"plugins":          "greylisttest/vouch\ngreylist\nrcpt_to.in_host_list\nqueue/smtp_forward\n",
		"host_list":        "example.com\n",
		"greylist.ini":     ini,
		"smtp_forward.ini": "hosts = " + backend + "\n",
	})
	rs.WriteINI(dir, "breaker_backoff = 1m")
	return servertest.StartDir(t, dir)
}

// rcpt opens a session from 127.0.0.1, sends MAIL FROM:<from> and
// RCPT TO:<to>, and returns the RCPT reply's last line; with deliver
// and a 250, the message is sent too.
func rcpt(t *testing.T, addr, from, to string, deliver bool) string {
	t.Helper()
	return rcptFrom(t, addr, "127.0.0.1", from, to, deliver)
}

func rcptFrom(t *testing.T, addr, ip, from, to string, deliver bool) string {
	t.Helper()
	c := dialer.DialFrom(t, addr, ip)
	c.Expect("220")
	c.Cmd("EHLO client.test", "250")
	c.Cmd("MAIL FROM:<"+from+">", "250")
	c.Send("RCPT TO:<" + to + ">")
	got := c.Next().Last()
	if deliver && strings.HasPrefix(got, "250") {
		c.Cmd("DATA", "354")
		c.Cmd("Subject: hi\r\n\r\nhello\r\n.", "250 2.0.0")
	}
	c.Quit()
	return got
}

// expect requires a reply line to start with want.
func expect(t *testing.T, what, got, want string) {
	t.Helper()
	if !strings.HasPrefix(got, want) {
		t.Errorf("%s: got %q, want %q", what, got, want)
	}
}

// TestRetryAcceptedByTheOtherServer: two loopmx servers share one Redis.
// The first attempt, on one, is greylisted; a retry before the delay, on
// the other, is told how long is left; the retry after the delay is
// accepted by the other and the message delivered.
func TestRetryAcceptedByTheOtherServer(t *testing.T) {
	clk := useFakeClock(t)
	rs := redistest.Start(t)
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	ini := "delay = 1m\nwindow = 1h\nauto_allow = 0\n"
	a, b := start(t, rs, backend.Addr, ini), start(t, rs, backend.Addr, ini)

	expect(t, "first attempt on A", rcpt(t, a.Addr, "sender@example.net", "bob@example.com", true),
		"451 4.7.1 Greylisted, please try again in 60 seconds")
	clk.advance(20 * time.Second)
	expect(t, "early retry on B", rcpt(t, b.Addr, "sender@example.net", "bob@example.com", true),
		"451 4.7.1 Greylisted, please try again in 40 seconds")
	clk.advance(40 * time.Second)
	expect(t, "retry after the delay on B", rcpt(t, b.Addr, "sender@example.net", "bob@example.com", true), "250 2.1.5")
	if msgs := backend.Messages(); len(msgs) != 1 || msgs[0].Rcpts[0] != "bob@example.com" {
		t.Fatalf("the backend got %+v, want the one message to bob", msgs)
	}
	// The triplet is known now, on both servers, under every disguise of
	// the sender's address.
	for _, from := range []string{"sender@example.net", "Sender+news@Example.NET", "prvs=1234abcdef=sender@example.net"} {
		expect(t, "A, known triplet from "+from, rcpt(t, a.Addr, from, "bob@example.com", false), "250")
	}
	expect(t, "B, known triplet with a tagged recipient", rcpt(t, b.Addr, "sender@example.net", "bob+x@example.com", false), "250")
	// Another recipient is another triplet.
	expect(t, "a new recipient", rcpt(t, a.Addr, "sender@example.net", "alice@example.com", false), "451 4.7.1")
	// A retry after the window starts over.
	clk.advance(2 * time.Hour)
	expect(t, "a retry after the window", rcpt(t, b.Addr, "sender@example.net", "alice@example.com", false),
		"451 4.7.1 Greylisted, please try again in 60 seconds")

	if !strings.Contains(a.Log.String(), `"plugin":"greylist","code":451`) {
		t.Errorf("A's log does not name greylist for the 451:\n%s", a.Log)
	}
}

// TestAutoAllow: a client whose retries passed auto_allow times is let
// through for new triplets at the first attempt.
func TestAutoAllow(t *testing.T) {
	clk := useFakeClock(t)
	rs := redistest.Start(t)
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	srv := start(t, rs, backend.Addr, "delay = 10s\nauto_allow = 2\n")
	for _, to := range []string{"one@example.com", "two@example.com"} {
		expect(t, to, rcpt(t, srv.Addr, "sender@example.net", to, false), "451 4.7.1")
		clk.advance(10 * time.Second)
		expect(t, to+" after the delay", rcpt(t, srv.Addr, "sender@example.net", to, false), "250")
	}
	expect(t, "a new triplet of the allowed client", rcpt(t, srv.Addr, "other@example.org", "three@example.com", false), "250")
	// The client is its /24: 127.0.0.2 is allowed too (and vouched for).
	expect(t, "another address of the network", rcptFrom(t, srv.Addr, "127.0.0.3", "x@example.org", "four@example.com", false), "250")
	ttl, err := rs.Client().PTTL(context.Background(), "greylist:c:{127.0.0.0/24}").Result()
	if err != nil || ttl < 34*24*time.Hour {
		t.Errorf("the client's entry expires in %v (%v), want about the 35 days of expire", ttl, err)
	}
}

// TestVouchedClientsAndRelays: a client an earlier plugin vouched for, and
// a recipient outside host_list, are not greylisted.
func TestVouchedClientsAndRelays(t *testing.T) {
	useFakeClock(t)
	rs := redistest.Start(t)
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	srv := start(t, rs, backend.Addr, "")
	expect(t, "FCrDNS", rcptFrom(t, srv.Addr, "127.0.0.2", "x@example.org", "bob@example.com", false), "250")
	expect(t, "SPF pass", rcpt(t, srv.Addr, "spf-pass@example.org", "bob@example.com", false), "250")
	expect(t, "SPF fail", rcpt(t, srv.Addr, "spf-fail@example.org", "bob@example.com", false), "451 4.7.1 Greylisted, please try again in 300 seconds")
	expect(t, "a relay attempt", rcpt(t, srv.Addr, "x@example.org", "bob@elsewhere.test", false), "550 5.7.1 Relaying denied")
	if n, _ := rs.Client().DBSize(context.Background()).Result(); n != 1 {
		t.Errorf("Redis holds %d keys, want only the SPF-fail triplet", n)
	}

	// skip = none greylists everyone.
	none := start(t, rs, backend.Addr, "skip = none\n")
	expect(t, "FCrDNS with skip = none", rcptFrom(t, none.Addr, "127.0.0.2", "x@example.org", "bob@example.com", false), "451 4.7.1")
}

func TestRedisDown(t *testing.T) {
	useFakeClock(t)
	rs := redistest.Start(t)
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	open, closed := start(t, rs, backend.Addr, ""), start(t, rs, backend.Addr, "fail = closed\n")
	rs.Kill()
	for range 2 { // the second is answered inline: the breaker is open
		expect(t, "fail = open", rcpt(t, open.Addr, "x@example.org", "bob@example.com", true), "250")
		expect(t, "fail = closed", rcpt(t, closed.Addr, "x@example.org", "bob@example.com", false), "451 4.3.0")
	}
	if n := len(backend.Messages()); n != 2 {
		t.Errorf("with fail = open the backend got %d messages, want 2", n)
	}
	if !strings.Contains(open.Log.String(), `"redis unavailable"`) {
		t.Errorf("the outage was not logged:\n%s", open.Log)
	}
}

func TestNetwork(t *testing.T) {
	g := &Greylist{v4: 24, v6: 64}
	for ip, want := range map[string]string{
		"192.0.2.77":              "192.0.2.0/24",
		"::ffff:192.0.2.77":       "192.0.2.0/24",
		"2001:db8:1:2:3:4:5:6":    "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::9999": "2001:db8:1:2::/64",
	} {
		if got := g.network(netip.MustParseAddr(ip)); got != want {
			t.Errorf("network(%s) = %s, want %s", ip, got, want)
		}
	}
}

func TestSkipRules(t *testing.T) {
	rules, err := parseSkip("rdns, spf=pass, dnswl=listed")
	if err != nil {
		t.Fatal(err)
	}
	g := &Greylist{skip: rules}
	for _, tc := range []struct {
		conn, tx map[string]any
		want     string
	}{
		{nil, nil, ""},
		{map[string]any{"rdns": "mail.example.net"}, nil, "rdns"},
		{map[string]any{"rdns": ""}, nil, ""},
		{nil, map[string]any{"spf": "pass"}, "spf=pass"},
		{nil, map[string]any{"spf": "PASS (mailfrom)"}, "spf=pass"},
		{nil, map[string]any{"spf": "passed"}, ""},
		{map[string]any{"spf": "pass"}, map[string]any{"spf": "fail"}, ""}, // the transaction's note first
		{map[string]any{"dnswl": "listed by list.dnswl.org"}, nil, "dnswl=listed"},
		{map[string]any{"dnswl": "lookup failed"}, nil, ""},
	} {
		c := &plugins.Conn{}
		for k, v := range tc.conn {
			c.SetNote(k, v)
		}
		c.BeginTx("x@example.org", time.Now())
		for k, v := range tc.tx {
			c.Tx.SetNote(k, v)
		}
		if got := g.vouched(c); got != tc.want {
			t.Errorf("notes %v / %v: vouched by %q, want %q", tc.conn, tc.tx, got, tc.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	base := func(extra map[string]string) map[string]string {
		f := map[string]string{
			"plugins":   "greylist\nrcpt_to.in_host_list\nqueue/smtp_forward\n",
			"host_list": "example.com\n", "smtp_forward.ini": "hosts = 127.0.0.1:1\n",
			"redis.ini": "server = 127.0.0.1:1\n",
		}
		for k, v := range extra {
			f[k] = v
		}
		return f
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"no redis", func() map[string]string { f := base(nil); delete(f, "redis.ini"); return f }(),
			[]string{"greylist.ini", "needs redis.ini"}},
		{"window not over delay", base(map[string]string{"greylist.ini": "delay = 10m\nwindow = 5m\n"}),
			[]string{"window", `"5m"`, "longer than delay"}},
		{"a bad skip", base(map[string]string{"greylist.ini": "skip = spf=\n"}), []string{"skip", `"spf="`}},
		{"a bad prefix", base(map[string]string{"greylist.ini": "ipv4_prefix = 33\n"}), []string{"ipv4_prefix", "8..32"}},
		{"a bad fail", base(map[string]string{"greylist.ini": "fail = shut\n"}), []string{"fail", `"shut"`}},
		{"an unknown key", base(map[string]string{"greylist.ini": "max_age = 35d\n"}), []string{"greylist.ini", `"max_age"`}},
		{"after in_host_list", base(map[string]string{"plugins": "rcpt_to.in_host_list\ngreylist\nqueue/smtp_forward\n"}),
			[]string{"plugins:2", "greylist comes after rcpt_to.in_host_list"}},
	} {
		t.Run(tc.name, func(t *testing.T) { servertest.CheckBuild(t, tc.files, tc.want...) })
	}
}
