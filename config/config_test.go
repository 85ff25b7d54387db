package config

import (
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeDir creates a config directory holding files (name -> content) and
// returns its path.
func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// envMap returns an env lookup function backed by m.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// loadSMTP loads a directory whose only file is smtp.ini with content.
func loadSMTP(t *testing.T, content string) (*Config, error) {
	t.Helper()
	return Load(writeDir(t, map[string]string{"smtp.ini": content}), nil)
}

func TestLoadEmptyDirGivesDefaults(t *testing.T) {
	c, err := Load(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := Main{
		Listen:              []string{"127.0.0.1:2525"},
		Nodes:               0,
		Loops:               runtime.NumCPU(),
		SingleAccept:        true,
		ThreadpoolSize:      4,
		Hostname:            host,
		InactivityTimeout:   300 * time.Second,
		CommandTimeout:      60 * time.Second,
		DataMinRate:         1024,
		StressThreshold:     80,
		StressTimeout:       10 * time.Second,
		MaxMessageSize:      26214400,
		SpoolAfter:          65536,
		MaxBodyMemory:       64 << 20,
		SpoolDir:            "./var/spool/tmp",
		MaxRecipients:       100,
		MaxLineLength:       512,
		MaxDataLineLength:   1000,
		LongLines:           "reject",
		BareLineEndings:     "reject",
		MaxConnections:      10000,
		MaxConnectionsPerIP: 20,
		PerIPPrefixV4:       32,
		PerIPPrefixV6:       64,
		MaxErrors:           10,
		GracefulTimeout:     30 * time.Second,
		MaxPipelineBuffer:   16384,
		WorkQueueSize:       1024,
		SchedPolicy:         "shared",
		Backlog:             4096,
		TCPKeepalive:        120 * time.Second,
		RestartBackoffMax:   30 * time.Second,
		ProxyTimeout:        10 * time.Second,
	}
	if !reflect.DeepEqual(c.Main, want) {
		t.Errorf("Main =\n%+v\nwant\n%+v", c.Main, want)
	}
	if want := (Log{Level: "info", Format: "json"}); c.Log != want {
		t.Errorf("Log = %+v, want %+v", c.Log, want)
	}
	if len(c.Plugins) != 0 || len(c.HostList) != 0 {
		t.Errorf("Plugins = %q, HostList = %q; want both empty", c.Plugins, c.HostList)
	}
	if c.Embedded {
		t.Error("Embedded = true for a directory on disk")
	}
}

func TestLoadMakesDirAbsolute(t *testing.T) {
	dir := writeDir(t, map[string]string{"conf/smtp.ini": ""})
	t.Chdir(dir)
	c, err := Load("conf", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "conf"); c.Dir != want {
		t.Errorf("Dir = %q, want %q", c.Dir, want)
	}
}

func TestEachKeyParses(t *testing.T) {
	tests := []struct {
		ini   string
		check func(c *Config) any
		want  any
	}{
		{"listen = 0.0.0.0:25", func(c *Config) any { return c.Main.Listen }, []string{"0.0.0.0:25"}},
		{"listen = 127.0.0.1:25, [::1]:25 ,:2525", func(c *Config) any { return c.Main.Listen }, []string{"127.0.0.1:25", "[::1]:25", ":2525"}},
		{"listen = localhost:0", func(c *Config) any { return c.Main.Listen }, []string{"localhost:0"}},
		{"listen = [fe80::1%eth0]:65535", func(c *Config) any { return c.Main.Listen }, []string{"[fe80::1%eth0]:65535"}},
		{"nodes = 0", func(c *Config) any { return c.Main.Nodes }, 0},
		{"loops = 3", func(c *Config) any { return c.Main.Loops }, 3},
		{"loops = cpus", func(c *Config) any { return c.Main.Loops }, runtime.NumCPU()},
		{"loops = CPUS", func(c *Config) any { return c.Main.Loops }, runtime.NumCPU()},
		{"single_accept = false", func(c *Config) any { return c.Main.SingleAccept }, false},
		{"single_accept = no", func(c *Config) any { return c.Main.SingleAccept }, false},
		{"single_accept = Off", func(c *Config) any { return c.Main.SingleAccept }, false},
		{"single_accept = 0", func(c *Config) any { return c.Main.SingleAccept }, false},
		{"single_accept = yes", func(c *Config) any { return c.Main.SingleAccept }, true},
		{"threadpool_size = 1", func(c *Config) any { return c.Main.ThreadpoolSize }, 1},
		{"threadpool_size = 128", func(c *Config) any { return c.Main.ThreadpoolSize }, 128},
		{"me = mx1.example.com", func(c *Config) any { return c.Main.Hostname }, "mx1.example.com"},
		{"me = [192.0.2.1]", func(c *Config) any { return c.Main.Hostname }, "[192.0.2.1]"},
		{`me = "mx.example.com"`, func(c *Config) any { return c.Main.Hostname }, "mx.example.com"},
		{"inactivity_timeout = 60", func(c *Config) any { return c.Main.InactivityTimeout }, time.Minute},
		{"inactivity_timeout = 2m30s", func(c *Config) any { return c.Main.InactivityTimeout }, 150 * time.Second},
		{"max_message_size = 1000", func(c *Config) any { return c.Main.MaxMessageSize }, int64(1000)},
		{"max_message_size = 512k", func(c *Config) any { return c.Main.MaxMessageSize }, int64(512 << 10)},
		{"max_message_size = 10M", func(c *Config) any { return c.Main.MaxMessageSize }, int64(10 << 20)},
		{"max_message_size = 2g", func(c *Config) any { return c.Main.MaxMessageSize }, int64(2 << 30)},
		{"max_recipients = 1", func(c *Config) any { return c.Main.MaxRecipients }, 1},
		{"max_line_length = 512", func(c *Config) any { return c.Main.MaxLineLength }, 512},
		{"max_line_length = 65536", func(c *Config) any { return c.Main.MaxLineLength }, 65536},
		{"max_data_line_length = 0", func(c *Config) any { return c.Main.MaxDataLineLength }, 0},
		{"max_data_line_length = 1000", func(c *Config) any { return c.Main.MaxDataLineLength }, 1000},
		{"max_data_line_length = 100000", func(c *Config) any { return c.Main.MaxDataLineLength }, 100000},
		{"long_lines = keep", func(c *Config) any { return c.Main.LongLines }, "keep"},
		{"long_lines = REJECT", func(c *Config) any { return c.Main.LongLines }, "reject"},
		{"bare_line_endings = keep", func(c *Config) any { return c.Main.BareLineEndings }, "keep"},
		{"max_connections = 0", func(c *Config) any { return c.Main.MaxConnections }, 0},
		{"max_connections = 50000", func(c *Config) any { return c.Main.MaxConnections }, 50000},
		{"max_connections_per_ip = 20", func(c *Config) any { return c.Main.MaxConnectionsPerIP }, 20},
		{"max_errors = 1", func(c *Config) any { return c.Main.MaxErrors }, 1},
		{"graceful_timeout = 0", func(c *Config) any { return c.Main.GracefulTimeout }, time.Duration(0)},
		{"graceful_timeout = 1m", func(c *Config) any { return c.Main.GracefulTimeout }, time.Minute},
		{"max_pipeline_buffer = 4096", func(c *Config) any { return c.Main.MaxPipelineBuffer }, 4096},
		{"work_queue_size = 1", func(c *Config) any { return c.Main.WorkQueueSize }, 1},
		{"[log]\nlevel = debug", func(c *Config) any { return c.Log.Level }, "debug"},
		{"[log]\nlevel = WARN", func(c *Config) any { return c.Log.Level }, "warn"},
		{"[log]\nformat = console", func(c *Config) any { return c.Log.Format }, "console"},
		// Keys above any section header belong to [main], as in Haraka.
		{"max_errors = 3\n[log]\nlevel = error", func(c *Config) any { return c.Main.MaxErrors }, 3},
		// Comments: whole lines, and after a space inside a value.
		{"; note\n# note\n[main] ; the main section\nmax_errors = 4 ; four\n", func(c *Config) any { return c.Main.MaxErrors }, 4},
		{"[main]\r\nmax_errors = 5\r\n", func(c *Config) any { return c.Main.MaxErrors }, 5},
	}
	for _, tt := range tests {
		t.Run(tt.ini, func(t *testing.T) {
			c, err := loadSMTP(t, tt.ini)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.check(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestBadValueErrors(t *testing.T) {
	tests := []struct {
		ini  string
		want string
	}{
		{"listen =", `config: smtp.ini: [main] listen: "" is empty (give at least one host:port)`},
		{"listen = 1.2.3.4", `config: smtp.ini: [main] listen: "1.2.3.4" is not host:port (missing port in address)`},
		{"listen = ::1:25", `config: smtp.ini: [main] listen: "::1:25" is not host:port (too many colons in address)`},
		{"listen = 1.2.3.4:99999", `config: smtp.ini: [main] listen: "1.2.3.4:99999" has a port out of range 0..65535`},
		{"listen = 1.2.3.4:-1", `config: smtp.ini: [main] listen: "1.2.3.4:-1" has a port out of range 0..65535`},
		{"listen = 1.2.3.4:smtp", `config: smtp.ini: [main] listen: "1.2.3.4:smtp" has a port that is not a number`},
		{"listen = 1.2.3.4:25,,[::1]:25", `config: smtp.ini: [main] listen: "1.2.3.4:25,,[::1]:25" has an empty entry`},
		{"listen = [::g]:25", `config: smtp.ini: [main] listen: "[::g]:25" has a host that is neither an IP address nor a host name`},
		{"listen = :25, :25", `config: smtp.ini: [main] listen: ":25" is listed twice`},
		{"nodes = 2000", `config: smtp.ini: [main] nodes: "2000" is out of range 0..1024`},
		{"nodes = -1", `config: smtp.ini: [main] nodes: "-1" is out of range (minimum 0)`},
		{"nodes = two", `config: smtp.ini: [main] nodes: "two" is not a number`},
		{"loops = 0", `config: smtp.ini: [main] loops: "0" is out of range (minimum 1)`},
		{"loops = many", `config: smtp.ini: [main] loops: "many" is not a number`},
		{"single_accept = maybe", `config: smtp.ini: [main] single_accept: "maybe" is not a boolean (true or false)`},
		{"threadpool_size = 200", `config: smtp.ini: [main] threadpool_size: "200" is out of range 1..128`},
		{"threadpool_size = 0", `config: smtp.ini: [main] threadpool_size: "0" is out of range 1..128`},
		{"threadpool_size = 99999999999999999999", `config: smtp.ini: [main] threadpool_size: "99999999999999999999" is out of range`},
		{"me =", `config: smtp.ini: [main] me: "" is not a plausible host name`},
		{"me = mx example", `config: smtp.ini: [main] me: "mx example" is not a plausible host name`},
		{"me = mx..example", `config: smtp.ini: [main] me: "mx..example" is not a plausible host name`},
		{"me = mx\texample", `config: smtp.ini: [main] me: "mx\texample" is not a plausible host name`},
		{"inactivity_timeout = soon", `config: smtp.ini: [main] inactivity_timeout: "soon" is not a duration (like 30s, 5m, or 300 for seconds)`},
		{"inactivity_timeout = 0", `config: smtp.ini: [main] inactivity_timeout: "0" is out of range (minimum 1s)`},
		{"max_message_size = 10x", `config: smtp.ini: [main] max_message_size: "10x" is not a size (bytes, or a number with k, m or g)`},
		{"max_message_size = 0", `config: smtp.ini: [main] max_message_size: "0" is out of range (minimum 1)`},
		{"max_message_size = 99999999999g", `config: smtp.ini: [main] max_message_size: "99999999999g" is out of range`},
		{"max_recipients = ten", `config: smtp.ini: [main] max_recipients: "ten" is not a number`},
		{"max_recipients = 0", `config: smtp.ini: [main] max_recipients: "0" is out of range (minimum 1)`},
		{"max_line_length = 511", `config: smtp.ini: [main] max_line_length: "511" is out of range 512..65536`},
		{"max_line_length = 65537", `config: smtp.ini: [main] max_line_length: "65537" is out of range 512..65536`},
		{"max_data_line_length = 999", `config: smtp.ini: [main] max_data_line_length: "999" is out of range (0 for unlimited, or at least 1000)`},
		{"long_lines = drop", `config: smtp.ini: [main] long_lines: "drop" is not one of reject, keep`},
		{"bare_line_endings = fix", `config: smtp.ini: [main] bare_line_endings: "fix" is not one of reject, keep`},
		{"max_connections = -1", `config: smtp.ini: [main] max_connections: "-1" is out of range (minimum 0)`},
		{"max_connections_per_ip = lots", `config: smtp.ini: [main] max_connections_per_ip: "lots" is not a number`},
		{"max_errors = 0", `config: smtp.ini: [main] max_errors: "0" is out of range (minimum 1)`},
		{"graceful_timeout = -1s", `config: smtp.ini: [main] graceful_timeout: "-1s" is out of range (minimum 0s)`},
		{"max_pipeline_buffer = 4095", `config: smtp.ini: [main] max_pipeline_buffer: "4095" is out of range (minimum 4096)`},
		{"work_queue_size = 0", `config: smtp.ini: [main] work_queue_size: "0" is out of range (minimum 1)`},
		{"[log]\nlevel = verbose", `config: smtp.ini: [log] level: "verbose" is not one of trace, debug, info, warn, error`},
		{"[log]\nformat = xml", `config: smtp.ini: [log] format: "xml" is not one of json, console`},
		// The first bad value in key order wins over an unknown key.
		{"bogus = 1\nmax_errors = 0\nmax_recipients = x", `config: smtp.ini: [main] max_recipients: "x" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.ini, func(t *testing.T) {
			_, err := loadSMTP(t, tt.ini)
			if err == nil {
				t.Fatalf("no error, want %s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestStructureErrors(t *testing.T) {
	tests := []struct {
		ini  string
		want string
	}{
		{"max_recipient = 10", `config: smtp.ini: [main] unknown key "max_recipient"`},
		{"[main]\nListen = :25", `config: smtp.ini: [main] unknown key "Listen"`},
		{"[log]\nlevel = info\nfile = /var/log/x", `config: smtp.ini: [log] unknown key "file"`},
		{"[mian]\nlisten = :25", `config: smtp.ini: unknown section [mian]`},
		{"[tls]", `config: smtp.ini: unknown section [tls]`},
		{"listen = :25\nlisten = :26", `config: smtp.ini: [main] duplicate key "listen"`},
		{"listen = :25\n[main]\nlisten = :25", `config: smtp.ini: [main] duplicate key "listen"`},
		{"[log]\nlevel = info\n[log]\nlevel = info", `config: smtp.ini: [log] duplicate key "level"`},
		{"listen", `config: smtp.ini: line "listen" is not key = value`},
		{"listen: :25", `config: smtp.ini: line "listen: :25" is not key = value`},
		{"= 25", `config: smtp.ini: line "= 25" has no key name`},
		{"[main\nlisten = :25", `config: smtp.ini: unclosed section: [main`},
	}
	for _, tt := range tests {
		t.Run(tt.ini, func(t *testing.T) {
			_, err := loadSMTP(t, tt.ini)
			if err == nil {
				t.Fatalf("no error, want %s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestThreadpoolEnv(t *testing.T) {
	dir := writeDir(t, map[string]string{"smtp.ini": "threadpool_size = 8"})
	tests := []struct {
		env     map[string]string
		want    int
		wantErr string
	}{
		{nil, 8, ""},
		{map[string]string{"UV_THREADPOOL_SIZE": "16"}, 16, ""},
		{map[string]string{"UV_THREADPOOL_SIZE": "128"}, 128, ""},
		{map[string]string{"UV_THREADPOOL_SIZE": ""}, 8, ""},
		{map[string]string{"UV_THREADPOOL_SIZE": "abc"}, 0, `config: UV_THREADPOOL_SIZE: "abc" is not a number`},
		{map[string]string{"UV_THREADPOOL_SIZE": "0"}, 0, `config: UV_THREADPOOL_SIZE: "0" is out of range 1..128`},
		{map[string]string{"UV_THREADPOOL_SIZE": "200"}, 0, `config: UV_THREADPOOL_SIZE: "200" is out of range 1..128`},
		{map[string]string{"UV_THREADPOOL_SIZE": " 8"}, 0, `config: UV_THREADPOOL_SIZE: " 8" is not a number`},
	}
	for _, tt := range tests {
		c, err := Load(dir, envMap(tt.env))
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("env %q: error %v, want %s", tt.env, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("env %q: %v", tt.env, err)
			continue
		}
		if c.Main.ThreadpoolSize != tt.want {
			t.Errorf("env %q: ThreadpoolSize = %d, want %d", tt.env, c.Main.ThreadpoolSize, tt.want)
		}
	}
}

func TestThreadpoolEnvStillValidatesFile(t *testing.T) {
	dir := writeDir(t, map[string]string{"smtp.ini": "threadpool_size = 500"})
	_, err := Load(dir, envMap(map[string]string{"UV_THREADPOOL_SIZE": "8"}))
	want := `config: smtp.ini: [main] threadpool_size: "500" is out of range 1..128`
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
}

func TestMeDefaultsToHostName(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		want    string
		wantErr string
	}{
		{"mx.example.net", nil, "mx.example.net", ""},
		{"", errors.New("uname failed"), "", "config: smtp.ini: [main] me: not set, and the host name is unknown: uname failed"},
		{"my host", nil, "", `config: smtp.ini: [main] me: not set, and the host name "my host" is not a plausible host name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := hostname
			hostname = func() (string, error) { return tt.name, tt.err }
			t.Cleanup(func() { hostname = old })
			c, err := Load(t.TempDir(), nil)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Main.Hostname != tt.want {
				t.Errorf("Me = %q, want %q", c.Main.Hostname, tt.want)
			}
			// A me set in smtp.ini never consults the host name.
			dir := writeDir(t, map[string]string{"smtp.ini": "me = mx.example.org"})
			if c, err := Load(dir, nil); err != nil || c.Main.Hostname != "mx.example.org" {
				t.Errorf("with me set: %v, %v", c, err)
			}
		})
	}
}

func TestPath(t *testing.T) {
	dir := t.TempDir()
	c, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Path("var/spool"), filepath.Join(dir, "var", "spool"); got != want {
		t.Errorf("Path(relative) = %q, want %q", got, want)
	}
	if got, want := c.Path("./x/../y"), filepath.Join(dir, "y"); got != want {
		t.Errorf("Path(./x/../y) = %q, want %q", got, want)
	}
	if got := c.Path("/var/spool/loopmx"); got != "/var/spool/loopmx" {
		t.Errorf("Path(absolute) = %q", got)
	}
}

func TestPluginsFile(t *testing.T) {
	tests := []struct {
		content string
		want    []string
		wantErr string
	}{
		{"", nil, ""},
		{"# only comments\n\n   \n", nil, ""},
		{
			"# inbound\nrcpt_to.in_host_list\n\n  queue/maildir  # stores mail\r\n",
			[]string{"rcpt_to.in_host_list", "queue/maildir"}, "",
		},
		{"queue/maildir\n# again:\nqueue/maildir\n", nil, `config: plugins:3: duplicate plugin "queue/maildir"`},
		{"toobusy\nqueue/maildir extra\n", nil, `config: plugins:2: "queue/maildir extra" is not a valid plugin name`},
		{"queue/../maildir\n", nil, `config: plugins:1: "queue/../maildir" is not a valid plugin name`},
		{"queue/\n", nil, `config: plugins:1: "queue/" is not a valid plugin name`},
	}
	for _, tt := range tests {
		t.Run(tt.content, func(t *testing.T) {
			c, err := Load(writeDir(t, map[string]string{"plugins": tt.content}), nil)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Plugins, tt.want) {
				t.Errorf("Plugins = %q, want %q", c.Plugins, tt.want)
			}
		})
	}
}

func TestHostList(t *testing.T) {
	c, err := Load(writeDir(t, map[string]string{
		"host_list": "# ours\nExample.COM\n  mail.example.org \n\n#example.net\nexample.net # second\n",
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.com", "mail.example.org", "example.net"}
	if !reflect.DeepEqual(c.HostList, want) {
		t.Errorf("HostList = %q, want %q", c.HostList, want)
	}
}

func TestList(t *testing.T) {
	c, err := Load(writeDir(t, map[string]string{
		"lists/allow": "a\n# b\nc#d\n",
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.List("lists/allow")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "c#d"}; !reflect.DeepEqual(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	if got, err := c.List(c.Path("lists/allow")); err != nil || len(got) != 2 {
		t.Errorf("List(absolute) = %q, %v", got, err)
	}
	if got, err := c.List("missing"); got != nil || err != nil {
		t.Errorf("List(missing) = %q, %v; want nil, nil", got, err)
	}
}

func TestMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")
	_, err := Load(dir, nil)
	want := "config: stat " + dir + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not wrap fs.ErrNotExist", err)
	}

	file := filepath.Join(writeDir(t, map[string]string{"smtp.ini": ""}), "smtp.ini")
	_, err = Load(file, nil)
	if want := "config: " + file + " is not a directory"; err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}

	if _, err := Load("", nil); err == nil {
		t.Error("Load(\"\") succeeded")
	}
}

// TestUnreadableFiles provokes read errors with a directory where a file
// should be, which fails even for root (chmod 000 does not).
func TestUnreadableFiles(t *testing.T) {
	for _, name := range []string{"smtp.ini", "plugins", "host_list"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := Load(dir, nil)
			want := "config: " + name + ": read " + filepath.Join(dir, name) + ": is a directory"
			if err == nil || err.Error() != want {
				t.Errorf("error %v, want %s", err, want)
			}
		})
	}

	t.Run("maildir.ini", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "maildir.ini"), 0o755); err != nil {
			t.Fatal(err)
		}
		c, err := Load(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Plugin("queue/maildir")
		want := "config: maildir.ini: read " + filepath.Join(dir, "maildir.ini") + ": is a directory"
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %s", err, want)
		}
		if _, err := c.List("maildir.ini"); err == nil {
			t.Error("List of a directory succeeded")
		}
	})

	t.Run("permission", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files whatever their mode")
		}
		dir := writeDir(t, map[string]string{"smtp.ini": ""})
		p := filepath.Join(dir, "smtp.ini")
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		_, err := Load(dir, nil)
		want := "config: smtp.ini: open " + p + ": permission denied"
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %s", err, want)
		}
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("error %v does not wrap fs.ErrPermission", err)
		}
	})
}

