package rcptvalid_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/nexthop/nexthoptest"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/loop"
	"loopmx/plugins"
	_ "loopmx/plugins/queue/smtp_forward"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	rcptvalid "loopmx/plugins/rcpt_to.valid"
)

var dialer = servertest.Dialer{Enhanced: servertest.Always}

// recipients is the file of most tests: addresses, an alias, a
// catch-all domain and a domain alias.
const recipients = `# who exists here
bob@example.com
Alice@Example.COM
sales@example.com: alice@example.com, bob@example.com   # an alias
info@example.com bob@example.com                        # Postfix's form
@example.org                                            # every local part
@example.net: @example.com                              # x@example.net is x@example.com
`

// files is a config directory: rcpt_to.valid before the relay check,
// forwarding to backend.
func files(backend string, extra map[string]string) map[string]string {
	f := map[string]string{
		"plugins":           "rcpt_to.valid\nrcpt_to.in_host_list\nqueue/smtp_forward\n",
		"host_list":         "example.com\nexample.org\nexample.net\nexample.info\n",
		"valid_recipients":  recipients,
		"smtp_forward.ini":  "hosts = " + backend + "\n",
		"rcpt_to.valid.ini": "",
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

const unknown = "550 5.1.1 <%s>: Recipient address rejected: User unknown"

// rcpts sends one RCPT per recipient in a new transaction and requires
// each reply to start as want says ("250" or a whole refusal line with
// %s for the address).
func rcpts(t *testing.T, addr string, want map[string]string) {
	t.Helper()
	c := dialer.Hello(t, addr)
	defer c.Quit()
	c.Cmd("MAIL FROM:<sender@example.net>", "250")
	for to, w := range want {
		c.Send("RCPT TO:<" + to + ">")
		got := c.Next().Last()
		if w = strings.ReplaceAll(w, "%s", to); !strings.HasPrefix(got, w) {
			t.Errorf("RCPT TO:<%s>: got %q, want %q", to, got, w)
		}
	}
}

func TestRecipientsFromTheFile(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, files(backend.Addr, nil))
	rcpts(t, srv.Addr, map[string]string{
		"bob@example.com":          "250",
		"BOB@EXAMPLE.COM":          "250", // case does not matter
		"alice@example.com":        "250",
		"bob+lists@example.com":    "250", // a sub-address of bob
		"bob+@example.com":         "250",
		"sales@example.com":        "250", // an alias
		"info@example.com":         "250",
		"postmaster@example.com":   "250", // RFC 5321 4.5.1, listed or not
		"anyone@example.org":       "250", // the catch-all
		"alice+x@example.net":      "250", // the domain alias, with a tag
		"nobody@example.com":       unknown,
		"bobby@example.com":        unknown,
		"nobody+bob@example.com":   unknown,
		"nobody@example.net":       unknown,
		"someone@example.info":     "250",                       // no list covers it: in_host_list accepts
		"someone@elsewhere.test":   "550 5.7.1 Relaying denied", // and refuses relaying
		"postmaster@elsewhere.net": "550 5.7.1 Relaying denied",
	})
	if msgs := backend.Messages(); len(msgs) != 0 {
		t.Errorf("the backend got %d messages; no DATA was sent", len(msgs))
	}
}

// TestPipelinedRecipients: a client that pipelines its whole envelope
// gets one 550 among its replies, and the message goes to the others.
func TestPipelinedRecipients(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	srv := servertest.Start(t, files(backend.Addr, nil))
	c := dialer.Hello(t, srv.Addr)
	c.Send("MAIL FROM:<sender@example.net>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<nobody@example.com>\r\n" +
		"RCPT TO:<anyone@example.org>\r\nRCPT TO:<bob+x@example.com>\r\nDATA")
	for i, want := range []string{"250 2.1.0", "250 2.1.5", "550 5.1.1 <nobody@example.com>", "250 2.1.5", "250 2.1.5", "354"} {
		if got := c.Next().Last(); !strings.HasPrefix(got, want) {
			t.Errorf("pipelined reply %d: %q, want %q", i+1, got, want)
		}
	}
	c.Cmd("Subject: hi\r\n\r\nhello\r\n.", "250 2.0.0")
	c.Quit()
	msgs := backend.Messages()
	if len(msgs) != 1 {
		t.Fatalf("the backend got %d messages, want 1", len(msgs))
	}
	if want := []string{"bob@example.com", "anyone@example.org", "bob+x@example.com"}; !slices.Equal(msgs[0].Rcpts, want) {
		t.Errorf("delivered to %q, want %q", msgs[0].Rcpts, want)
	}
}

// step runs the rcpt hook of ch for to as the event loop does and reports
// whether it was answered inline, and with what.
func step(t *testing.T, ch *plugins.Chain, to string) (plugins.Result, bool) {
	t.Helper()
	c := &plugins.Conn{ID: "t.1"}
	c.BeginTx("sender@example.net", time.Now())
	res, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt, Arg: to}, 0)
	return res, done
}

