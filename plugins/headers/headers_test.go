package headers_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/plugins"
	"loopmx/plugins/headers"
)

const (
	tooLarge = "552 5.6.0 Header too large"
	tooMany  = "554 5.4.6 Too many hops, mail loop?"
)

// dialer makes the test clients; every refusal they read, the banner's
// included, must carry an enhanced status code.
var dialer = servertest.Dialer{Enhanced: servertest.Always}

// recorder is the queue of the test servers: it keeps every message.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (*recorder) Name() string { return "test/queue" }

func (r *recorder) Queue(_ *plugins.Conn, m *plugins.Message) plugins.Result {
	r.mu.Lock()
	r.msgs = append(r.msgs, string(m.Bytes()))
	r.mu.Unlock()
	return plugins.OK()
}

func (r *recorder) queued() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// current is the recorder the next server gets.
var current *recorder

func init() {
	plugins.Register("test/queue", func(*config.Config) (plugins.Plugin, error) {
		if current == nil {
			return nil, fmt.Errorf("plugin/test/queue: the test set no instance")
		}
		return current, nil
	})
}

// start serves headers with the given headers.ini, then the recorder.
func start(t *testing.T, ini string) (*servertest.Server, *recorder) {
	t.Helper()
	current = &recorder{}
	t.Cleanup(func() { current = nil })
	r := current
	s := servertest.Start(t, map[string]string{"plugins": "headers\ntest/queue\n", "headers.ini": ini})
	return s, r
}

// hops returns n Received fields, newest first, as relays add them.
func hops(n int) string {
	var b strings.Builder
	for i := n; i > 0; i-- {
		fmt.Fprintf(&b, "Received: from relay%d.example.org (relay%d.example.org [192.0.2.%d])\r\n\tby relay%d.example.org with ESMTP id %d;\r\n\tTue, 05 Mar 2024 14:07:%02d +0100\r\n",
			i-1, i-1, i%250+1, i, 1000+i, i%60)
	}
	return b.String()
}

// filler returns header fields of about n octets in all.
func filler(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "X-Filler-%d: %s\r\n", i, strings.Repeat("x", 900))
	}
	return b.String()
}

const ordinary = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: hello\r\n"

// send delivers one message in an open session and returns the reply to
// the end of the data.
func send(c *servertest.Client, header, body string) string {
	c.T.Helper()
	c.Cmd("MAIL FROM:<alice@example.org>", "250 2.1.0")
	c.Cmd("RCPT TO:<bob@example.com>", "250 2.1.5")
	c.Cmd("DATA", "354")
	c.Send(header + "\r\n" + body + "\r\n.")
	r, err := c.Read()
	if err != nil {
		c.T.Fatalf("reading the reply to the message: %v", err)
	}
	return r.Last()
}

