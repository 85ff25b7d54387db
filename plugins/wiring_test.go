package plugins_test

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// xhello answers the command XHELLO, which loopmx does not implement.
type xhello struct{}

func (xhello) Name() string { return "test/xhello" }

func (xhello) Unrecognized(_ *plugins.Conn, line string) plugins.Result {
	if strings.EqualFold(line, "XHELLO") {
		return plugins.Result{Action: plugins.Accept, Reply: smtpproto.Reply{Code: 250, Enhanced: "2.0.0", Text: "Hello yourself"}}
	}
	return plugins.NoOpinion()
}

// TestUnrecognizedHookIsWired starts a server the way main.go does (config,
// OptionsFrom, New) with a plugin that answers an unknown command, and
// checks over TCP that the plugin is asked.
func TestUnrecognizedHookIsWired(t *testing.T) {
	cfg := configDir(t, map[string]string{"smtp.ini": "[main]\nme = mx.example.net\nlisten = 127.0.0.1:0\nloops = 1\n"})
	pool := workpool.New(1, 4)
	defer pool.Close()
	srv, err := loop.New(loop.OptionsFrom(cfg, zerolog.Nop()), plugins.NewChain(xhello{}), pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	conn, err := net.Dial("tcp", srv.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second)) // a hang fails instead of blocking the run
	r := bufio.NewReader(conn)
	if banner, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(banner, "220 ") {
		t.Fatalf("banner %q, %v", banner, err)
	}
	if _, err := conn.Write([]byte("XHELLO\r\n")); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if got != "250 2.0.0 Hello yourself\r\n" {
		t.Errorf("XHELLO got %q, want the plugin's answer", got)
	}
}
