package helochecks_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	_ "loopmx/plugins/helo.checks"
	_ "loopmx/plugins/results"
)

const (
	banner    = "220 mx.test ESMTP loopmx"
	badSyntax = "501 5.5.2 Syntax error in HELO name"
	bareIP    = "501 5.5.2 HELO address must be in brackets"
	claimsUs  = "550 5.7.1 HELO name claims to be this server"
	mismatch  = "550 5.7.1 HELO address literal does not match your address"
)

// noteProbe answers MAIL with the helo.checks note as the reply text,
// so that the test reads what a later plugin would see.
type noteProbe struct{}

func (noteProbe) Name() string { return "test/probe" }

func (noteProbe) Mail(c *plugins.Conn, _ string) plugins.Result {
	v, set := c.Note("helo.checks").(string)
	text := "note unset"
	if set {
		text = "note [" + v + "]"
	}
	return plugins.Result{Action: plugins.Accept, Reply: plugins.Deny(250, "2.1.0", text).Reply}
}

func init() {
	plugins.Register("test/probe", func(*config.Config) (plugins.Plugin, error) { return noteProbe{}, nil })
}

// smtpINI is the smtp.ini of these tests: two event loops, four workers
// with a short queue, short timeouts, no cap on connections or data lines.
const smtpINI = "[main]\nlisten = 127.0.0.1:0\nloops = 2\nme = mx.test\nthreadpool_size = 4\nwork_queue_size = 64\n" +
	"inactivity_timeout = 30s\ngraceful_timeout = 1s\nmax_connections = 0\nmax_data_line_length = 0\ntcp_keepalive = 0\n"

// dialer makes the test clients, which compare whole replies.
var dialer = servertest.Dialer{Enhanced: servertest.Never}

// files runs helo.checks, then the probe, with the given [checks] lines.
func files(checks ...string) map[string]string {
	f := map[string]string{"smtp.ini": smtpINI, "plugins": "helo.checks\ntest/probe\n"}
	if len(checks) > 0 {
		f["helo.checks.ini"] = "[checks]\n" + strings.Join(checks, "\n") + "\n"
	}
	return f
}

// hello sends EHLO name and HELO name and requires the same outcome for
// both: the 250 reply, or the refusal want.
func hello(c *servertest.Client, name, want string) {
	c.T.Helper()
	if want == "" {
		c.EHLO(name)
		c.CmdExact("HELO "+name, "250 mx.test")
		return
	}
	c.CmdExact("EHLO "+name, want)
	c.CmdExact("HELO "+name, want)
}

// noteIs requires the note a later plugin sees to be want.
func noteIs(c *servertest.Client, want string) {
	c.T.Helper()
	c.CmdExact("MAIL FROM:<a@example.org>", "250 2.1.0 "+want)
	c.CmdExact("RSET", "250 2.0.0 Ok")
}

func TestDefaults(t *testing.T) {
	ts := servertest.Start(t, files())
	// note is what a later plugin sees after an accepted name.
	cases := []struct {
		from, name, want, note string
	}{
		{"127.0.0.2", "client.example.org", "", "note unset"},
		{"127.0.0.2", "localhost", "", "note unset"},
		{"127.0.0.2", "[127.0.0.2]", "", "note unset"},
		{"127.0.0.2", "[IPv6:::ffff:127.0.0.2]", "", "note unset"},
		{"127.0.0.2", "xn--bcher-kva.example", "", "note unset"},
		// valid_syntax: reject
		{"127.0.0.2", "under_score.example", badSyntax, ""},
		{"127.0.0.2", "-dash.example", badSyntax, ""},
		{"127.0.0.2", "dot.example.", badSyntax, ""},
		{"127.0.0.2", "a..example", badSyntax, ""},
		{"127.0.0.2", "[127.0.0.300]", badSyntax, ""},
		{"127.0.0.2", "[::1]", badSyntax, ""},
		{"127.0.0.2", "[IPv6:127.0.0.2]", badSyntax, ""},
		{"127.0.0.2", "[foo:bar]", badSyntax, ""},
		{"127.0.0.2", strings.Repeat("a", 64) + ".example", badSyntax, ""},
		// claims_us: reject
		{"127.0.0.2", "mx.test", claimsUs, ""},
		{"127.0.0.2", "MX.Test", claimsUs, ""},
		{"127.0.0.2", "[127.0.0.1]", claimsUs, ""},
		// A client on the server's own address is this host.
		{"127.0.0.1", "mx.test", "", "note unset"},
		{"127.0.0.1", "[127.0.0.1]", "", "note unset"},
		// bare_ip: note
		{"127.0.0.2", "127.0.0.2", "", "note [bare_ip]"},
		{"127.0.0.2", "2001:db8::1", "", "note [bare_ip]"},
		// literal_mismatch: note
		{"127.0.0.2", "[192.0.2.1]", "", "note [literal_mismatch]"},
		{"127.0.0.2", "[IPv6:2001:db8::1]", "", "note [literal_mismatch]"},
	}
	for _, tc := range cases {
		c := dialer.DialFrom(t, ts.Addr, tc.from)
		c.ExpectExact(banner)
		hello(c, tc.name, tc.want)
		if tc.want == "" {
			noteIs(c, tc.note)
		}
		if t.Failed() {
			t.Fatalf("from %s, HELO %s", tc.from, tc.name)
		}
	}
}

