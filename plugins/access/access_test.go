package access_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/access"
	_ "loopmx/plugins/results"
)

const (
	banner        = "220 mx.test ESMTP loopmx"
	ok            = "250 2.0.0 Ok"
	mailOK        = "250 2.1.0 Ok"
	rcptOK        = "250 2.1.5 Ok"
	deniedConnect = "554 5.7.1 Access denied"
	denied        = "550 5.7.1 Access denied"
)

// rdnsNoter stands in for a plugin that looks up the client's reverse
// name: it notes the name set in its ini file.
type rdnsNoter struct{ name string }

func (*rdnsNoter) Name() string { return "test/rdns" }

func (r *rdnsNoter) Connect(c *plugins.Conn) plugins.Result {
	c.SetNote("rdns", r.name)
	return plugins.NoOpinion()
}

func init() {
	plugins.Register("test/rdns", func(cfg *config.Config) (plugins.Plugin, error) {
		pc, err := cfg.Plugin("test/rdns")
		if err != nil {
			return nil, err
		}
		r := &rdnsNoter{name: pc.String("", "name", "")}
		return r, pc.Check()
	})
}

// smtpINI is the smtp.ini of these tests: two event loops, four workers
// with a short queue, short timeouts, no cap on connections or data lines.
const smtpINI = "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 4\nwork_queue_size = 64\n" +
	"inactivity_timeout = 30s\ngraceful_timeout = 1s\nmax_connections = 0\nmax_data_line_length = 0\ntcp_keepalive = 0\n"

// dialer makes the test clients, which compare whole replies.
var dialer = servertest.Dialer{Enhanced: servertest.Never}

// withAccess returns a config directory of files that runs access
// unless files has its own plugins file.
func withAccess(files map[string]string) map[string]string {
	all := map[string]string{"smtp.ini": smtpINI, "plugins": "access\n"}
	for name, content := range files {
		all[name] = content
	}
	return all
}

func TestIPDeniedAtConnect(t *testing.T) {
	ts := servertest.Start(t, withAccess(map[string]string{
		"access.ip.deny": "# loopback is a spammer today\n127.0.0.0/8\n",
	}))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(deniedConnect)
	c.ExpectEOF()
}

func TestIPAllowWinsOverDeny(t *testing.T) {
	ts := servertest.Start(t, withAccess(map[string]string{
		"access.ip.allow": "127.0.0.2\n::1\n",
		"access.ip.deny":  "127.0.0.0/8\n",
	}))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
	c.ExpectExact(banner)
	c.CmdExact("QUIT", "221 2.0.0 Bye")

	c = dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(deniedConnect)
	c.ExpectEOF()
}

func TestHeloLists(t *testing.T) {
	ts := servertest.Start(t, withAccess(map[string]string{
		"access.helo.deny": ".bad.example\n" +
			"exact.example.   # a trailing dot is ignored\n" +
			"/^dyn-[0-9]+\\./\n" +
			"[192.0.2.1]\n",
		"access.helo.allow": "good.bad.example\n",
	}))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(banner)
	for _, name := range []string{"bad.example", "host.bad.example", "Host.BAD.example", "exact.example", "DYN-12.isp.example", "[192.0.2.1]"} {
		c.CmdExact("EHLO "+name, denied)
		c.CmdExact("HELO "+name, denied)
	}
	for _, name := range []string{"good.bad.example", "sub.exact.example", "notbad.example", "static-12.dyn-1.example", "[192.0.2.2]"} {
		c.EHLO(name)
		c.CmdExact("HELO "+name, "250 mx.test")
	}
}