func TestDefault(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Default(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Embedded || c.Dir != wd {
		t.Errorf("Embedded = %v, Dir = %q; want true, %q", c.Embedded, c.Dir, wd)
	}
	if want := []string{"127.0.0.1:2525"}; !reflect.DeepEqual(c.Main.Listen, want) {
		t.Errorf("Listen = %q, want %q", c.Main.Listen, want)
	}
	if want := []string{"rcpt_to.in_host_list", "queue/maildir"}; !reflect.DeepEqual(c.Plugins, want) {
		t.Errorf("Plugins = %q, want %q", c.Plugins, want)
	}
	if want := []string{"localhost", "example.com"}; !reflect.DeepEqual(c.HostList, want) {
		t.Errorf("HostList = %q, want %q", c.HostList, want)
	}
	host, _ := os.Hostname()
	if c.Main.Hostname != host {
		t.Errorf("Me = %q, want the host name %q", c.Main.Hostname, host)
	}

	p, err := c.Plugin("queue/maildir")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Path("", "path", ""), filepath.Join(wd, "var", "spool"); got != want {
		t.Errorf("maildir path = %q, want %q", got, want)
	}
	if err := p.Check(); err != nil {
		t.Error(err)
	}
	if got, err := c.List("host_list"); err != nil || len(got) != 2 {
		t.Errorf("List(host_list) = %q, %v", got, err)
	}

	// The environment applies to the built-in config too.
	c, err = Default(envMap(map[string]string{"UV_THREADPOOL_SIZE": "9"}))
	if err != nil || c.Main.ThreadpoolSize != 9 {
		t.Errorf("Default with UV_THREADPOOL_SIZE=9: %v, %v", c, err)
	}
}

// TestContribExample loads the commented example directory shipped for
// operators, so that it never drifts from what the parser accepts, and
// holds it to what its first lines say: every key is set, to its default.
func TestContribExample(t *testing.T) {
	c, err := Load("../contrib/config", nil)
	if err != nil {
		t.Fatal(err)
	}
	defaults, err := Load(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range mainSettings {
		// me is left commented out: its default is the machine's name.
		if s.key != "me" && !c.setIn[slot("", s.key)] {
			t.Errorf("contrib smtp.ini does not set [main] %s", s.key)
		}
		if got, want := s.show(c), s.show(defaults); got != want {
			t.Errorf("contrib smtp.ini sets [main] %s = %s, not its default %s", s.key, got, want)
		}
	}
	for _, s := range logSettings {
		if !c.setIn[slot("log", s.key)] {
			t.Errorf("contrib smtp.ini does not set [log] %s", s.key)
		}
		if got, want := s.show(c), s.show(defaults); got != want {
			t.Errorf("contrib smtp.ini sets [log] %s = %s, not its default %s", s.key, got, want)
		}
	}
	p, err := c.Plugin("queue/maildir")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Path("", "path", ""); got != "/var/spool/loopmx" {
		t.Errorf("maildir path = %q", got)
	}
	if err := p.Check(); err != nil {
		t.Error(err)
	}
}

func TestSummary(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"smtp.ini":  "listen = :25, [::]:25\nmax_connections = 0\n[log]\nformat = console\n",
		"plugins":   "toobusy\nqueue/maildir\n",
		"host_list": "example.com\n",
	})
	c, err := Load(dir, envMap(map[string]string{"UV_THREADPOOL_SIZE": "12"}))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Summary()
	for _, want := range []string{
		dir,
		"listen                 = :25, [::]:25\n",
		"max_connections        = 0  ; unlimited\n",
		"threadpool_size        = 12  ; from UV_THREADPOOL_SIZE\n",
		"max_message_size       = 25m  ; default, 26214400 bytes\n",
		"format                 = console\n",
		"level                  = info  ; default\n",
		"toobusy\nqueue/maildir\n",
		"example.com\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("Summary lacks %q:\n%s", want, s)
		}
	}
	for _, set := range [][]setting{mainSettings, logSettings} {
		for _, st := range set {
			if !strings.Contains(s, "\n"+st.key+" ") {
				t.Errorf("Summary lacks key %s:\n%s", st.key, s)
			}
		}
	}
	if len(mainSettings) != reflect.TypeFor[Main]().NumField() {
		t.Errorf("%d [main] settings for %d Main fields", len(mainSettings), reflect.TypeFor[Main]().NumField())
	}
}