func TestFileAnswersInline(t *testing.T) {
	ch, err := servertest.Build(t, files("127.0.0.1:1", nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"bob@example.com", "nobody@example.com", "x@example.org", "x@elsewhere.test"} {
		if _, done := step(t, ch, to); !done {
			t.Errorf("RCPT TO:<%s> went to the workpool; the file is in memory", to)
		}
	}
}

// TestReload: the file is read again when the config is reloaded (HUP);
// connections opened before finish on the old list.
func TestReload(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	dir := servertest.WriteDir(t, files(backend.Addr, nil))
	srv := servertest.StartDir(t, dir)
	old := dialer.Hello(t, srv.Addr)
	old.Cmd("MAIL FROM:<sender@example.net>", "250")
	old.Cmd("RCPT TO:<carol@example.com>", "550 5.1.1")

	servertest.Write(t, dir, "valid_recipients", recipients+"carol@example.com\n")
	cfg := servertest.LoadDir(t, dir)
	chain, err := plugins.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	retired := make(chan struct{})
	if err := srv.Loop.Reload(chain, loop.OptionsFrom(cfg, zerolog.Nop()).Proto, func() { close(retired) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	rcpts(t, srv.Addr, map[string]string{"carol@example.com": "250", "bob@example.com": "250"})
	old.Cmd("RCPT TO:<carol@example.com>", "550 5.1.1") // still the old list
	old.Quit()
	select {
	case <-retired:
	case <-time.After(servertest.IOTimeout):
		t.Fatal("the old chain was not retired after its last connection ended")
	}
}

func TestRedis(t *testing.T) {
	rs := redistest.Start(t)
	backend := nexthoptest.Start(t, nexthoptest.Options{})
	start := func(fail string) *servertest.Server {
		dir := servertest.WriteDir(t, files(backend.Addr, map[string]string{
			"host_list":         "example.com\nexample.org\nexample.net\nexample.info\nexample.biz\nwrong.example\n",
			"valid_recipients":  "@example.org\nstatic@example.com\n",
			"rcpt_to.valid.ini": "redis = true\nfail = " + fail + "\n",
		}))
		rs.WriteINI(dir, "breaker_backoff = 1m")
		return servertest.StartDir(t, dir)
	}
	open, closed := start("open"), start("closed")
	r := rs.Client()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.SAdd(ctx, "valid_rcpt:example.com", "bob", "alice").Err())
	must(r.HSet(ctx, "valid_rcpt:example.net", "carol", "carol@mailstore.example").Err())
	must(r.SAdd(ctx, "valid_rcpt:example.info", "@").Err())
	must(r.Set(ctx, "valid_rcpt:wrong.example", "not a set", 0).Err())

	for _, srv := range []*servertest.Server{open, closed} {
		rcpts(t, srv.Addr, map[string]string{
			"bob@example.com":        "250",
			"bob+tag@example.com":    "250",
			"static@example.com":     "250", // from the file
			"anyone@example.org":     "250", // the file's catch-all
			"carol@example.net":      "250", // a hash
			"anyone@example.info":    "250", // "@" in the set
			"dave@example.com":       unknown,
			"dave@example.net":       unknown,
			"postmaster@example.net": "250",
			"anyone@example.biz":     "250", // no key: Redis does not cover it
		})
	}
	// Redis is live: a recipient added there exists at once.
	must(r.SAdd(ctx, "valid_rcpt:example.com", "dave").Err())
	rcpts(t, open.Addr, map[string]string{"dave@example.com": "250"})

	// A key of the wrong type is the operator's mistake: logged, and
	// answered as fail says.
	rcpts(t, open.Addr, map[string]string{"x@wrong.example": "250"})
	rcpts(t, closed.Addr, map[string]string{"x@wrong.example": "451 4.3.0"})
	if !strings.Contains(open.Log.String(), "neither a set nor a hash") {
		t.Errorf("no log line about the key of the wrong type:\n%s", open.Log)
	}

	// Redis down: fail = open lets the recipient through, fail = closed
	// makes the client retry; what the file knows is still known.
	rs.Kill()
	rcpts(t, open.Addr, map[string]string{"erin@example.com": "250", "static@example.com": "250"})
	rcpts(t, closed.Addr, map[string]string{"erin@example.com": "451 4.3.0", "static@example.com": "250", "x@example.org": "250"})
	if !strings.Contains(closed.Log.String(), `"redis unavailable"`) {
		t.Errorf("the outage was not logged:\n%s", closed.Log)
	}
}

func TestConfigErrors(t *testing.T) {
	rs := redistest.Start(t)
	withRedis := func(f map[string]string) map[string]string {
		f["redis.ini"] = "server = " + rs.Addr + "\n"
		return f
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"not an address", files("127.0.0.1:1", map[string]string{"valid_recipients": "bob@example.com\nbob example\n"}),
			[]string{"valid_recipients:2", `"bob example"`, "is not an address"}},
		{"a domain outside host_list", files("127.0.0.1:1", map[string]string{"valid_recipients": "\n\nbob@example.edu\n"}),
			[]string{"valid_recipients:3", "example.edu is not in host_list", "rcpt_to.in_host_list would refuse"}},
		{"after in_host_list", files("127.0.0.1:1", map[string]string{"plugins": "rcpt_to.in_host_list\nrcpt_to.valid\nqueue/smtp_forward\n"}),
			[]string{"plugins:2", "rcpt_to.valid comes after rcpt_to.in_host_list (line 1)"}},
		{"no file", files("127.0.0.1:1", map[string]string{"rcpt_to.valid.ini": "file = users\n"}),
			[]string{rcptvalid.Name + ".ini", "file", "users", "no such file"}},
		{"a tagged entry", files("127.0.0.1:1", map[string]string{"valid_recipients": "bob+x@example.com\n"}),
			[]string{"valid_recipients:1", "sub-address separator"}},
		{"an alias of an alias", files("127.0.0.1:1", map[string]string{"valid_recipients": "@example.org: @example.net\n@example.net: @example.com\nbob@example.com\n"}),
			[]string{"valid_recipients:1", "@example.org", "itself an alias"}},
		{"an alias to nowhere", files("127.0.0.1:1", map[string]string{"valid_recipients": "@example.org: @example.net\n"}),
			[]string{"valid_recipients:1", "no line of the file lists"}},
		{"redis without redis.ini", files("127.0.0.1:1", map[string]string{"rcpt_to.valid.ini": "redis = true\n"}),
			[]string{rcptvalid.Name + ".ini", "redis", "needs redis.ini"}},
		{"nothing to check", withRedis(files("127.0.0.1:1", map[string]string{"rcpt_to.valid.ini": "file =\n"})),
			[]string{"file", "nothing to check"}},
		{"a bad fail", files("127.0.0.1:1", map[string]string{"rcpt_to.valid.ini": "fail = maybe\n"}),
			[]string{"fail", `"maybe"`}},
		{"an unknown key", files("127.0.0.1:1", map[string]string{"rcpt_to.valid.ini": "files = x\n"}),
			[]string{rcptvalid.Name + ".ini", `"files"`}},
	} {
		t.Run(tc.name, func(t *testing.T) { servertest.CheckBuild(t, tc.files, tc.want...) })
	}
	// Redis alone, without a file, is a valid setup.
	servertest.CheckBuild(t, withRedis(files("127.0.0.1:1", map[string]string{"rcpt_to.valid.ini": "file =\nredis = yes\n"})))
}

// TestRedisOnlyWhenNeeded: with Redis, what the file answers stays on the
// event loop, and so does a domain Redis is not asked about; only the
// rest goes to the workpool.
func TestRedisOnlyWhenNeeded(t *testing.T) {
	rs := redistest.Start(t)
	ch, err := servertest.Build(t, files("127.0.0.1:1", map[string]string{
		"redis.ini":         "server = " + rs.Addr + "\n",
		"valid_recipients":  "bob@example.com\n@example.org\n",
		"rcpt_to.valid.ini": "redis = true\n",
	}))
	if err != nil {
		t.Fatal(err)
	}
	for to, inline := range map[string]bool{
		"bob@example.com":        true,
		"bob+x@example.com":      true,
		"x@example.org":          true,
		"x@elsewhere.test":       true, // not in host_list: a relay attempt
		"postmaster":             true,
		"postmaster@example.net": true,
		"alice@example.com":      false,
		"x@example.net":          false,
	} {
		if _, done := step(t, ch, to); done != inline {
			t.Errorf("RCPT TO:<%s>: inline %v, want %v", to, done, inline)
		}
	}
}
