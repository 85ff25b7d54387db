package config

import (
	"strings"
	"testing"
	"testing/fstest"
)

// FuzzLoad feeds arbitrary smtp.ini, plugins and host_list files to the
// loader. It must never panic, and every error must be one line that
// starts with "config: ".
func FuzzLoad(f *testing.F) {
	f.Add("listen = 127.0.0.1:25\n[log]\nlevel = info\n", "queue/maildir\n", "example.com\n")
	f.Add("[main]\nmax_message_size = 10m\nloops = cpus\n", "# c\na\na\n", "")
	f.Add("me = \"x y\"\nkey\n", "a b\n", "#\n")
	f.Add("[\n= 1\n\"\"\"a", "", "")
	f.Add("listen = [::1]:25, :0\ninactivity_timeout = 1h\n", "x/", "A\r\nB")
	f.Fuzz(func(t *testing.T, smtp, plugins, hosts string) {
		c := &Config{Dir: "/nonexistent", fsys: fstest.MapFS{
			"smtp.ini":  {Data: []byte(smtp)},
			"plugins":   {Data: []byte(plugins)},
			"host_list": {Data: []byte(hosts)},
		}}
		err := c.load(nil)
		if err == nil {
			if c.Summary() == "" {
				t.Error("empty Summary")
			}
			return
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "config: ") || strings.ContainsAny(msg, "\r\n") {
			t.Errorf("error is not one config: line: %q", msg)
		}
	})
}
