package rcptverify_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"loopmx/internal/nexthop/nexthoptest"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/queue/lmtp"
	_ "loopmx/plugins/queue/smtp_forward"
	_ "loopmx/plugins/rcpt_to.in_host_list"
	rcptverify "loopmx/plugins/rcpt_to.verify"
)

var dialer = servertest.Dialer{Enhanced: servertest.Always}

// store answers RCPT as a mail store with no user "nobody" and a
// mailbox "busy" that is locked for now.
func store(to string) string {
	switch {
	case strings.HasPrefix(to, "nobody@"):
		return "550 5.1.1 <" + to + ">: no such user"
	case strings.HasPrefix(to, "busy@"):
		return "450 4.2.1 <" + to + ">: mailbox busy"
	}
	return ""
}

// files is a config directory that verifies the recipients of
// example.com with backend, the next hop of queue/smtp_forward.
func files(backend, ini string) map[string]string {
	return map[string]string{
		"plugins":            "rcpt_to.verify\nrcpt_to.in_host_list\nqueue/smtp_forward\n",
		"host_list":          "example.com\n",
		"smtp_forward.ini":   "hosts = " + backend + "\n",
		"rcpt_to.verify.ini": ini,
	}
}

// rcptCount is the number of RCPT commands the backend was sent: probes
// and deliveries.
func rcptCount(b *nexthoptest.Backend) int {
	n := 0
	for _, v := range b.Verbs() {
		if v == "RCPT" {
			n++
		}
	}
	return n
}

const (
	refused    = "550 5.1.1 <%s>: Recipient address rejected: undeliverable address"
	unverified = "450 4.1.1 <%s>: Recipient address not verified, try again later"
)

// rcpts sends the recipients in one transaction, one at a time, and
// requires each reply to start as want says (%s is the address).
func rcpts(t *testing.T, addr string, want ...string) {
	t.Helper()
	c := dialer.Hello(t, addr)
	defer c.Quit()
	c.Cmd("MAIL FROM:<sender@example.net>", "250")
	for i := 0; i < len(want); i += 2 {
		to, w := want[i], strings.ReplaceAll(want[i+1], "%s", want[i])
		c.Send("RCPT TO:<" + to + ">")
		if got := c.Next().Last(); !strings.HasPrefix(got, w) {
			t.Errorf("RCPT TO:<%s>: got %q, want %q", to, got, w)
		}
	}
}

func TestVerifyWithTheNextHop(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{Rcpt: store})
	srv := servertest.Start(t, files(backend.Addr, ""))
	rcpts(t, srv.Addr,
		"bob@example.com", "250 2.1.5",
		"nobody@example.com", refused,
		"busy@example.com", unverified, // the next hop cannot say yet
		"someone@elsewhere.test", "550 5.7.1 Relaying denied") // not probed
	if n := rcptCount(backend); n != 3 {
		t.Fatalf("the backend was asked %d times, want 3 probes", n)
	}
	// The answers are cached, positive and negative; a 4xx is not.
	rcpts(t, srv.Addr,
		"bob@example.com", "250 2.1.5",
		"BOB@example.com", "250 2.1.5",
		"nobody@example.com", refused,
		"busy@example.com", unverified)
	if n := rcptCount(backend); n != 4 {
		t.Errorf("the backend was asked %d times, want 4: one more probe, for busy@", n)
	}
	if backend.Conns() != 1 {
		t.Errorf("the probes used %d sessions, want the one pooled session", backend.Conns())
	}
	// A pipelined envelope: one 550 among the replies, the message to the
	// others over the same pooled session.
	c := dialer.Hello(t, srv.Addr)
	c.Send("MAIL FROM:<sender@example.net>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<nobody@example.com>\r\n" +
		"RCPT TO:<carol@example.com>\r\nDATA")
	for i, want := range []string{"250 2.1.0", "250 2.1.5", "550 5.1.1 <nobody@example.com>", "250 2.1.5", "354"} {
		if got := c.Next().Last(); !strings.HasPrefix(got, want) {
			t.Errorf("pipelined reply %d: %q, want %q", i+1, got, want)
		}
	}
	c.Cmd("Subject: hi\r\n\r\nhello\r\n.", "250 2.0.0")
	c.Quit()
	msgs := backend.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].Rcpts, []string{"bob@example.com", "carol@example.com"}) {
		t.Fatalf("the backend got %+v, want one message to bob and carol", msgs)
	}
	if backend.Conns() != 1 {
		t.Errorf("%d sessions: the delivery did not reuse the probes' session", backend.Conns())
	}
	if !strings.Contains(srv.Log.String(), `"plugin":"rcpt_to.verify","code":550`) {
		t.Errorf("the log does not name rcpt_to.verify for the 550:\n%s", srv.Log)
	}
}

