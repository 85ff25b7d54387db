package loop_test

// Shared pieces of the loop integration tests: a server started in-process
// on 127.0.0.1:0, test plugins, and a raw SMTP client that checks every
// reply it reads.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"loopmx/internal/testlog"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/servertest"
	"loopmx/loop"
	"loopmx/loop/workpool"
	"loopmx/plugins"
)

// ioTimeout bounds every read and write of a test client, so a hung server
// fails a test instead of the whole run.
const ioTimeout = 20 * time.Second

// testServer is a running loopmx server and what a test needs of it.
type testServer struct {
	srv  *loop.Server
	pool *workpool.Pool
	addr string
	log  *syncBuffer
}

// testOptions are the defaults of config with what the tests of this
// package share: 127.0.0.1:0, two loops, single accept, mx.test, and
// timeouts short enough for a test.
func testOptions(t *testing.T, log zerolog.Logger) loop.Options {
	t.Helper()
	cfg, err := config.Default(nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := loop.OptionsFrom(cfg, log)
	opts.Listen, opts.Specs = []string{"127.0.0.1:0"}, nil
	opts.Loops = 2
	opts.SingleAccept = true
	opts.Proto.Hostname = "mx.test"
	opts.InactivityTimeout = 30 * time.Second
	opts.GracefulTimeout = 5 * time.Second
	opts.SpoolDir = t.TempDir()
	return opts
}

// startServer starts a server with two loops, single accept and the given
// plugins on a pool of workers goroutines with a queue of queueLen jobs.
// edit, when not nil, adjusts the options first. Cleanup opens every gate
// of the plugins, lets the pool run dry (so no hook outlives the loops),
// shuts the server down and closes the pool.
func startServer(t *testing.T, edit func(*loop.Options), workers, queueLen int, ps ...plugins.Plugin) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	opts := testOptions(t, zerolog.New(logs))
	if edit != nil {
		edit(&opts)
	}
	pool := workpool.New(workers, queueLen)
	srv, err := loop.New(opts, plugins.NewChain(ps...), pool)
	if err != nil {
		pool.Close()
		t.Fatalf("loop.New: %v", err)
	}
	if err := srv.Start(); err != nil {
		pool.Close()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		for _, p := range ps {
			if r, ok := p.(interface{ release() }); ok {
				r.release()
			}
		}
		// Let running hooks report back before the loops go away, then
		// stop the loops before the pool (the order main.go uses).
		deadline := time.Now().Add(ioTimeout)
		for (pool.Busy() > 0 || pool.Queued() > 0) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		pool.Close()
	})
	return &testServer{srv: srv, pool: pool, addr: srv.Addrs()[0].String(), log: logs}
}

