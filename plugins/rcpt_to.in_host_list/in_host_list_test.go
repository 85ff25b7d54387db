package inhostlist_test

import (
	"strings"
	"testing"
	"time"

	"loopmx/internal/servertest"
	"loopmx/plugins"
	inhostlist "loopmx/plugins/rcpt_to.in_host_list"
)

const (
	accepted = "" // the zero Reply: the session answers 250 2.1.5 Ok
	denied   = "550 5.7.1 Relaying denied\r\n"
)

// rcpt runs the rcpt hook through ch as the event loop does and returns
// what the client reads ("" when the session's default 250 is used). It
// also requires the one finding recorded for the transaction to match.
func rcpt(t *testing.T, ch *plugins.Chain, to string) string {
	t.Helper()
	c := &plugins.Conn{ID: "w1.r"}
	c.BeginTx("s@example.net", time.Now())
	res, _, done := ch.Step(c, &plugins.Call{Hook: plugins.HookRcpt, Arg: to}, 0)
	if !done {
		t.Fatal("in_host_list went to the workpool; it is a map lookup and should run inline")
	}
	got := accepted
	if rep := plugins.ReplyFor(plugins.HookRcpt, res); rep.IsZero() {
		if res.Action != plugins.Accept {
			t.Errorf("%s: no plugin decided (%s); in_host_list must accept or refuse", to, res.Action)
		}
	} else {
		got = string(rep.AppendTo(nil))
	}
	want := plugins.Finding{Plugin: inhostlist.Name, Outcome: plugins.Pass, Message: to}
	if got != accepted {
		want.Outcome = plugins.Fail
		want.Message += ": domain not in host_list"
		if !strings.Contains(to, "@") {
			want.Message = to + ": no domain"
		}
	}
	if f, _ := c.Tx.Findings(); len(f) != 1 || f[0] != want {
		t.Errorf("RCPT TO:<%s>: transaction findings %+v, want %+v", to, f, want)
	}
	return got
}

// cases are recipients as the session hands them over: without angle
// brackets and source route, quoted local parts as written.
var cases = []struct {
	to, want string
}{
	{"user@example.com", accepted},
	{"User@EXAMPLE.Com", accepted},
	{"user@example.com.", accepted},
	{"user@example.org", accepted},
	{"user@EXAMPLE.ORG.", accepted},
	{"user@other.net", denied},
	{"user@sub.example.com", denied},
	{"user@example.com.evil.net", denied},
	{"user@com", denied},
	{"postmaster", accepted},
	{"PostMaster", accepted},
	{"postmaster@other.net", denied},
	{"postmaster@example.com", accepted},
	{"abuse", denied},
	{"user@[192.0.2.1]", denied},
	{"user@[IPv6:2001:db8::1]", denied},
	{`"a@b"@example.com`, accepted},
	{`"a@example.com"@other.net`, denied},
	{`"john smith"@example.org`, accepted},
}

func TestRcptNew(t *testing.T) {
	// As an embedder might pass them: mixed case, a trailing dot, spaces.
	ch := plugins.NewChain(inhostlist.New([]string{"Example.COM", " example.org. "}))
	for _, tc := range cases {
		if got := rcpt(t, ch, tc.to); got != tc.want {
			t.Errorf("RCPT TO:<%s>: client reads %q, want %q", tc.to, got, tc.want)
		}
	}
}

// build loads a config directory holding files and builds its chain.
func build(t *testing.T, files map[string]string) (*plugins.Chain, error) {
	t.Helper()
	files["smtp.ini"] = "[main]\nme = mx.example.net\n"
	return servertest.Build(t, files)
}

func TestRcptFromHostList(t *testing.T) {
	ch, err := build(t, map[string]string{
		"plugins":   "rcpt_to.in_host_list\n",
		"host_list": "# our domains\nEXAMPLE.com\nexample.org.  # with a trailing dot\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		if got := rcpt(t, ch, tc.to); got != tc.want {
			t.Errorf("RCPT TO:<%s>: client reads %q, want %q", tc.to, got, tc.want)
		}
	}
}

func TestRcptEmptyHostList(t *testing.T) {
	ch, err := build(t, map[string]string{"plugins": "rcpt_to.in_host_list\n"})
	if err != nil {
		t.Fatal(err)
	}
	for to, want := range map[string]string{"user@example.com": denied, "postmaster": accepted} {
		if got := rcpt(t, ch, to); got != want {
			t.Errorf("without host_list, RCPT TO:<%s>: client reads %q, want %q", to, got, want)
		}
	}
}

func TestRcptAddressLiteralListed(t *testing.T) {
	// An operator who wants mail to an address literal lists it as such.
	ch := plugins.NewChain(inhostlist.New([]string{"[192.0.2.1]"}))
	if got := rcpt(t, ch, "user@[192.0.2.1]"); got != accepted {
		t.Errorf("listed address literal: client reads %q", got)
	}
}

func TestSetupRejectsUnknownKey(t *testing.T) {
	_, err := build(t, map[string]string{"plugins": "rcpt_to.in_host_list\n", "rcpt_to.in_host_list.ini": "domains = example.com\n"})
	if err == nil {
		t.Fatal("Build accepted a key the plugin does not have")
	}
	if !strings.Contains(err.Error(), "rcpt_to.in_host_list.ini") || !strings.Contains(err.Error(), `"domains"`) {
		t.Errorf("error %q does not name the file and the key", err)
	}
}