// TestCachedAnswersInline: a recipient verified before is answered on
// the event loop, without a workpool round trip.
func TestCachedAnswersInline(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{Rcpt: store})
	ch, err := servertest.Build(t, files(backend.Addr, ""))
	if err != nil {
		t.Fatal(err)
	}
	step := func(to string) (plugins.Result, bool) {
		c := &plugins.Conn{ID: "t.1"}
		c.BeginTx("sender@example.net", time.Now())
		call := &plugins.Call{Hook: plugins.HookRcpt, Arg: to}
		res, next, done := ch.Step(c, call, 0)
		if !done {
			res = ch.RunOne(c, call, next)
		}
		return res, done
	}
	for _, to := range []string{"bob@example.com", "nobody@example.com"} {
		if _, done := step(to); done {
			t.Errorf("%s: the first lookup ran inline; it must probe on the workpool", to)
		}
		res, done := step(to)
		if !done {
			t.Errorf("%s: the cached answer went to the workpool", to)
		}
		if refuse := to == "nobody@example.com"; (res.Action == plugins.Reject) != refuse {
			t.Errorf("%s: cached answer %s by %q", to, res.Action, res.Plugin)
		}
	}
	if _, done := step("x@elsewhere.test"); !done {
		t.Error("a domain that is not verified went to the workpool")
	}
}

// TestNextHopDown: while the next hop cannot be reached, a recipient not
// cached gets 450 4.1.1 and the client keeps its message; once the next
// hop is back, the retry is verified and the message delivered.
func TestNextHopDown(t *testing.T) {
	hold := make(chan struct{})
	backend := nexthoptest.Start(t, nexthoptest.Options{Rcpt: store, HoldGreeting: hold})
	srv := servertest.Start(t, files(backend.Addr, "budget = 300ms\ntimeout = 5s\n"))
	// The next hop accepts connections but does not answer: the probe
	// gives up within its budget.
	rcpts(t, srv.Addr, "carol@example.com", unverified)
	if !strings.Contains(srv.Log.String(), "the next hop could not be asked about a recipient") {
		t.Errorf("the failed probe was not logged:\n%s", srv.Log)
	}
	// Its circuit breaker is open: the next recipient is answered at once.
	rcpts(t, srv.Addr, "dave@example.com", unverified)
	if n := len(backend.Messages()); n != 0 {
		t.Fatalf("the backend holds %d messages", n)
	}
	// Back: the retry passes (after the breaker's back-off) and the
	// message is delivered.
	close(hold)
	servertest.Eventually(t, 50*time.Millisecond, "carol@example.com verified once the next hop is back", func() bool {
		c := dialer.Hello(t, srv.Addr)
		defer c.Quit()
		c.Cmd("MAIL FROM:<sender@example.net>", "250")
		if !strings.HasPrefix(c.Cmd("RCPT TO:<carol@example.com>", ""), "250") {
			c.Cmd("RSET", "250")
			return false
		}
		c.Cmd("DATA", "354")
		c.Cmd("Subject: hi\r\n\r\nhello\r\n.", "250 2.0.0")
		return true
	})
	if msgs := backend.Messages(); len(msgs) != 1 || msgs[0].Rcpts[0] != "carol@example.com" {
		t.Errorf("the backend got %+v, want the one message to carol", msgs)
	}
}

// TestNextHopStopped: a next hop that refuses connections gives 450 at
// RCPT; a recipient verified before is still accepted, and its message
// gets 451 from queue/smtp_forward: the client keeps it and retries.
func TestNextHopStopped(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{Rcpt: store})
	srv := servertest.Start(t, files(backend.Addr, ""))
	rcpts(t, srv.Addr, "bob@example.com", "250")
	backend.Stop()
	c := dialer.Hello(t, srv.Addr)
	c.Cmd("MAIL FROM:<sender@example.net>", "250")
	c.CmdExact("RCPT TO:<carol@example.com>", "450 4.1.1 <carol@example.com>: Recipient address not verified, try again later")
	c.Cmd("RCPT TO:<bob@example.com>", "250 2.1.5")
	c.Cmd("DATA", "354")
	c.Cmd("Subject: hi\r\n\r\nhello\r\n.", "451 4.4.1")
	c.Quit()
}

