package limit_test

import (
	"bytes"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/limit"
)

// newChain builds the limit plugin from a config directory holding
// limitINI (and redis.ini when given), through plugins.Build as at start.
func newChain(t *testing.T, limitINI string, extra map[string]string) *plugins.Chain {
	t.Helper()
	dir := configDir(t, limitINI)
	servertest.Write(t, dir, "plugins", "limit\n")
	for name, text := range extra {
		servertest.Write(t, dir, name, text)
	}
	ch, err := servertest.BuildDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

var connSeq int

// newConn is a connection from ip as the loop makes one.
func newConn(ip string, logBuf io.Writer) *plugins.Conn {
	connSeq++
	l := zerolog.New(logBuf)
	return &plugins.Conn{
		ID:         "t." + string(rune('a'+connSeq%26)) + strings.Repeat("x", connSeq/26),
		RemoteIP:   netip.MustParseAddr(ip),
		RemotePort: 40000,
		Hostname:   "mx.test",
		Log:        &l,
		Started:    time.Now(),
	}
}

// run runs one hook through the chain as the loop does (inline part, then
// the blocking part) and returns what the client reads, "" for the
// default reply, and whether the connection closes.
func run(t *testing.T, ch *plugins.Chain, c *plugins.Conn, h plugins.Hook, arg string) (string, bool) {
	t.Helper()
	call := &plugins.Call{Hook: h, Arg: arg}
	res, next, done := ch.Step(c, call, 0)
	if !done {
		res = ch.RunFrom(c, call, next)
	}
	rep := plugins.ReplyFor(h, res)
	if !rep.Positive() {
		ch.Denied(c, h, res)
	}
	if rep.IsZero() {
		return "", res.Action.Disconnects()
	}
	return strings.TrimSuffix(string(rep.AppendTo(nil)), "\r\n"), res.Action.Disconnects()
}

// disconnect runs the disconnect hooks.
func disconnect(ch *plugins.Chain, c *plugins.Conn) {
	call := &plugins.Call{Hook: plugins.HookDisconnect}
	if _, next, done := ch.Step(c, call, 0); !done {
		ch.RunFrom(c, call, next)
	}
}

const (
	refusedConcurrency = "421 4.7.0 Too many concurrent connections from your address, try again later"
	refusedRate        = "421 4.7.0 Too many connections from your address, try again later"
)

func TestInMemoryNothingBlocks(t *testing.T) {
	ch := newChain(t, "max_concurrency = 1\nmax_rcpts_per_tx = 1\n[rate]\nconn = 1/1m\nrcpt_sender = 1/1m\n", nil)
	var logBuf bytes.Buffer
	c := newConn("192.0.2.1", &logBuf)
	for _, h := range []plugins.Hook{plugins.HookConnect, plugins.HookRcpt, plugins.HookDisconnect, plugins.HookMail} {
		call := &plugins.Call{Hook: h, Arg: "a@example.com"}
		if h == plugins.HookRcpt {
			c.BeginTx("s@example.org", time.Now())
		}
		if _, _, done := ch.Step(c, call, 0); !done {
			t.Errorf("hook %s goes to the workpool in memory mode", h)
		}
	}
}

func TestInMemoryConcurrency(t *testing.T) {
	ch := newChain(t, "max_concurrency = 2\n", nil)
	var logBuf bytes.Buffer
	a, b := newConn("192.0.2.1", &logBuf), newConn("192.0.2.1", &logBuf)
	for _, c := range []*plugins.Conn{a, b} {
		if got, _ := run(t, ch, c, plugins.HookConnect, ""); got != "" {
			t.Fatalf("connection within the limit got %q", got)
		}
	}
	third := newConn("192.0.2.1", &logBuf)
	if got, closes := run(t, ch, third, plugins.HookConnect, ""); got != refusedConcurrency || !closes {
		t.Fatalf("third connection: %q (closes %v), want %q and close", got, closes, refusedConcurrency)
	}
	if got, _ := run(t, ch, newConn("192.0.2.2", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("another IP got %q", got)
	}
	// A refused connection gives nothing back; a closed admitted one does.
	disconnect(ch, third)
	if got, _ := run(t, ch, newConn("192.0.2.1", &logBuf), plugins.HookConnect, ""); got != refusedConcurrency {
		t.Fatalf("after a refused connection closed: %q, want still refused", got)
	}
	disconnect(ch, a)
	disconnect(ch, a) // a second disconnect of the same connection changes nothing
	if got, _ := run(t, ch, newConn("192.0.2.1", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("after one closed: %q, want admitted", got)
	}
	if got, _ := run(t, ch, newConn("192.0.2.1", &logBuf), plugins.HookConnect, ""); got != refusedConcurrency {
		t.Fatalf("over the limit again: %q", got)
	}
	if f, _ := third.Findings(); len(f) != 1 || f[0].Outcome != plugins.Fail || f[0].Message != "3 concurrent connections from 192.0.2.1" {
		t.Errorf("findings %+v, want one fail: 3 concurrent connections from 192.0.2.1", f)
	}
}

func TestInMemoryConnectionRate(t *testing.T) {
	ch := newChain(t, "[rate]\nconn = 3/1h\n", nil)
	var logBuf bytes.Buffer
	for i := range 3 {
		c := newConn("198.51.100.7", &logBuf)
		if got, _ := run(t, ch, c, plugins.HookConnect, ""); got != "" {
			t.Fatalf("connection %d got %q", i+1, got)
		}
		disconnect(ch, c)
	}
	if got, closes := run(t, ch, newConn("198.51.100.7", &logBuf), plugins.HookConnect, ""); got != refusedRate || !closes {
		t.Fatalf("fourth connection: %q (closes %v), want %q", got, closes, refusedRate)
	}
	if got, _ := run(t, ch, newConn("198.51.100.8", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("another IP got %q", got)
	}
}

func TestIPv6Prefix(t *testing.T) {
	var logBuf bytes.Buffer
	ch := newChain(t, "max_concurrency = 1\n", nil)
	if got, _ := run(t, ch, newConn("2001:db8:1:2::10", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatal(got)
	}
	if got, _ := run(t, ch, newConn("2001:db8:1:2:ffff::99", &logBuf), plugins.HookConnect, ""); got != refusedConcurrency {
		t.Fatalf("same /64: %q, want refused", got)
	}
	if got, _ := run(t, ch, newConn("2001:db8:1:3::10", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("another /64: %q", got)
	}
	// IPv4-mapped addresses count as the IPv4 address.
	if got, _ := run(t, ch, newConn("192.0.2.9", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatal(got)
	}
	if got, _ := run(t, ch, newConn("::ffff:192.0.2.9", &logBuf), plugins.HookConnect, ""); got != refusedConcurrency {
		t.Fatalf("IPv4-mapped: %q, want refused", got)
	}

	ch = newChain(t, "max_concurrency = 1\nipv6_prefix = 128\n", nil)
	run(t, ch, newConn("2001:db8:1:2::10", &logBuf), plugins.HookConnect, "")
	if got, _ := run(t, ch, newConn("2001:db8:1:2::11", &logBuf), plugins.HookConnect, ""); got != "" {
		t.Fatalf("ipv6_prefix = 128 counts a neighbour: %q", got)
	}
}

func TestRecipientsPerTransaction(t *testing.T) {
	ch := newChain(t, "max_rcpts_per_tx = 2\n", nil)
	var logBuf bytes.Buffer
	c := newConn("192.0.2.1", &logBuf)
	c.BeginTx("s@example.org", time.Now())
	for _, to := range []string{"a@example.com", "b@example.com"} {
		if got, _ := run(t, ch, c, plugins.HookRcpt, to); got != "" {
			t.Fatalf("RCPT %s: %q", to, got)
		}
		c.Tx.Rcpts = append(c.Tx.Rcpts, to)
	}
	if got, closes := run(t, ch, c, plugins.HookRcpt, "c@example.com"); got != "452 4.5.3 Too many recipients" || closes {
		t.Fatalf("third RCPT: %q (closes %v)", got, closes)
	}
	// A new transaction starts from zero.
	c.EndTx()
	c.BeginTx("s@example.org", time.Now())
	if got, _ := run(t, ch, c, plugins.HookRcpt, "c@example.com"); got != "" {
		t.Fatalf("RCPT in a new transaction: %q", got)
	}
}

func TestInMemorySenderRate(t *testing.T) {
	ch := newChain(t, "[rate]\nrcpt_sender = 3/1h\n", nil)
	var logBuf bytes.Buffer
	rcpt := func(from, to string) string {
		c := newConn("192.0.2.1", &logBuf)
		c.BeginTx(from, time.Now())
		got, _ := run(t, ch, c, plugins.HookRcpt, to)
		return got
	}
	for i, from := range []string{"bulk@example.org", "Bulk@Example.org", "bulk@example.org"} {
		if got := rcpt(from, "a@example.com"); got != "" {
			t.Fatalf("recipient %d: %q", i+1, got)
		}
	}
	const refused = "450 4.7.1 Too many recipients from this sender, try again later"
	if got := rcpt("BULK@example.org", "b@example.com"); got != refused {
		t.Fatalf("fourth recipient of the sender: %q, want %q", got, refused)
	}
	if got := rcpt("other@example.org", "b@example.com"); got != "" {
		t.Fatalf("another sender: %q", got)
	}
	for range 5 {
		if got := rcpt("", "postmaster@example.com"); got != "" {
			t.Fatalf("null sender: %q; bounces are not counted per sender", got)
		}
	}
}

func TestErrorsPerConnection(t *testing.T) {
	ch := newChain(t, "max_errors = 2\n", nil)
	var logBuf bytes.Buffer
	c := newConn("192.0.2.1", &logBuf)
	refusal := plugins.Deny(550, "5.7.1", "Relaying denied")
	ch.Denied(c, plugins.HookRcpt, refusal)
	if got, _ := run(t, ch, c, plugins.HookMail, "s@example.org"); got != "" {
		t.Fatalf("after one error: %q", got)
	}
	ch.Denied(c, plugins.HookRcpt, refusal)
	const want = "421 4.7.0 Too many errors, closing the connection"
	if got, closes := run(t, ch, c, plugins.HookHelo, "client.test"); got != want || !closes {
		t.Fatalf("after two errors: %q (closes %v), want %q and close", got, closes, want)
	}
}

func TestUnrecognizedPerConnection(t *testing.T) {
	ch := newChain(t, "max_unrecognized = 2\n", nil)
	var logBuf bytes.Buffer
	c := newConn("192.0.2.1", &logBuf)
	for _, line := range []string{"FOO", "BAR baz"} {
		if got, closes := run(t, ch, c, plugins.HookUnrecognized, line); got != "" || closes {
			t.Fatalf("%s: %q (closes %v), want the default reply", line, got, closes)
		}
	}
	const want = "421 4.7.0 Too many unrecognized commands, closing the connection"
	if got, closes := run(t, ch, c, plugins.HookUnrecognized, "GET / HTTP/1.0"); got != want || !closes {
		t.Fatalf("third unrecognized: %q (closes %v), want %q and close", got, closes, want)
	}
}

func TestNoLimitsByDefault(t *testing.T) {
	ch := newChain(t, "", nil)
	var logBuf bytes.Buffer
	for range 50 {
		c := newConn("192.0.2.1", &logBuf)
		if got, _ := run(t, ch, c, plugins.HookConnect, ""); got != "" {
			t.Fatalf("connect with an empty limit.ini: %q", got)
		}
		c.BeginTx("s@example.org", time.Now())
		c.Tx.Rcpts = make([]string, 500)
		if got, _ := run(t, ch, c, plugins.HookRcpt, "a@example.com"); got != "" {
			t.Fatalf("rcpt with an empty limit.ini: %q", got)
		}
		ch.Denied(c, plugins.HookRcpt, plugins.Deny(550, "5.7.1", "no"))
		if got, _ := run(t, ch, c, plugins.HookUnrecognized, "FOO"); got != "" {
			t.Fatalf("unrecognized with an empty limit.ini: %q", got)
		}
	}
}

func TestRedisModeBlocks(t *testing.T) {
	// Building the client contacts nobody, so no server is needed here.
	redisINI := map[string]string{"redis.ini": "server = 127.0.0.1:1\n"}
	ch := newChain(t, "max_concurrency = 3\n[rate]\nrcpt_sender = 10/1m\n", redisINI)
	var logBuf bytes.Buffer
	c := newConn("192.0.2.1", &logBuf)
	c.BeginTx("s@example.org", time.Now())
	for _, tc := range []struct {
		h     plugins.Hook
		block bool
	}{
		{plugins.HookConnect, true}, {plugins.HookRcpt, true},
		{plugins.HookDisconnect, false}, {plugins.HookMail, false}, {plugins.HookHelo, false}, {plugins.HookUnrecognized, false},
	} {
		_, _, done := ch.Step(c, &plugins.Call{Hook: tc.h}, 0)
		if done == tc.block {
			t.Errorf("hook %s: blocks = %v, want %v", tc.h, !done, tc.block)
		}
	}
	// redis = false keeps everything in memory, inline.
	ch = newChain(t, "redis = false\nmax_concurrency = 3\n[rate]\nrcpt_sender = 10/1m\n", redisINI)
	if _, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0); !done {
		t.Error("redis = false: connect still blocks")
	}
	// Only the hooks of limits that are set go to the workpool.
	ch = newChain(t, "max_rcpts_per_tx = 5\n", redisINI)
	if _, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookConnect}, 0); !done {
		t.Error("no per-IP limit set: connect still blocks")
	}
	if _, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt}, 0); !done {
		t.Error("no per-sender rate set: rcpt still blocks")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ ini, want string }{
		{"fail = maybe", `config: limit.ini: [main] fail: "maybe" is neither open nor closed`},
		{"max_concurrency = -1", `config: limit.ini: [main] max_concurrency: "-1" is out of range (minimum 0, which is no limit)`},
		{"max_errors = many", `config: limit.ini: [main] max_errors: "many" is not a number`},
		{"concurrency_ttl = 0", `config: limit.ini: [main] concurrency_ttl: "0" is out of range (minimum 1s)`},
		{"ipv6_prefix = 129", `config: limit.ini: [main] ipv6_prefix: "129" is out of range 1..128`},
		{"redis = true", `config: limit.ini: [main] redis: "true" needs redis.ini in the config directory`},
		{"max_conncurrency = 5", `config: limit.ini: [main] unknown key "max_conncurrency"`},
		{"[rate]\nconn = 10", `config: limit.ini: [rate] conn: "10" is not N/period (like 30/1m), or 0`},
		{"[rate]\nconn = 0/1m", `config: limit.ini: [rate] conn: "0/1m" is not N/period (like 30/1m), or 0`},
		{"[rate]\nrcpt_sender = 5/soon", `config: limit.ini: [rate] rcpt_sender: "5/soon" is not N/period (like 500/1h), or 0`},
		{"[rate]\nhelo = 5/1m", `config: limit.ini: [rate] unknown key "helo"`},
		{"[rates]\nconn = 5/1m", `config: limit.ini: unknown section [rates]`},
	} {
		_, err := servertest.BuildDir(t, configDir(t, tc.ini+"\n"))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: error %v\nwant %s", tc.ini, err, tc.want)
		}
	}
	// The periods: Go durations, or bare seconds.
	for _, ok := range []string{"30/1m", "30/60", " 5 / 1h30m ", "0", ""} {
		if _, err := servertest.BuildDir(t, configDir(t, "[rate]\nconn = "+ok+"\n")); err != nil {
			t.Errorf("conn = %q: %v", ok, err)
		}
	}
}
