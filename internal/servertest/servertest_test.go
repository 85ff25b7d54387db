package servertest_test

import (
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"loopmx/internal/servertest"
)

func TestStartServesTheConfigDirectory(t *testing.T) {
	s := servertest.Start(t, map[string]string{"plugins": ""})
	c := servertest.Dialer{}.Dial(t, s.Addr)
	c.ExpectExact("220 mx.test ESMTP loopmx")
	c.EHLO("client.test")
	c.Cmd("MAIL FROM:<a@example.org>", "250 2.1.0")
	c.Cmd("RSET", "250 2.0.0")
	c.Quit()
	servertest.Eventually(t, 5*time.Millisecond, "the connection's log line", func() bool {
		return s.Log.Count(`"message":"connection"`, `"end":"quit"`) == 1
	})
	if n := s.Log.Count(`"message":"transaction"`, `"result":"reset"`); n != 1 {
		t.Errorf("%d transaction lines for one RSET, want 1:\n%s", n, s.Log)
	}
}

func TestBuildReportsThePluginError(t *testing.T) {
	if _, err := servertest.Build(t, map[string]string{"plugins": "no/such/plugin\n"}); err == nil || !strings.Contains(err.Error(), "no/such/plugin") {
		t.Errorf("Build: error %v, want one naming the unknown plugin", err)
	}
}

// recorder is a testing.TB that records the errors a Client reports.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// scripted returns a client of d reading script, as a server wrote it
// before it closed the connection.
func scripted(t *testing.T, d servertest.Dialer, rt testing.TB, script string) *servertest.Client {
	server, client := net.Pipe()
	go func() {
		io.WriteString(server, script)
		server.Close()
	}()
	t.Cleanup(func() { server.Close() })
	return d.Client(rt, client)
}

func TestEnhancedCodesChecked(t *testing.T) {
	const script = "554 no code before EHLO\r\n" +
		"250-mx.test\r\n250 PIPELINING\r\n" +
		"550 no code after EHLO\r\n" +
		"550-5.1.1 first line\r\n550 second line without\r\n" +
		"451 5.3.0 class of another reply\r\n" +
		"250 2.0.0 Ok\r\n" +
		"250 mx.test\r\n" +
		"550 no code after HELO\r\n"
	for _, tc := range []struct {
		strictness servertest.Strictness
		want       []string
	}{
		{servertest.AfterEHLO, []string{"550 no code after EHLO", "550 second line without", "451 5.3.0 class of another reply"}},
		{servertest.Always, []string{"554 no code before EHLO", "550 no code after EHLO", "550 second line without", "451 5.3.0 class of another reply", "550 no code after HELO"}},
		{servertest.Never, nil},
	} {
		t.Run(strconv.Itoa(int(tc.strictness)), func(t *testing.T) {
			rt := &recorder{TB: t}
			c := scripted(t, servertest.Dialer{Enhanced: tc.strictness}, rt, script)
			for {
				if _, err := c.Read(); err != nil {
					if !errors.Is(err, io.EOF) {
						t.Fatal(err)
					}
					break
				}
			}
			if len(rt.errs) != len(tc.want) {
				t.Fatalf("errors %q, want %d about %q", rt.errs, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(rt.errs[i], strconv.Quote(w)) {
					t.Errorf("error %d %q, want one about %q", i, rt.errs[i], w)
				}
			}
		})
	}
}

func TestReadRejectsMalformedReplies(t *testing.T) {
	for _, tc := range []struct{ script, want string }{
		{"250 Ok\n", "without CRLF"},
		{"250\r\n", "short reply line"},
		{"2x0 Ok\r\n", "bad reply code"},
		{"250-one\r\n251 two\r\n", "code changes inside a reply"},
		{"250_Ok\r\n", "bad separator"},
		{"250 O", "partial line"},
	} {
		c := scripted(t, servertest.Dialer{}, t, tc.script)
		if _, err := c.Read(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %s", tc.script, err, tc.want)
		}
	}
}

func TestReplyText(t *testing.T) {
	c := scripted(t, servertest.Dialer{}, t, "250-mx.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n")
	r := c.Next()
	if r.Code != 250 || r.Last() != "250 SMTPUTF8" || r.Text() != "mx.test\nPIPELINING\nSMTPUTF8" {
		t.Errorf("reply %+v: text %q", r, r.Text())
	}
	if got, want := r.String(), "250 mx.test\nPIPELINING\nSMTPUTF8"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// TestOnlyTestsImportIt: no file of the module but a _test.go file may
// import servertest.
func TestOnlyTestsImportIt(t *testing.T) {
	root := filepath.Join("..", "..")
	const path = `"loopmx/internal/servertest"`
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && name != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if imp.Path.Value == path {
				t.Errorf("%s imports servertest; only _test.go files may", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