func TestRealServer(t *testing.T) {
	s, q := start(t, "")
	c := dialer.Dial(t, s.Addr)
	c.Expect("220 ")
	c.Cmd("EHLO client.test", "250")

	if got := send(c, hops(60)+ordinary, "a looping message"); got != tooMany {
		t.Errorf("60 Received fields: got %q, want %q", got, tooMany)
	}
	if got := send(c, ordinary+filler(70<<10), "a huge header"); got != tooLarge {
		t.Errorf("a 70 KiB header: got %q, want %q", got, tooLarge)
	}
	// The session goes on after a refused message.
	if got := send(c, hops(3)+ordinary, "an ordinary message"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Errorf("an ordinary message: got %q, want 250 2.0.0", got)
	}
	// The limits are on the header: a large body and Received lines in
	// the body are fine.
	body := strings.Repeat("Received: in the body is text, not a trace field\r\n", 2000)
	if got := send(c, ordinary, body); !strings.HasPrefix(got, "250 2.0.0") {
		t.Errorf("a large body: got %q, want 250 2.0.0", got)
	}
	c.Cmd("QUIT", "221")

	msgs := q.queued()
	if len(msgs) != 2 || !strings.Contains(msgs[0], "an ordinary message") {
		t.Errorf("queued %d messages, want the two accepted ones", len(msgs))
	}
	log := s.Log.String()
	for _, want := range []string{`"plugin":"headers","code":554`, `"plugin":"headers","code":552`, `"received":60,"max_received":50`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

func TestConfiguredLimits(t *testing.T) {
	s, _ := start(t, "max_received = 3\nmax_header_bytes = 2k\n")
	c := dialer.Dial(t, s.Addr)
	c.Expect("220 ")
	c.Cmd("EHLO client.test", "250")
	for _, tc := range []struct {
		name, header, want string
	}{
		{"3 Received", hops(3) + ordinary, "250 2.0.0"},
		{"4 Received", hops(4) + ordinary, tooMany},
		{"2 KiB header", ordinary + filler(1024), "250 2.0.0"},
		{"3 KiB header", ordinary + filler(3072), tooLarge},
	} {
		if got := send(c, tc.header, "body"); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
	c.Cmd("QUIT", "221")
}

func TestChecksOff(t *testing.T) {
	s, q := start(t, "max_received = 0\nmax_header_bytes = 0\n")
	c := dialer.Dial(t, s.Addr)
	c.Expect("220 ")
	c.Cmd("EHLO client.test", "250")
	if got := send(c, hops(200)+ordinary+filler(100<<10), "body"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Errorf("with both checks off: got %q, want 250 2.0.0", got)
	}
	c.Cmd("QUIT", "221")
	if len(q.queued()) != 1 {
		t.Error("the message was not queued")
	}
}

// dataPost runs the data_post hooks as the loop does and returns what the
// client reads ("" when the message goes on to the queue). A refusal must
// be recorded as the transaction's one finding, a fail whose message
// names the limit; a message let through gets no finding.
func dataPost(t *testing.T, p *headers.Headers, msg string) string {
	t.Helper()
	ch := plugins.NewChain(p)
	c := &plugins.Conn{ID: "t.1"}
	c.BeginTx("s@example.org", time.Now())
	call := &plugins.Call{Hook: plugins.HookDataPost, Msg: plugins.NewMessage([]byte(msg), "ESMTP")}
	res, _, done := ch.Step(c, call, 0)
	if !done {
		t.Fatal("headers went to the workpool; it must run inline")
	}
	got := ""
	if res.Action != plugins.Continue {
		got = strings.TrimSuffix(string(plugins.ReplyFor(plugins.HookDataPost, res).AppendTo(nil)), "\r\n")
	}
	f, _ := c.Tx.Findings()
	switch {
	case got == "" && len(f) != 0:
		t.Errorf("a message let through has findings %+v", f)
	case got == tooLarge && (len(f) != 1 || f[0].Outcome != plugins.Fail || !strings.HasPrefix(f[0].Message, "header section over max_header_bytes ")),
		got == tooMany && (len(f) != 1 || f[0].Outcome != plugins.Fail || !strings.Contains(f[0].Message, " Received fields over max_received ")):
		t.Errorf("refused with %q, findings %+v", got, f)
	}
	return got
}

func TestReceivedCount(t *testing.T) {
	p := headers.New(headers.DefaultMaxHeaderBytes, 2)
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"two", "Received: a\r\nReceived: b\r\n\r\nbody\r\n", ""},
		{"three", "Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nbody\r\n", tooMany},
		{"folded fields count once", "Received: a\r\n\tReceived: b\r\n Received: c\r\nReceived: d\r\n\r\n", ""},
		{"any case", "received: a\r\nRECEIVED: b\r\nReCeIvEd: c\r\n\r\n", tooMany},
		{"space before the colon", "Received : a\r\nReceived\t: b\r\nReceived: c\r\n\r\n", tooMany},
		{"other names", "X-Received: a\r\nReceived-SPF: b\r\nARC-Received: c\r\nReceivedX: d\r\n\r\n", ""},
		{"in the body", "Subject: x\r\n\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n", ""},
		{"no empty line", "Received: a\r\nReceived: b\r\nReceived: c\r\n", tooMany},
		{"body without empty line", "Subject: x\r\nnot a field\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n", ""},
		{"header starts with a fold", " Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n\r\n", ""},
		{"no header", "\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n", ""},
		{"empty message", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dataPost(t, p, tc.msg); got != tc.want {
				t.Errorf("client reads %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHeaderSize(t *testing.T) {
	const limit = 100
	p := headers.New(limit, headers.DefaultMaxReceived)
	field := func(n int) string { // a field of n octets, CRLF included
		return "X-Pad: " + strings.Repeat("p", n-len("X-Pad: \r\n")) + "\r\n"
	}
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"at the limit", field(60) + field(40) + "\r\nbody\r\n", ""},
		{"one octet over", field(60) + field(41) + "\r\nbody\r\n", tooLarge},
		{"folded lines count", field(60) + "X-Fold: a\r\n" + "\t" + strings.Repeat("f", 40) + "\r\n\r\n", tooLarge},
		{"the body does not count", field(60) + "\r\n" + strings.Repeat("b", 10000) + "\r\n", ""},
		{"no empty line, no more header", field(60) + "plain text, no field\r\n" + strings.Repeat("b", 10000) + "\r\n", ""},
		{"no empty line, all header", field(60) + field(60), tooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dataPost(t, p, tc.msg); got != tc.want {
				t.Errorf("client reads %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		name, ini string
		err       []string // empty: must load
	}{
		{"no file", "", nil},
		{"both keys", "max_header_bytes = 128k\nmax_received = 30\n", nil},
		{"checks off", "max_header_bytes = 0\nmax_received = 0\n", nil},
		{"unknown key", "max_hops = 10\n", []string{"config: headers.ini:", `"max_hops"`}},
		{"bad size", "max_header_bytes = big\n", []string{"config: headers.ini:", "max_header_bytes", `"big"`}},
		{"negative size", "max_header_bytes = -1\n", []string{"config: headers.ini:", "max_header_bytes", `"-1"`}},
		{"bad count", "max_received = many\n", []string{"config: headers.ini:", "max_received", `"many"`}},
		{"negative count", "max_received = -3\n", []string{"config: headers.ini:", "max_received", `"-3"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"plugins": "headers\n"}
			if tc.ini != "" {
				files["headers.ini"] = tc.ini
			}
			servertest.CheckBuild(t, files, tc.err...)
		})
	}
}
