package results_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/redisx/redistest"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/queue/discard"
	"loopmx/plugins/results"
)

// checkName is a test plugin that records findings the way any plugin
// does, through plugins.Conn.Record, without importing results.
const checkName = "test_check"

func init() {
	plugins.Register(checkName, func(*config.Config) (plugins.Plugin, error) { return check{}, nil })
}

type check struct{}

func (check) Name() string { return checkName }

// Connect records a connection finding.
func (check) Connect(c *plugins.Conn) plugins.Result {
	c.Record(plugins.Finding{Plugin: checkName, Outcome: plugins.Pass, Message: "connect"})
	return plugins.NoOpinion()
}

// Rcpt records one transaction finding per recipient and refuses bad@.
func (check) Rcpt(c *plugins.Conn, to string) plugins.Result {
	if strings.HasPrefix(to, "bad@") {
		c.Record(plugins.Finding{Plugin: checkName, Outcome: plugins.Fail, Word: "nouser", Message: "no such user " + to})
		return plugins.Deny(550, "5.1.1", "No such user")
	}
	c.Record(plugins.Finding{Plugin: checkName, Outcome: plugins.Pass, Message: to})
	return plugins.NoOpinion()
}

// configDir writes a config directory: smtp.ini listening on
// 127.0.0.1:0, a plugins file with results, the test plugin check and
// queue/discard, and the given results.ini.
func configDir(t *testing.T, resultsINI string) string {
	t.Helper()
	return servertest.WriteDir(t, map[string]string{
		"smtp.ini":    "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 4\n",
		"plugins":     "results\n" + checkName + "\nqueue/discard\n",
		"results.ini": resultsINI,
	})
}

// dialer makes the test clients.
var dialer = servertest.Dialer{Enhanced: servertest.Never}

// poll is how often a test retries while it waits.
const poll = 50 * time.Millisecond