func TestNoteFollowsTheLastHelo(t *testing.T) {
	ts := servertest.Start(t, files())
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
	c.ExpectExact(banner)
	c.EHLO("[192.0.2.1]")
	noteIs(c, "note [literal_mismatch]")
	c.EHLO("client.example.org")
	noteIs(c, "note []")
}

func TestModes(t *testing.T) {
	ts := servertest.Start(t, files(
		"valid_syntax = note",
		"claims_us = OFF",
		"literal_mismatch = reject",
		"bare_ip = reject",
	))
	cases := []struct {
		name, want, note string
	}{
		{"under_score.example", "", "note [valid_syntax]"},
		{"mx.test", "", "note unset"},
		{"[192.0.2.1]", mismatch, ""},
		{"192.0.2.1", bareIP, ""},
		{"[127.0.0.2]", "", "note unset"},
	}
	for _, tc := range cases {
		c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
		c.ExpectExact(banner)
		hello(c, tc.name, tc.want)
		if tc.want == "" {
			noteIs(c, tc.note)
		}
	}
}

func TestAllOff(t *testing.T) {
	ts := servertest.Start(t, files("valid_syntax = off", "claims_us = off", "literal_mismatch = off", "bare_ip = off"))
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
	c.ExpectExact(banner)
	for _, name := range []string{"under_score", "mx.test", "[192.0.2.1]", "192.0.2.1"} {
		hello(c, name, "")
		noteIs(c, "note unset")
	}
}

// TestResults: with the results plugin in front, the connection's
// summary line shows every name helo.checks judged: the failed checks,
// refused or only noted, and the names that passed.
func TestResults(t *testing.T) {
	f := files()
	f["plugins"] = "results\nhelo.checks\n"
	ts := servertest.Start(t, f)
	c := dialer.DialFrom(t, ts.Addr, "127.0.0.2")
	c.ExpectExact(banner)
	c.EHLO("192.0.2.7")
	c.CmdExact("HELO mx.test", claimsUs)
	c.CmdExact("HELO client.example.org", "250 mx.test")
	c.Quit()
	const want = `"results":{"conn":{"helo.checks":["fail: bare_ip: 192.0.2.7","fail: claims_us: mx.test","pass: client.example.org"]}}`
	servertest.Eventually(t, 20*time.Millisecond, "the results line", func() bool {
		return ts.Log.Count(`"plugin":"results"`, `"message":"results"`) > 0
	})
	if ts.Log.Count(`"plugin":"results"`, want) != 1 {
		t.Errorf("no results line with %s:\n%s", want, ts.Log)
	}
}

func TestHooksRunInline(t *testing.T) {
	ch, err := servertest.Build(t, map[string]string{"plugins": "helo.checks\n"})
	if err != nil {
		t.Fatal(err)
	}
	c := &plugins.Conn{ID: "t.1", RemoteIP: netip.MustParseAddr("192.0.2.7"), LocalIP: netip.MustParseAddr("198.51.100.1"), Hostname: "mx.test"}
	for _, h := range []plugins.Hook{plugins.HookHelo, plugins.HookEhlo} {
		res, _, done := ch.Step(c, &plugins.Call{Hook: h, Arg: "[198.51.100.1]"}, 0)
		if !done {
			t.Fatalf("%s went to the workpool", h)
		}
		if got := string(plugins.ReplyFor(h, res).AppendTo(nil)); got != claimsUs+"\r\n" {
			t.Errorf("%s: client reads %q, want %q", h, got, claimsUs)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		ini  string
		want string
	}{
		{"[checks]\nvalid_syntax = maybe\n", `config: helo.checks.ini: [checks] valid_syntax: "maybe" is not one of reject, note, off`},
		{"[checks]\nbare_ip = yes\n", `config: helo.checks.ini: [checks] bare_ip: "yes" is not one of reject, note, off`},
		{"[checks]\nsyntax = reject\n", `config: helo.checks.ini: [checks] unknown key "syntax"`},
		{"valid_syntax = reject\n", `config: helo.checks.ini: [main] unknown key "valid_syntax"`},
		{"[check]\nvalid_syntax = reject\n", `config: helo.checks.ini: unknown section [check]`},
	}
	for _, tc := range cases {
		_, err := servertest.Build(t, map[string]string{"plugins": "helo.checks\n", "helo.checks.ini": tc.ini})
		if err == nil || err.Error() != tc.want {
			t.Errorf("helo.checks.ini %q: error %v, want %q", tc.ini, err, tc.want)
		}
	}
}
