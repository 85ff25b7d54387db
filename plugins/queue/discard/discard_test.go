package discard_test

import (
	"io"
	"os"
	"strings"
	"testing"

	"loopmx/internal/servertest"
	"loopmx/plugins"
	"loopmx/plugins/queue/discard"
)

func queueReply(t *testing.T, ch *plugins.Chain, c *plugins.Conn) string {
	t.Helper()
	call := &plugins.Call{Hook: plugins.HookQueue, Msg: plugins.NewMessage([]byte("Subject: x\r\n\r\ny\r\n"), "ESMTP")}
	res, _, done := ch.Step(c, call, 0)
	if !done {
		t.Fatal("discard went to the workpool; it never waits and should run inline")
	}
	if res.Plugin != discard.Name {
		t.Errorf("decided by %q, want %s", res.Plugin, discard.Name)
	}
	return string(plugins.ReplyFor(plugins.HookQueue, res).AppendTo(nil))
}

func TestDiscardAccepts(t *testing.T) {
	ch := plugins.NewChain(discard.Discard{})
	c := &plugins.Conn{ID: "w1.d"}
	c.BeginTx("sender@example.org", c.Started)
	c.Tx.Rcpts = []string{"user@example.com"}
	if got, want := queueReply(t, ch, c), "250 2.0.0 Ok: queued as w1.d.1 (discarded)\r\n"; got != want {
		t.Errorf("client reads %q, want %q", got, want)
	}
	c.EndTx()
	if got, want := queueReply(t, ch, c), "250 2.0.0 Ok: queued as w1.d (discarded)\r\n"; got != want {
		t.Errorf("outside a transaction the client reads %q, want %q", got, want)
	}
}

// build loads a config directory holding files and builds its chain,
// returning what the plugins wrote to stderr meanwhile.
func build(t *testing.T, files map[string]string) (*plugins.Chain, string, error) {
	t.Helper()
	files["smtp.ini"] = "[main]\nme = mx.example.net\n"
	cfg := servertest.LoadDir(t, servertest.WriteDir(t, files))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	ch, err := plugins.Build(cfg)
	os.Stderr = stderr
	w.Close()
	out, _ := io.ReadAll(r)
	r.Close()
	if err == nil {
		t.Cleanup(func() { ch.Close() })
	}
	return ch, string(out), err
}

func TestSetupWarns(t *testing.T) {
	ch, stderr, err := build(t, map[string]string{"plugins": "queue/discard\n"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"level":"warn"`, `"plugin":"queue/discard"`, "DISCARDED"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr at setup %q lacks %s", stderr, want)
		}
	}
	c := &plugins.Conn{ID: "w1.b"}
	c.BeginTx("", c.Started)
	if got := queueReply(t, ch, c); !strings.HasPrefix(got, "250 2.0.0 ") || !strings.Contains(got, "(discarded)") {
		t.Errorf("client reads %q", got)
	}
}

func TestSetupRejectsUnknownKey(t *testing.T) {
	_, _, err := build(t, map[string]string{"plugins": "queue/discard\n", "discard.ini": "really = yes\n"})
	if err == nil {
		t.Fatal("Build accepted an unknown key in discard.ini")
	}
	if !strings.Contains(err.Error(), "discard.ini") || !strings.Contains(err.Error(), `"really"`) {
		t.Errorf("error %q does not name discard.ini and the key", err)
	}
}