// waitConnections waits until the server counts at most n connections.
func (ts *testServer) waitConnections(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for ts.srv.Connections() > n {
		if time.Now().After(deadline) {
			t.Fatalf("server still has %d connections, want <= %d", ts.srv.Connections(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gate holds blocking hooks until the test opens it.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

func (g *gate) wait() {
	if g != nil {
		<-g.ch
	}
}

// signal is a buffered channel a hook pings when it starts.
type signal chan struct{}

func newSignal() signal { return make(signal, 64) }

// gatedMail is a blocking MAIL hook that signals entered, then waits on
// the gate.
func gatedMail() (*hooks, *gate, signal) {
	g, entered := newGate(), newSignal()
	return &hooks{
		name:     "test/gated-mail",
		blocking: []plugins.Hook{plugins.HookMail},
		gate:     g,
		mail: func(*plugins.Conn, string) plugins.Result {
			entered.ping()
			g.wait()
			return plugins.NoOpinion()
		},
	}, g, entered
}

func (s signal) ping() {
	if s != nil {
		select {
		case s <- struct{}{}:
		default:
		}
	}
}

// await waits for one ping.
func (s signal) await(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s:
	case <-time.After(ioTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// stored is one message as the recorder saw it.
type stored struct {
	From     string
	Rcpts    []string
	Body     string
	Protocol string
	Spooled  bool // the body came from a spool file
}

// recorder is a queue plugin that keeps a copy of every message and its
// envelope. With block set its queue hook runs on the workpool; with gate
// set it also waits there until the gate opens.
type recorder struct {
	block   bool
	gate    *gate
	entered signal

	mu   sync.Mutex
	msgs []stored
}

func (r *recorder) Name() string { return "test/recorder" }

func (r *recorder) Blocks(h plugins.Hook) bool { return r.block && h == plugins.HookQueue }

func (r *recorder) Queue(c *plugins.Conn, m *plugins.Message) plugins.Result {
	r.entered.ping()
	r.gate.wait()
	body, err := io.ReadAll(m.Reader())
	if err != nil {
		return plugins.InternalError()
	}
	s := stored{Body: string(body), Protocol: m.Protocol, Spooled: m.Spooled()}
	if c.Tx != nil {
		s.From = c.Tx.From
		s.Rcpts = slices.Clone(c.Tx.Rcpts)
	}
	r.mu.Lock()
	r.msgs = append(r.msgs, s)
	r.mu.Unlock()
	return plugins.OK()
}

func (r *recorder) release() {
	if r.gate != nil {
		r.gate.open()
	}
}

// messages returns a copy of what was queued so far.
func (r *recorder) messages() []stored {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// only returns the single queued message, failing the test otherwise.
func (r *recorder) only(t *testing.T) stored {
	t.Helper()
	msgs := r.messages()
	if len(msgs) != 1 {
		t.Fatalf("queued %d messages, want 1: %+v", len(msgs), msgs)
	}
	return msgs[0]
}

// hooks is a test plugin made of optional functions for the connect, MAIL
// and RCPT hooks; the hooks listed in blocking run on the workpool. A nil
// function has no opinion.
type hooks struct {
	name     string
	blocking []plugins.Hook
	gate     *gate
	connect  func(c *plugins.Conn) plugins.Result
	mail     func(c *plugins.Conn, from string) plugins.Result
	rcpt     func(c *plugins.Conn, to string) plugins.Result
}

func (h *hooks) Name() string { return h.name }

func (h *hooks) Blocks(k plugins.Hook) bool { return slices.Contains(h.blocking, k) }

func (h *hooks) Connect(c *plugins.Conn) plugins.Result {
	if h.connect == nil {
		return plugins.NoOpinion()
	}
	return h.connect(c)
}

func (h *hooks) Mail(c *plugins.Conn, from string) plugins.Result {
	if h.mail == nil {
		return plugins.NoOpinion()
	}
	return h.mail(c, from)
}

func (h *hooks) Rcpt(c *plugins.Conn, to string) plugins.Result {
	if h.rcpt == nil {
		return plugins.NoOpinion()
	}
	return h.rcpt(c, to)
}

func (h *hooks) release() {
	if h.gate != nil {
		h.gate.open()
	}
}

var (
	_ plugins.QueueHook   = (*recorder)(nil)
	_ plugins.Blocker     = (*recorder)(nil)
	_ plugins.ConnectHook = (*hooks)(nil)
	_ plugins.MailHook    = (*hooks)(nil)
	_ plugins.RcptHook    = (*hooks)(nil)
	_ plugins.Blocker     = (*hooks)(nil)
)

// reply is one SMTP reply: its code and its lines as received, without
// CRLF.
type reply struct {
	Code  int
	Lines []string
}

func (r reply) String() string { return strings.Join(r.Lines, " | ") }

// Last is the reply's last line.
func (r reply) Last() string { return r.Lines[len(r.Lines)-1] }

// isEHLO tells whether r is the multi-line answer to EHLO.
func (r reply) isEHLO() bool {
	return r.Code == 250 && len(r.Lines) > 1 && strings.HasPrefix(r.Lines[0], "250-mx.test")
}

// isHELO tells whether r is the answer to HELO, which ends the extended
// session started by an earlier EHLO (RFC 2034 codes are an EHLO feature).
func (r reply) isHELO() bool { return len(r.Lines) == 1 && r.Lines[0] == "250 mx.test" }

var enhancedRe = regexp.MustCompile(`^([245])\.[0-9]{1,3}\.[0-9]{1,3} `)

// enhancedProblem explains why r does not carry, on every line, an enhanced
// status code of its own class (RFC 2034, RFC 3463), or returns "".
// Intermediate 3xx replies have no enhanced codes.
func enhancedProblem(r reply) string {
	if r.Code/100 == 3 {
		return ""
	}
	for _, l := range r.Lines {
		if len(l) < 4 {
			return fmt.Sprintf("no text in %q", l)
		}
		m := enhancedRe.FindStringSubmatch(l[4:])
		if m == nil {
			return fmt.Sprintf("no enhanced status code in %q", l)
		}
		if m[1][0] != l[0] {
			return fmt.Sprintf("enhanced code class %s does not match reply %q", m[1], l)
		}
	}
	return ""
}

// readReply reads one reply with the tests' one parser (servertest.ReadReply).
func readReply(r *bufio.Reader) (reply, error) {
	rep, err := servertest.ReadReply(r)
	return reply{Code: rep.Code, Lines: rep.Lines}, err
}

// checkTranscript parses raw server output and requires an enhanced code in
// every reply after the EHLO reply. It returns the replies.
func checkTranscript(t *testing.T, raw []byte) []reply {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	var all []reply
	afterEHLO := false
	for {
		r, err := readReply(br)
		if err == io.EOF {
			return all
		}
		if err != nil {
			t.Fatalf("server output: %v", err)
		}
		all = append(all, r)
		if r.isEHLO() || r.isHELO() {
			afterEHLO = r.isEHLO()
			continue
		}
		if afterEHLO {
			if p := enhancedProblem(r); p != "" {
				t.Errorf("reply after EHLO: %s", p)
			}
		}
	}
}

// client is a raw SMTP client: it writes exact bytes and reads replies.
// Every reply it reads after the EHLO reply must carry an enhanced status
// code of its class.
type client struct {
	t     *testing.T
	conn  *net.TCPConn
	r     *bufio.Reader
	ehlo  bool
	reads []reply
}

// dial connects without reading the banner.
func dial(t *testing.T, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	return &client{t: t, conn: nc.(*net.TCPConn), r: bufio.NewReader(nc)}
}

// connect dials and requires the banner.
func connect(t *testing.T, addr string) *client {
	t.Helper()
	c := dial(t, addr)
	c.expectLine("220 mx.test ESMTP loopmx")
	return c
}

// write sends s as is.
func (c *client) write(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("write %q: %v", abbrev(s), err)
	}
}

// read reads one reply and checks its enhanced code.
func (c *client) read() (reply, error) {
	r, err := readReply(c.r)
	if err != nil {
		return r, err
	}
	c.reads = append(c.reads, r)
	if r.isEHLO() || r.isHELO() {
		c.ehlo = r.isEHLO()
	} else if c.ehlo {
		if p := enhancedProblem(r); p != "" {
			c.t.Errorf("reply after EHLO: %s", p)
		}
	}
	return r, nil
}

// next reads one reply or fails the test.
func (c *client) next() reply {
	c.t.Helper()
	r, err := c.read()
	if err != nil {
		c.t.Fatalf("reading a reply: %v (replies so far: %v)", err, c.reads)
	}
	return r
}

// expect reads one reply whose last line starts with prefix ("250 2.1.0").
func (c *client) expect(prefix string) reply {
	c.t.Helper()
	r := c.next()
	if !strings.HasPrefix(r.Last(), prefix) {
		c.t.Fatalf("got reply %q, want %q...", r, prefix)
	}
	return r
}

// expectLine reads a one-line reply equal to line.
func (c *client) expectLine(line string) {
	c.t.Helper()
	r := c.next()
	if len(r.Lines) != 1 || r.Lines[0] != line {
		c.t.Fatalf("got reply %q, want %q", r, line)
	}
}

// expectAll reads one reply per prefix, in order.
func (c *client) expectAll(prefixes ...string) {
	c.t.Helper()
	for _, p := range prefixes {
		c.expect(p)
	}
}

// cmd sends one command line and expects a reply starting with prefix.
func (c *client) cmd(line, prefix string) reply {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.expect(prefix)
}

// hello sends EHLO and reads the capability list.
func (c *client) hello() reply {
	c.t.Helper()
	c.write("EHLO client.test\r\n")
	return c.expectEHLO()
}

// expectEHLO reads the answer to an EHLO the test already sent.
func (c *client) expectEHLO() reply {
	c.t.Helper()
	r := c.next()
	if !r.isEHLO() {
		c.t.Fatalf("reply %q, want the EHLO capability list", r)
	}
	return r
}

// expectEOF requires the server to close the connection with nothing more
// to say, then closes the client's side.
func (c *client) expectEOF() {
	c.t.Helper()
	r, err := c.read()
	if err == nil {
		c.t.Fatalf("got reply %q, want the connection closed", r)
	}
	if !errors.Is(err, io.EOF) && !isReset(err) {
		c.t.Fatalf("want EOF, got %v", err)
	}
	// Close our side too, so the server need not linger.
	c.conn.Close()
}

// expectSilence requires that no reply arrives within d (the server is
// holding its answers back, e.g. while a hook runs).
func (c *client) expectSilence(d time.Duration) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	_, err := c.r.Peek(1)
	c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	var ne net.Error
	if err == nil {
		r, _ := c.read()
		c.t.Fatalf("unexpected reply %q while the server should be silent", r)
	}
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("connection failed while waiting: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// abbrev shortens long test inputs in messages.
func abbrev(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%s...(%d octets)", s[:60], len(s))
	}
	return s
}

// tapConn records what the server sends, for clients we do not drive
// line by line (net/smtp).
type tapConn struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) received() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.got.Bytes())
}

// syncBuffer is the shared goroutine-safe log sink.
type syncBuffer = testlog.Buffer