// summaries returns the results plugin's log lines, decoded.
func summaries(t *testing.T, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, `"plugin":"results"`) || !strings.Contains(line, `"message":"results"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// connSummary waits for the connection summary line of the connection
// whose transaction id starts with prefix, and returns every summary.
func waitConnSummary(t *testing.T, srv *servertest.Server, conn string) []map[string]any {
	t.Helper()
	var all []map[string]any
	servertest.Eventually(t, poll, "the connection summary is logged", func() bool {
		all = summaries(t, srv.Log.String())
		for _, m := range all {
			if m["conn"] == conn && m["tx"] == nil {
				return true
			}
		}
		return false
	})
	return all
}

// txID reads the transaction id from queue/discard's 250 reply.
func txID(t *testing.T, reply string) string {
	t.Helper()
	const pre = "250 2.0.0 Ok: queued as "
	if !strings.HasPrefix(reply, pre) {
		t.Fatalf("queue reply %q", reply)
	}
	return strings.Fields(strings.TrimPrefix(reply, pre))[0]
}

// connOf is the connection id in a transaction id.
func connOf(tx string) string { return tx[:strings.LastIndexByte(tx, '.')] }

func TestSummaryPerTransactionAndConnection(t *testing.T) {
	srv := servertest.StartDir(t, configDir(t, ""))
	c := dialer.Hello(t, srv.Addr)
	// 1: delivered to two recipients.
	c.Cmd("MAIL FROM:<s@example.org>", "250")
	c.Cmd("RCPT TO:<a@example.com>", "250")
	c.Cmd("RCPT TO:<b@example.com>", "250")
	c.Cmd("DATA", "354")
	tx1 := txID(t, c.Cmd("Subject: x\r\n\r\nx\r\n.", "250"))
	conn := connOf(tx1)
	// 2: every recipient refused, then RSET.
	c.Cmd("MAIL FROM:<s@example.org>", "250")
	c.Cmd("RCPT TO:<bad@example.com>", "550 5.1.1")
	c.Cmd("RSET", "250")
	// 3: open at QUIT.
	c.Cmd("MAIL FROM:<s@example.org>", "250")
	c.Cmd("RCPT TO:<c@example.com>", "250")
	c.Quit()

	all := waitConnSummary(t, srv, conn)
	connResults := map[string]any{checkName: []any{"pass: connect"}}
	want := []map[string]any{
		{"tx": conn + ".1", "results": map[string]any{"conn": connResults,
			"tx": map[string]any{checkName: []any{"pass: a@example.com", "pass: b@example.com"}}}},
		{"tx": conn + ".2", "results": map[string]any{"conn": connResults,
			"tx": map[string]any{checkName: []any{"fail (nouser): no such user bad@example.com"}}}},
		{"tx": conn + ".3", "results": map[string]any{"conn": connResults,
			"tx": map[string]any{checkName: []any{"pass: c@example.com"}}}},
		{"tx": nil, "results": map[string]any{"conn": connResults}},
	}
	if len(all) != len(want) {
		t.Fatalf("%d summary lines, want one per transaction and one for the connection:\n%s", len(all), srv.Log)
	}
	for i, w := range want {
		got := all[i]
		if got["conn"] != conn || got["tx"] != w["tx"] || !reflect.DeepEqual(got["results"], w["results"]) || got["level"] != "info" {
			t.Errorf("summary %d = %v\nwant tx %v results %v", i+1, got, w["tx"], w["results"])
		}
	}
}

func TestEntry(t *testing.T) {
	for _, tc := range []struct {
		f    plugins.Finding
		want string
	}{
		{plugins.Finding{Outcome: plugins.Pass}, "pass"},
		{plugins.Finding{Outcome: plugins.Fail, Message: "listed by zen.example"}, "fail: listed by zen.example"},
		{plugins.Finding{Outcome: plugins.Fail, Word: "softfail", Message: "not designated: see SPF"}, "fail (softfail): not designated: see SPF"},
		{plugins.Finding{Outcome: plugins.Skip, Word: "skip"}, "skip"},
		{plugins.Finding{Outcome: plugins.Err, Word: "temperror"}, "err (temperror)"},
	} {
		if got := results.Entry(tc.f); got != tc.want {
			t.Errorf("Entry(%+v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}

// TestDropped: findings past plugins.MaxFindings are counted in the line.
func TestDropped(t *testing.T) {
	dir := configDir(t, "")
	servertest.Write(t, dir, "plugins", "results\n")
	ch, err := servertest.BuildDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	l := zerolog.New(&buf)
	c := &plugins.Conn{ID: "w1.7", RemoteIP: netip.MustParseAddr("192.0.2.1"), Log: &l}
	for range plugins.MaxFindings + 3 {
		c.Record(plugins.Finding{Plugin: "helo.checks", Outcome: plugins.Pass})
	}
	ch.RunFrom(c, &plugins.Call{Hook: plugins.HookDisconnect}, 0)
	all := summaries(t, buf.String())
	if len(all) != 1 {
		t.Fatalf("summaries: %v", buf.String())
	}
	if got := all[0]["results_dropped"]; got != float64(3) {
		t.Errorf("results_dropped = %v, want 3", got)
	}
	if got := all[0]["results"].(map[string]any)["conn"].(map[string]any)["helo.checks"].([]any); len(got) != plugins.MaxFindings {
		t.Errorf("%d findings logged, want %d", len(got), plugins.MaxFindings)
	}
}

func TestBlocks(t *testing.T) {
	c := &plugins.Conn{ID: "w1.1"}
	c.BeginTx("s@example.org", time.Now())
	for _, tc := range []struct {
		ini   string
		block []plugins.Hook
	}{
		{"", nil},
		{"redis_publish = false", nil},
		{"redis_publish = true", []plugins.Hook{plugins.HookMail, plugins.HookDisconnect}},
	} {
		dir := configDir(t, tc.ini+"\n")
		servertest.Write(t, dir, "plugins", "results\n")
		servertest.Write(t, dir, "redis.ini", "server = 127.0.0.1:1\n") // never dialled here
		ch, err := servertest.BuildDir(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range []plugins.Hook{plugins.HookMail, plugins.HookRcpt, plugins.HookData, plugins.HookQueue, plugins.HookDisconnect} {
			_, _, done := ch.Step(c, &plugins.Call{Hook: h}, 0)
			want := false
			for _, b := range tc.block {
				want = want || b == h
			}
			if done == want {
				t.Errorf("%q: hook %s blocks = %v, want %v", tc.ini, h, !done, want)
			}
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ ini, want string }{
		{"redis_publish = true", `config: results.ini: [main] redis_publish: "true" needs redis.ini in the config directory`},
		{"redis_publish = often", `config: results.ini: [main] redis_publish: "often" is not a boolean (true or false)`},
		{"publish = true", `config: results.ini: [main] unknown key "publish"`},
	} {
		_, err := servertest.BuildDir(t, configDir(t, tc.ini+"\n"))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: error %v\nwant %s", tc.ini, err, tc.want)
		}
	}
}

// TestPublish shows that results reach Redis subscribers only with
// redis_publish = true, and that a Redis outage costs no mail.
func TestPublish(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	serve := func(ini string) *servertest.Server {
		dir := configDir(t, ini)
		rs.WriteINI(dir)
		return servertest.StartDir(t, dir)
	}
	on := serve("redis_publish = true\n")
	off := serve("redis_publish = false\n")

	// session delivers one message and, before QUIT, subscribes to the
	// transaction's channel with a second client. It returns the
	// subscription and the transaction id.
	session := func(srv *servertest.Server) (<-chan string, string, func()) {
		c := dialer.Hello(t, srv.Addr)
		c.Cmd("MAIL FROM:<s@example.org>", "250")
		c.Cmd("RCPT TO:<bad@example.com>", "550")
		c.Cmd("RCPT TO:<a@example.com>", "250")
		c.Cmd("DATA", "354")
		tx := txID(t, c.Cmd("Subject: x\r\n\r\nx\r\n.", "250"))
		sub := rs.Client().Subscribe(ctx, "result-"+tx)
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatalf("SUBSCRIBE: %v", err)
		}
		msgs := make(chan string, 16)
		go func() {
			for m := range sub.Channel() {
				msgs <- m.Payload
			}
		}()
		c.Quit()
		return msgs, tx, func() { sub.Close() }
	}
	next := func(msgs <-chan string) string {
		t.Helper()
		select {
		case m := <-msgs:
			return m
		case <-time.After(servertest.IOTimeout):
			t.Fatal("nothing published")
			return ""
		}
	}

	msgs, tx, unsub := session(on)
	var got []map[string]any
	for range 3 {
		var m map[string]any
		if err := json.Unmarshal([]byte(next(msgs)), &m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	unsub()
	conn := connOf(tx)
	want := []map[string]any{
		{"conn": conn, "tx": tx, "plugin": checkName, "scope": "conn", "outcome": "pass", "message": "connect"},
		{"conn": conn, "tx": tx, "plugin": checkName, "scope": "tx", "outcome": "fail", "word": "nouser", "message": "no such user bad@example.com"},
		{"conn": conn, "tx": tx, "plugin": checkName, "scope": "tx", "outcome": "pass", "message": "a@example.com"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("published %v\nwant %v", got, want)
	}

	// With redis_publish = false nothing is published: once the
	// connection's summary is logged, a marker published by the test is
	// the first message the subscriber sees.
	msgs, tx, unsub = session(off)
	waitConnSummary(t, off, connOf(tx))
	if err := rs.Client().Publish(ctx, "result-"+tx, "marker").Err(); err != nil {
		t.Fatal(err)
	}
	if m := next(msgs); m != "marker" {
		t.Fatalf("redis_publish = false published %q", m)
	}
	unsub()

	// Redis goes away: mail still flows, the outage is logged once.
	rs.Kill()
	for range 4 {
		c := dialer.Hello(t, on.Addr)
		c.Mail("s@example.org", "a@example.com")
		c.Quit()
	}
	servertest.Eventually(t, poll, "the outage is logged", func() bool { return on.Log.Count(`"plugin":"results"`, "redis unavailable") > 0 })
	if n := on.Log.Count(`"plugin":"results"`, "redis unavailable"); n != 1 {
		t.Errorf("redis unavailable logged %d times, want once:\n%s", n, on.Log)
	}

	// Back on the same port, publishing resumes by itself.
	rs.Restart()
	servertest.Eventually(t, poll, "publishing resumes", func() bool {
		msgs, _, unsub := session(on)
		defer unsub()
		select {
		case <-msgs:
			return true
		case <-time.After(2 * time.Second):
			return false
		}
	})
	// The subscriber may see the message before the hook has logged.
	servertest.Eventually(t, poll, "the recovery is logged", func() bool {
		return on.Log.Count(`"plugin":"results"`, "redis available again") > 0
	})
	// A publication begun during the outage can still fail after the
	// restart (it finishes on its own goroutine) and flip the state once
	// more, so a loaded machine may log a second recovery; more would be
	// a flood.
	if n := on.Log.Count(`"plugin":"results"`, "redis available again"); n < 1 || n > 2 {
		t.Errorf("recovery logged %d times, want once (twice at most)", n)
	}
}