func TestMailAndRcptLists(t *testing.T) {
	ts := servertest.Start(t, withAccess(map[string]string{
		"access.mail.deny": "spammer.example\n" +
			".junk.example\n" +
			"bad@ok.example\n" +
			"/^$/   # the null sender\n",
		"access.mail.allow": "friend@spammer.example\n",
		"access.rcpt.deny":  "/^no-?reply@/\nclosed.example.com\n",
		"access.rcpt.allow": "postmaster@closed.example.com\n",
	}))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(banner)
	c.EHLO("client.example.org")
	for _, from := range []string{"x@spammer.example", "x@junk.example", "x@a.b.junk.example", "BAD@ok.example", ""} {
		c.CmdExact("MAIL FROM:<"+from+">", denied)
	}
	for _, from := range []string{"x@sub.spammer.example", "friend@Spammer.Example", "good@ok.example", "x@notjunk.example"} {
		c.CmdExact("MAIL FROM:<"+from+">", mailOK)
		c.CmdExact("RSET", ok)
	}
	c.CmdExact("MAIL FROM:<friend@spammer.example>", mailOK)
	for _, to := range []string{"noreply@example.com", "No-Reply@example.org", "user@closed.example.com"} {
		c.CmdExact("RCPT TO:<"+to+">", denied)
	}
	for _, to := range []string{"postmaster@closed.example.com", "user@open.closed.example.com", "reply@example.com", "postmaster"} {
		c.CmdExact("RCPT TO:<"+to+">", rcptOK)
	}
}

// TestResults: with the results plugin in front, each match is in the
// results line with the entry that matched: a refused MAIL is the
// connection's (no transaction begins), RCPT matches the transaction's.
func TestResults(t *testing.T) {
	ts := servertest.Start(t, withAccess(map[string]string{
		"plugins":           "results\naccess\n",
		"access.ip.allow":   "127.0.0.0/8\n",
		"access.mail.deny":  ".spammer.example\n",
		"access.rcpt.deny":  "closed.example\n",
		"access.rcpt.allow": "# the one open mailbox\nvip@closed.example\n",
	}))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(banner)
	c.EHLO("client.example.org")
	c.CmdExact("MAIL FROM:<x@news.spammer.example>", denied)
	c.CmdExact("MAIL FROM:<s@example.org>", mailOK)
	c.CmdExact("RCPT TO:<a@closed.example>", denied)
	c.CmdExact("RCPT TO:<vip@closed.example>", rcptOK)
	c.CmdExact("QUIT", "221 2.0.0 Bye")
	conn := `"conn":{"access":["pass: connect 127.0.0.1 in access.ip.allow:1","fail: mail x@news.spammer.example in access.mail.deny:1"]}`
	want := `"results":{` + conn + `,"tx":{"access":["fail: rcpt a@closed.example in access.rcpt.deny:1","pass: rcpt vip@closed.example in access.rcpt.allow:2"]}}`
	servertest.Eventually(t, 20*time.Millisecond, "the connection's results line", func() bool {
		return ts.Log.Count(`"plugin":"results"`, `"results":{`+conn+`}`) == 1
	})
	if ts.Log.Count(`"plugin":"results"`, want) != 1 {
		t.Errorf("no transaction results line with %s:\n%s", want, ts.Log)
	}
}

func TestRDNS(t *testing.T) {
	lists := map[string]string{
		"access.rdns.deny":  ".dialup.example\n",
		"access.rdns.allow": "static.dialup.example\n",
	}
	t.Run("no rdns plugin", func(t *testing.T) {
		// loopmx does no reverse lookup: without a plugin that notes the
		// name, rDNS entries match nothing.
		ts := servertest.Start(t, withAccess(lists))
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
		c.ExpectExact(banner)
	})
	for name, want := range map[string]string{
		"host-1.dialup.example": deniedConnect,
		"static.dialup.example": banner,
		"mail.example.org":      banner,
	} {
		t.Run(name, func(t *testing.T) {
			files := withAccess(lists)
			files["plugins"] = "test/rdns\naccess\n"
			files["rdns.ini"] = "name = " + name + "\n"
			ts := servertest.Start(t, files)
			c := dialer.DialFrom(t, ts.Addr, "127.0.0.1")
			c.ExpectExact(want)
		})
	}
}

