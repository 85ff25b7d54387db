package supervisor

// The tests run the real supervisor code on real processes: the worker
// binary is this test binary, which TestMain turns into a small fake
// worker when it finds the worker contract in its environment. The fake
// answers every connection with a line naming its worker id, generation
// and pid, and is steered by FAKE_* variables.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"loopmx/internal/testlog"
	"loopmx/internal/testnotify"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"loopmx/config"
)

func TestMain(m *testing.M) {
	if os.Getenv(EnvRole) == "worker" {
		os.Exit(fakeWorker())
	}
	os.Exit(m.Run())
}

// fakeWorker serves the inherited listeners until SIGTERM; its banner
// also says what the supervisor told it the listener is
// ("listener=proxy@127.0.0.1:2526"). FAKE_FAIL_GEN=G
// makes generation G exit 3 before it is ready, FAKE_HANG_GEN=G makes it
// never ready, FAKE_CRASH_ID=N makes worker N exit 7 shortly after it is
// ready, FAKE_IGNORE_TERM=1 makes it ignore SIGTERM, FAKE_TERM_EXIT=N
// makes it exit N when SIGTERM stops it.
func fakeWorker() int {
	w, _, err := WorkerEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	gen, id := strconv.Itoa(w.Generation), strconv.Itoa(w.ID)
	if os.Getenv("FAKE_FAIL_GEN") == gen {
		return 3
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM)
	var ls []net.Listener
	for i, f := range w.Listeners {
		spec := "unknown"
		if i < len(w.Specs) {
			spec = strings.ReplaceAll(specString(w.Specs[i]), " ", "@")
		}
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		ls = append(ls, l)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "220 worker=%d gen=%d pid=%d listener=%s\r\n", w.ID, w.Generation, os.Getpid(), spec)
				c.Close()
			}
		}()
	}
	if os.Getenv("FAKE_HANG_GEN") != gen {
		w.Ready()
	}
	if os.Getenv("FAKE_CRASH_ID") == id {
		time.Sleep(30 * time.Millisecond)
		return 7
	}
	for range sigs {
		if os.Getenv("FAKE_IGNORE_TERM") != "1" {
			break
		}
	}
	for _, l := range ls {
		l.Close()
	}
	code, _ := strconv.Atoi(os.Getenv("FAKE_TERM_EXIT"))
	return code
}

// lines returns the decoded log lines whose message is msg.
func (l *logBuf) lines(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// harness runs one supervisor in the test process.
type harness struct {
	t     *testing.T
	dir   string // config directory
	addr  string
	sigs  chan os.Signal
	log   *logBuf
	s     *sup
	exit  chan int
	code  int
	ended bool
}

// freeAddr returns 127.0.0.1:port with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// testListen opens a listening socket the way loop.ListenFile does.
func testListen(addr string, backlog int, reuseport bool) (*os.File, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if reuseport {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return l.(*net.TCPListener).File()
}

// newHarness writes smtp.ini (listen on a free port, me, then ini) and
// starts a supervisor on it; tweak may adjust it before it runs.
func newHarness(t *testing.T, ini string, tweak func(*sup)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), addr: freeAddr(t), sigs: make(chan os.Signal, 4), log: &logBuf{}, exit: make(chan int, 1)}
	h.writeINI(ini)
	cfg, err := config.Load(h.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Exe:    exe,
		Load:   func() (*config.Config, error) { return config.Load(h.dir, nil) },
		Listen: testListen,
		Log:    zerolog.New(h.log).With().Timestamp().Logger(),
	}
	h.s, err = newSup(cfg, opts, h.sigs)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(h.s)
	}
	go func() { h.exit <- h.s.run() }()
	t.Cleanup(func() {
		if !h.ended {
			h.sigs <- syscall.SIGTERM
			h.sigs <- syscall.SIGTERM
			h.wait(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", h.log.String())
		}
	})
	return h
}

func (h *harness) writeINI(ini string) {
	h.t.Helper()
	body := "listen = " + h.addr + "\nme = test.example\n" + ini
	if err := os.WriteFile(filepath.Join(h.dir, "smtp.ini"), []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// wait waits up to d for run to return and reports whether it did.
func (h *harness) wait(d time.Duration) bool {
	if h.ended {
		return true
	}
	select {
	case h.code = <-h.exit:
		h.ended = true
		return true
	case <-time.After(d):
		return false
	}
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// waitLog waits until at least n lines with message msg were logged.
func (h *harness) waitLog(msg string, n int, d time.Duration) []map[string]any {
	h.t.Helper()
	var got []map[string]any
	if !waitFor(d, func() bool { got = h.log.lines(msg); return len(got) >= n }) {
		h.t.Fatalf("%d %q lines after %v, want %d", len(got), msg, d, n)
	}
	return got
}

// banner connects and returns the fake worker's greeting.
func banner(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// num reads a numeric log field.
func num(m map[string]any, key string) int {
	f, _ := m[key].(float64)
	return int(f)
}

// listenNotify stands a testnotify socket in for systemd's NOTIFY_SOCKET
// for the rest of the test.
func listenNotify(t *testing.T) *testnotify.Socket {
	t.Helper()
	n := testnotify.Listen(t, nil)
	t.Setenv("NOTIFY_SOCKET", n.Path)
	return n
}

// logBuf collects the supervisor's JSON log lines (the shared
// goroutine-safe sink, plus a decoder).
type logBuf struct{ testlog.Buffer }