// TestSummaryReadsBack checks that the [main] and [log] part of Summary is
// itself a valid smtp.ini that loads to the same settings.
func TestSummaryReadsBack(t *testing.T) {
	c, err := loadSMTP(t, "listen = :25, [::1]:2525\nloops = 3\nmax_message_size = 1000\ninactivity_timeout = 1500ms\nme = mx.example.com")
	if err != nil {
		t.Fatal(err)
	}
	s := c.Summary()
	ini, _, _ := strings.Cut(s, "\n# plugins")
	again, err := loadSMTP(t, ini)
	if err != nil {
		t.Fatalf("%v\n%s", err, ini)
	}
	if !reflect.DeepEqual(again.Main, c.Main) || again.Log != c.Log {
		t.Errorf("read back\n%+v\nwant\n%+v", again.Main, c.Main)
	}
}

// TestHasPluginsFile: a directory without a plugins file says so (the
// server refuses it); an empty file and the built-in default have one.
func TestHasPluginsFile(t *testing.T) {
	for _, tc := range []struct {
		files map[string]string
		want  bool
	}{
		{map[string]string{"smtp.ini": "me = mx.example\n"}, false},
		{map[string]string{"smtp.ini": "me = mx.example\n", "plugins": "# none yet\n"}, true},
	} {
		c, err := Load(writeDir(t, tc.files), nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.HasPluginsFile() != tc.want {
			t.Errorf("files %v: HasPluginsFile() = %v, want %v", tc.files, c.HasPluginsFile(), tc.want)
		}
	}
	t.Chdir(t.TempDir())
	c, err := Default(nil)
	if err != nil {
		t.Skipf("the built-in config does not load on this host: %v", err)
	}
	if !c.HasPluginsFile() {
		t.Error("the built-in default has no plugins file")
	}
}

// TestRunAs: the account whose permissions count is `user` with workers
// (nodes >= 1), the process's own otherwise; `group` replaces the groups;
// an unknown user or group is an error naming smtp.ini and the key.
func TestRunAs(t *testing.T) {
	self, err := loadSMTP(t, "me = mx.example\nuser = nobody\n")
	if err != nil {
		t.Fatal(err)
	}
	a, err := self.RunAs()
	if err != nil || a.UID != os.Geteuid() || a.GID != os.Getegid() || len(a.Groups) == 0 || a.Groups[0] != os.Getegid() {
		t.Errorf("nodes = 0: RunAs() = %+v, %v; want this process (uid %d)", a, err, os.Geteuid())
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skipf("no user nobody here: %v", err)
	}
	workers, err := loadSMTP(t, "me = mx.example\nnodes = 2\nuser = nobody\n")
	if err != nil {
		t.Fatal(err)
	}
	a, err = workers.RunAs()
	if err != nil || a.Name != "nobody" || a.String() != "nobody (uid "+strconv.Itoa(a.UID)+")" {
		t.Errorf("nodes = 2, user = nobody: RunAs() = %+v, %v", a, err)
	}
	grouped, err := loadSMTP(t, "me = mx.example\nnodes = 2\nuser = nobody\ngroup = 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if a, err := grouped.RunAs(); err != nil || a.GID != 0 || !reflect.DeepEqual(a.Groups, []int{0}) {
		t.Errorf("group = 0: RunAs() = %+v, %v; want gid 0 and groups [0]", a, err)
	}
	for _, tc := range []struct{ ini, want string }{
		{"user = no-such-user-here\n", `config: smtp.ini: [main] user: "no-such-user-here"`},
		{"user = nobody\ngroup = no-such-group-here\n", `config: smtp.ini: [main] group: "no-such-group-here"`},
	} {
		c, err := loadSMTP(t, "me = mx.example\nnodes = 1\n"+tc.ini)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.RunAs(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: RunAs() error %v, want one starting %s", tc.ini, err, tc.want)
		}
	}
}

// TestDefaultsParse checks that each declared default passes the checks
// of its key and that Summary shows it in a form that reads back the same.
func TestDefaultsParse(t *testing.T) {
	for _, set := range [][]setting{mainSettings, logSettings} {
		for _, s := range set {
			if s.def == "" {
				continue
			}
			var c Config
			if err := s.parse(&c, s.def); err != nil {
				t.Errorf("%s: default %q: %v", s.key, s.def, err)
				continue
			}
			var again Config
			if err := s.parse(&again, s.show(&c)); err != nil || s.show(&again) != s.show(&c) {
				t.Errorf("%s: default %q shows as %q, which reads back as %q (%v)", s.key, s.def, s.show(&c), s.show(&again), err)
			}
		}
	}
}

// TestDocsListEveryKey checks that docs/config.md has a line for every key
// of smtp.ini, whose default column shows the declared default.
func TestDocsListEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // key -> its default cell
	for line := range strings.SplitSeq(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.TrimSpace(cells[2])
	}
	for _, set := range [][]setting{mainSettings, logSettings} {
		for _, s := range set {
			cell, ok := rows[s.key]
			switch {
			case !ok:
				t.Errorf("docs/config.md has no line for %s", s.key)
			case s.def == "" && s.key == "me":
				if cell != "the machine's host name" {
					t.Errorf("docs/config.md: %s defaults to %q, want the machine's host name", s.key, cell)
				}
			case s.def == "":
				if cell != "(empty)" {
					t.Errorf("docs/config.md: %s defaults to %q, want (empty)", s.key, cell)
				}
			case !strings.HasPrefix(cell, "`"+s.def+"`"):
				t.Errorf("docs/config.md: %s defaults to %q, want `%s`", s.key, cell, s.def)
			}
		}
	}
}