func TestPathsInAccessIni(t *testing.T) {
	abs := filepath.Join(t.TempDir(), "senders")
	if err := os.WriteFile(abs, []byte("spammer.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := servertest.Start(t, withAccess(map[string]string{
		"access.ini":     "helo_deny = blocked-helos\nmail_deny = " + abs + "\n",
		"blocked-helos":  "bad.example\n",
		"access.ip.deny": "127.0.0.1\n", // ip_deny keeps its default name
	}))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
	c.ExpectExact(banner)
	c.CmdExact("EHLO bad.example", denied)
	c.EHLO("good.example")
	c.CmdExact("MAIL FROM:<x@spammer.example>", denied)

	c = dialer.DialFrom(t, ts.Addr, "127.0.0.1")
	c.ExpectExact(deniedConnect)
}

// TestHooksRunInline: no hook of access may go to the workpool.
func TestHooksRunInline(t *testing.T) {
	ch, err := servertest.Build(t, withAccess(map[string]string{
		"access.ip.deny":   "192.0.2.0/24\n",
		"access.helo.deny": "bad.example\n",
		"access.mail.deny": "spammer.example\n",
		"access.rcpt.deny": "closed.example\n",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := &plugins.Conn{ID: "t.1", RemoteIP: netip.MustParseAddr("192.0.2.7")}
	for _, tc := range []struct {
		call plugins.Call
		want string
	}{
		{plugins.Call{Hook: plugins.HookConnect}, deniedConnect},
		{plugins.Call{Hook: plugins.HookHelo, Arg: "bad.example"}, denied},
		{plugins.Call{Hook: plugins.HookEhlo, Arg: "bad.example"}, denied},
		{plugins.Call{Hook: plugins.HookMail, Arg: "a@spammer.example"}, denied},
		{plugins.Call{Hook: plugins.HookRcpt, Arg: "a@closed.example"}, denied},
	} {
		res, _, done := ch.Step(c, &tc.call, 0)
		if !done {
			t.Errorf("%s went to the workpool", tc.call.Hook)
			continue
		}
		if got := string(plugins.ReplyFor(tc.call.Hook, res).AppendTo(nil)); got != tc.want+"\r\n" {
			t.Errorf("%s %q: client reads %q, want %q", tc.call.Hook, tc.call.Arg, got, tc.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		files map[string]string
		want  []string
	}{
		{map[string]string{"access.ip.deny": "192.0.2.0/24\n\n# comment\n10.0.0.0/33\n"},
			[]string{`config: access.ip.deny:4: "10.0.0.0/33" is not an IP address or CIDR prefix`}},
		{map[string]string{"access.ip.allow": "192.0.2.300\n"},
			[]string{`config: access.ip.allow:1: "192.0.2.300"`}},
		{map[string]string{"access.ip.deny": "10.1.2.3/8\n"},
			[]string{`config: access.ip.deny:1: "10.1.2.3/8"`, "10.0.0.0/8"}},
		{map[string]string{"access.helo.deny": "ok.example\n\n/[a-/\n"},
			[]string{`config: access.helo.deny:3: "/[a-/" is not a regular expression`}},
		{map[string]string{"access.mail.allow": "/unclosed\n"},
			[]string{`config: access.mail.allow:1: "/unclosed"`}},
		{map[string]string{"access.rdns.allow": "user@example.com\n"},
			[]string{`config: access.rdns.allow:1: "user@example.com" is an address`}},
		{map[string]string{"access.rcpt.deny": "@example.com\n"},
			[]string{`config: access.rcpt.deny:1: "@example.com"`}},
		{map[string]string{"access.ini": "ip_denied = x\n"},
			[]string{"access.ini", `"ip_denied"`}},
		{map[string]string{"access.ini": "helo_deny =\n"},
			[]string{"access.ini", "helo_deny"}},
	}
	for _, tc := range cases {
		_, err := servertest.Build(t, withAccess(tc.files))
		if err == nil {
			t.Errorf("%v: Build succeeded, want an error", tc.files)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not contain %q", tc.files, err, w)
			}
		}
	}
}