// TestSharedCacheInRedis: two servers share the answers through Redis;
// the second does not probe what the first verified.
func TestSharedCacheInRedis(t *testing.T) {
	rs := redistest.Start(t)
	backend := nexthoptest.Start(t, nexthoptest.Options{Rcpt: store})
	start := func() *servertest.Server {
		dir := servertest.WriteDir(t, files(backend.Addr, "positive_ttl = 2h\nnegative_ttl = 10m\n"))
		rs.WriteINI(dir)
		return servertest.StartDir(t, dir)
	}
	a, b := start(), start()
	rcpts(t, a.Addr, "bob@example.com", "250", "nobody@example.com", refused)
	probes := rcptCount(backend)
	rcpts(t, b.Addr, "bob@example.com", "250", "nobody@example.com", refused)
	if n := rcptCount(backend); n != probes {
		t.Errorf("the second server probed %d more times; the answers are in Redis", n-probes)
	}
	r := rs.Client()
	for key, ttl := range map[string]time.Duration{"verify:bob@example.com": 2 * time.Hour, "verify:nobody@example.com": 10 * time.Minute} {
		got, err := r.PTTL(context.Background(), key).Result()
		if err != nil || got <= ttl-time.Minute || got > ttl {
			t.Errorf("%s expires in %v (%v), want about %v", key, got, err, ttl)
		}
	}
	// Redis down: the answers in memory still count, the rest is probed.
	rs.Kill()
	rcpts(t, b.Addr, "bob@example.com", "250", "erin@example.com", "250", "nobody@example.com", refused)
}

func TestLMTPNextHop(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{LMTP: true, Unix: true, Rcpt: store})
	f := files(backend.Addr, "next_hop = queue/lmtp\n")
	f["plugins"] = "rcpt_to.verify\nrcpt_to.in_host_list\nqueue/lmtp\n"
	f["lmtp.ini"] = "hosts = " + backend.Addr + "\n"
	delete(f, "smtp_forward.ini")
	srv := servertest.Start(t, f)
	rcpts(t, srv.Addr, "bob@example.com", "250", "nobody@example.com", refused)
	if got := backend.Groups(); len(got) < 2 || got[0] != "LHLO" || got[1] != "MAIL RCPT RSET" {
		t.Errorf("the LMTP backend read %q", got)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"not a next hop", files("127.0.0.1:1", "next_hop = queue/maildir\n"), []string{rcptverify.Name + ".ini", "next_hop", `"queue/maildir"`}},
		{"the next hop has no hosts", files("", ""), []string{"next_hop", "smtp_forward.ini", "hosts"}},
		{"budget over timeout", files("127.0.0.1:1", "budget = 10s\ntimeout = 10s\n"), []string{"budget", `"10s"`, "less than timeout"}},
		{"a bad sender", files("127.0.0.1:1", "sender = <>\n"), []string{"sender", "not an address"}},
		{"redis without redis.ini", files("127.0.0.1:1", "redis = true\n"), []string{"redis", "needs redis.ini"}},
		{"a bad fail", files("127.0.0.1:1", "fail = maybe\n"), []string{"fail", `"maybe"`}},
		{"an unknown key", files("127.0.0.1:1", "ttl = 1h\n"), []string{rcptverify.Name + ".ini", `"ttl"`}},
		{"after in_host_list", func() map[string]string {
			f := files("127.0.0.1:1", "")
			f["plugins"] = "rcpt_to.in_host_list\nrcpt_to.verify\nqueue/smtp_forward\n"
			return f
		}(), []string{"plugins:2", "rcpt_to.verify comes after rcpt_to.in_host_list"}},
		{"no domains", func() map[string]string {
			f := files("127.0.0.1:1", "")
			f["host_list"] = ""
			return f
		}(), []string{"domains", "no domain"}},
	} {
		t.Run(tc.name, func(t *testing.T) { servertest.CheckBuild(t, tc.files, tc.want...) })
	}
}

// TestNextHopWithoutSMTPUTF8: a UTF-8 recipient cannot be asked about
// when the next hop lacks SMTPUTF8; it gets no opinion here (the queue
// plugin refuses the message later), not a 450 that would never end.
func TestNextHopWithoutSMTPUTF8(t *testing.T) {
	backend := nexthoptest.Start(t, nexthoptest.Options{Rcpt: store, Extensions: []string{"PIPELINING", "ENHANCEDSTATUSCODES"}})
	srv := servertest.Start(t, files(backend.Addr, ""))
	c := dialer.Hello(t, srv.Addr)
	c.Cmd("MAIL FROM:<sender@example.net> SMTPUTF8", "250")
	c.Cmd("RCPT TO:<jörg@example.com>", "250 2.1.5")
	c.Cmd("RCPT TO:<nobody@example.com>", "550 5.1.1") // ASCII: asked as usual
	c.Quit()
}
