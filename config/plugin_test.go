package config

import (
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// pluginConfig loads a config directory holding only <file> with content
// and opens it for the plugin called name.
func pluginConfig(t *testing.T, name, file, content string) (*Config, *PluginConfig) {
	t.Helper()
	c, err := Load(writeDir(t, map[string]string{file: content}), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Plugin(name)
	if err != nil {
		t.Fatal(err)
	}
	return c, p
}

func TestPluginFileName(t *testing.T) {
	for name, file := range map[string]string{
		"queue/maildir":        "maildir.ini",
		"rcpt_to.in_host_list": "rcpt_to.in_host_list.ini",
		"toobusy":              "toobusy.ini",
	} {
		_, p := pluginConfig(t, name, file, "k = v")
		if p.File() != file {
			t.Errorf("Plugin(%q).File() = %q, want %q", name, p.File(), file)
		}
		if got := p.String("", "k", ""); got != "v" {
			t.Errorf("Plugin(%q) k = %q, want v", name, got)
		}
	}
}

func TestPluginMissingFile(t *testing.T) {
	c, err := Load(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Plugin("queue/maildir")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Int("", "n", 7); got != 7 {
		t.Errorf("Int on a missing file = %d, want the default 7", got)
	}
	if len(p.Sections()) != 0 || len(p.Keys("")) != 0 {
		t.Errorf("Sections = %q, Keys = %q; want none", p.Sections(), p.Keys(""))
	}
	if err := p.Check(); err != nil {
		t.Error(err)
	}
}

func TestPluginBadName(t *testing.T) {
	c, err := Load(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "../smtp", "queue/", "a b"} {
		if _, err := c.Plugin(name); err == nil {
			t.Errorf("Plugin(%q) succeeded", name)
		}
	}
}

func TestPluginGetters(t *testing.T) {
	const content = `
; top-level keys and [main] are one section
str = hello world
quoted = "  padded  "
empty =
n = -42
big = 3g
small = 512
on = yes
off = Off
mode = Connect
wait = 1m30s
secs = 45
rel = ./var/spool
abs = /srv/mail
list = a, b ,,c

[main]
more = 1

[redis]
host = 127.0.0.1
port = 6379
`
	c, p := pluginConfig(t, "test", "test.ini", content)

	checks := []struct {
		name string
		got  any
		want any
	}{
		{"String", p.String("", "str", "x"), "hello world"},
		{"String quoted", p.String("", "quoted", "x"), "  padded  "},
		{"String empty", p.String("", "empty", "x"), ""},
		{"String missing", p.String("", "nope", "x"), "x"},
		{"String main", p.String("main", "str", "x"), "hello world"},
		{"Int", p.Int("", "n", 0), -42},
		{"Int from [main]", p.Int("", "more", 0), 1},
		{"Int missing", p.Int("", "nope", 5), 5},
		{"Int64 suffix", p.Int64("", "big", 0), int64(3 << 30)},
		{"Int64 plain", p.Int64("main", "small", 0), int64(512)},
		{"Int64 missing", p.Int64("", "nope", 9), int64(9)},
		{"Bool yes", p.Bool("", "on", false), true},
		{"Bool Off", p.Bool("", "off", true), false},
		{"Bool missing", p.Bool("", "nope", true), true},
		{"Choice", p.Choice("", "mode", "rcpt", "connect", "rcpt"), "connect"},
		{"Choice missing", p.Choice("", "nope", "rcpt", "connect", "rcpt"), "rcpt"},
		{"Duration", p.Duration("", "wait", 0), 90 * time.Second},
		{"Duration seconds", p.Duration("", "secs", 0), 45 * time.Second},
		{"Duration missing", p.Duration("", "nope", time.Hour), time.Hour},
		{"Path relative", p.Path("", "rel", ""), filepath.Join(c.Dir, "var", "spool")},
		{"Path absolute", p.Path("", "abs", ""), "/srv/mail"},
		{"Path default", p.Path("", "nope", "queue"), filepath.Join(c.Dir, "queue")},
		{"Path empty default", p.Path("", "nope", ""), ""},
		{"Strings", p.Strings("", "list", nil), []string{"a", "b", "c"}},
		{"Strings empty", p.Strings("", "empty", []string{"d"}), []string{}},
		{"Strings missing", p.Strings("", "nope", []string{"d"}), []string{"d"}},
		{"String in section", p.String("redis", "host", ""), "127.0.0.1"},
		{"Int in section", p.Int("redis", "port", 0), 6379},
		{"Sections", p.Sections(), []string{"", "redis"}},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
	if err := p.Check(); err != nil {
		t.Errorf("Check after reading every key: %v", err)
	}
}

func TestPluginKeys(t *testing.T) {
	_, p := pluginConfig(t, "aliases", "aliases.ini", "[map]\npostmaster = root\nabuse = root\n")
	if got, want := p.Keys("map"), []string{"postmaster", "abuse"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Keys = %q, want %q", got, want)
	}
	if err := p.Check(); err != nil {
		t.Errorf("Check after Keys: %v", err)
	}
}

func TestPluginCheck(t *testing.T) {
	tests := []struct {
		name    string
		content string
		read    func(p *PluginConfig)
		want    string
	}{
		{
			"unknown key", "path = /x\npth = /y\n",
			func(p *PluginConfig) { p.Path("", "path", "") },
			`config: maildir.ini: [main] unknown key "pth"`,
		},
		{
			"unknown key in section", "[redis]\nhost = h\nprot = 1\n",
			func(p *PluginConfig) { p.String("redis", "host", ""); p.Int("redis", "port", 0) },
			`config: maildir.ini: [redis] unknown key "prot"`,
		},
		{
			"unknown section", "path = /x\n[extra]\nk = v\n",
			func(p *PluginConfig) { p.Path("", "path", "") },
			`config: maildir.ini: unknown section [extra]`,
		},
		{
			"bad int", "n = ten\n",
			func(p *PluginConfig) { p.Int("", "n", 1) },
			`config: maildir.ini: [main] n: "ten" is not a number`,
		},
		{
			"bad int64", "size = 5q\n",
			func(p *PluginConfig) { p.Int64("", "size", 1) },
			`config: maildir.ini: [main] size: "5q" is not a size (bytes, or a number with k, m or g)`,
		},
		{
			"bad bool", "[s]\nfsync = sometimes\n",
			func(p *PluginConfig) { p.Bool("s", "fsync", true) },
			`config: maildir.ini: [s] fsync: "sometimes" is not a boolean (true or false)`,
		},
		{
			"bad duration", "wait = 5 minutes\n",
			func(p *PluginConfig) { p.Duration("", "wait", 0) },
			`config: maildir.ini: [main] wait: "5 minutes" is not a duration (like 30s, 5m, or 300 for seconds)`,
		},
		{
			"empty path", "path =\n",
			func(p *PluginConfig) { p.Path("main", "path", "x") },
			`config: maildir.ini: [main] path: "" is not a path`,
		},
		{
			"first bad value wins over unknown key", "typo = 1\na = x\nb = y\n",
			func(p *PluginConfig) { p.Int("", "a", 0); p.Int("", "b", 0) },
			`config: maildir.ini: [main] a: "x" is not a number`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, p := pluginConfig(t, "queue/maildir", "maildir.ini", tt.content)
			tt.read(p)
			err := p.Check()
			if err == nil || err.Error() != tt.want {
				t.Errorf("Check() = %v, want %s", err, tt.want)
			}
		})
	}
}

func TestPluginBadValueReturnsDefault(t *testing.T) {
	_, p := pluginConfig(t, "x", "x.ini", "n = x\nb = x\nd = x\ns = x\n")
	if p.Int("", "n", 3) != 3 || p.Bool("", "b", true) != true ||
		p.Duration("", "d", time.Second) != time.Second || p.Int64("", "s", 4) != 4 {
		t.Error("a getter did not return its default for a bad value")
	}
}

func TestPluginChoiceError(t *testing.T) {
	_, p := pluginConfig(t, "x", "x.ini", "reject = later\n")
	if got := p.Choice("", "reject", "rcpt", "connect", "rcpt"); got != "rcpt" {
		t.Errorf("a bad choice gave %q, want the default", got)
	}
	want := `config: x.ini: [main] reject: "later" is not one of connect, rcpt`
	if err := p.Check(); err == nil || err.Error() != want {
		t.Errorf("Check: %v, want %s", err, want)
	}
}

func TestPluginSyntaxErrors(t *testing.T) {
	tests := []struct {
		content string
		want    string
	}{
		{"path /x\n", `config: maildir.ini: line "path /x" is not key = value`},
		{"path = /x\npath = /y\n", `config: maildir.ini: [main] duplicate key "path"`},
		{"path = /x\n[main]\npath = /y\n", `config: maildir.ini: [main] duplicate key "path"`},
	}
	for _, tt := range tests {
		c, err := Load(writeDir(t, map[string]string{"maildir.ini": tt.content}), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Plugin("queue/maildir")
		if err == nil || err.Error() != tt.want {
			t.Errorf("%q: error %v, want %s", tt.content, err, tt.want)
		}
	}
}
