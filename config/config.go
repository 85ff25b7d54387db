// Package config reads a loopmx configuration directory, laid out the way
// Haraka lays out its own so that operators feel at home:
//
//	smtp.ini     [main] and [log]: listeners, processes, limits, logging
//	plugins      plugin names, one a line, in the order their hooks run
//	<name>.ini   one plugin's settings, named after the last element of
//	             the plugin's name (queue/maildir reads maildir.ini)
//	host_list    the domains this MX accepts mail for
//
// Everything is validated when the directory is loaded. Every error is one
// line that starts with "config: " and names the file, the section, the
// key and the offending value, so that a bad start says exactly what to
// fix. A copy of a small working directory is built in (see Default).
package config

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// defaultDir is the built-in configuration directory that Default loads.
//
//go:embed default
var defaultDir embed.FS

// Config is a loaded, validated config directory.
type Config struct {
	// Dir is the absolute config directory, against which relative paths
	// are resolved. For the built-in default it is the working directory.
	Dir string
	// Embedded is true when the config is the built-in default.
	Embedded bool
	Main     Main
	Log      Log
	// Plugins holds the names in the plugins file, in order.
	Plugins []string
	// HostList holds the domains in host_list, trimmed and lower-cased.
	HostList []string

	fsys              fs.FS           // the built-in files; nil when reading Dir on disk
	pluginsFile       bool            // the plugins file exists
	setIn             map[string]bool // slot(section, key) of each smtp.ini key the file sets
	loopsPerCPU       bool            // loops is "cpus" (or left at that default)
	pluginLines       []int           // line of each entry of Plugins
	threadpoolFromEnv bool            // UV_THREADPOOL_SIZE overrode threadpool_size
}

// Load reads and validates the config directory dir, which is made
// absolute first. env looks up environment variables: pass os.LookupEnv,
// or nil for none. A missing directory is an error; a missing smtp.ini,
// plugins or host_list is not (defaults, no plugins, no domains), but a
// server refuses a directory without a plugins file (see HasPluginsFile).
func Load(dir string, env func(string) (string, bool)) (*Config, error) {
	if dir == "" {
		return nil, errors.New("config: no config directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("config: %s is not a directory", abs)
	}
	c := &Config{Dir: abs}
	if err := c.load(env); err != nil {
		return nil, err
	}
	return c, nil
}

// Default loads the built-in default directory (config/default in the
// source tree). Its Dir is the working directory, so relative paths in
// it, such as the maildir's ./var/spool, resolve against the directory
// the server was started in.
func Default(env func(string) (string, bool)) (*Config, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	sub, err := fs.Sub(defaultDir, "default")
	if err != nil {
		return nil, fmt.Errorf("config: built-in default: %w", err)
	}
	c := &Config{Dir: wd, Embedded: true, fsys: sub}
	if err := c.load(env); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) load(env func(string) (string, bool)) error {
	if env == nil {
		env = noEnv
	}
	smtp, err := c.readINI("smtp.ini")
	if err != nil {
		return err
	}
	if err := c.applySMTP(smtp, env); err != nil {
		return err
	}
	if c.Plugins, err = c.readPlugins(); err != nil {
		return err
	}
	hosts, err := c.List("host_list")
	if err != nil {
		return err
	}
	for i, h := range hosts {
		hosts[i] = strings.ToLower(h)
	}
	c.HostList = hosts
	return nil
}

// Path resolves p against c.Dir unless it is absolute.
func (c *Config) Path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// List reads a flat list file from the config directory: one item a line,
// trimmed, with blank lines and '#' comments skipped (a '#' starts a
// comment at the start of a line or after a space or tab). A missing file
// gives nil and no error. For the built-in default, a relative name is
// read from the built-in files; an absolute name is always read from disk.
func (c *Config) List(name string) ([]string, error) {
	lines, err := c.ListItems(name)
	var items []string
	for _, l := range lines {
		items = append(items, l.Text)
	}
	return items, err
}

// ListItems is List with the line each item is on, for plugins that name
// a bad entry by file and line.
func (c *Config) ListItems(name string) ([]ListItem, error) {
	data, err := c.readFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	return listLines(data), nil
}

// Plugin opens the settings of the plugin called name: the file named
// after the last element of name plus ".ini" (queue/maildir reads
// maildir.ini). A missing file gives an empty PluginConfig, on which
// every getter returns its default.
func (c *Config) Plugin(name string) (*PluginConfig, error) {
	if !validPluginName(name) {
		return nil, fmt.Errorf("config: %q is not a valid plugin name", name)
	}
	f, err := c.readINI(path.Base(name) + ".ini")
	if err != nil {
		return nil, err
	}
	p := &PluginConfig{f: f, dir: c.Dir}
	// Every plugin has "timeout": how long the chain waits for one of its
	// blocking hooks (see plugins.Chain). Reading it here marks it known.
	p.timeout = p.Duration("", "timeout", DefaultPluginTimeout)
	if p.timeout <= 0 {
		p.f.fail("", "timeout", fmt.Errorf("%q must be more than 0", p.String("", "timeout", "")))
	}
	// timeout is the first key read from a fresh file, so any error
	// recorded now is about it.
	p.timeoutErr = p.f.err
	return p, nil
}

// DefaultPluginTimeout bounds a blocking hook when <name>.ini sets no
// "timeout".
const DefaultPluginTimeout = 30 * time.Second

// readFile reads name from the built-in files or from disk.
func (c *Config) readFile(name string) ([]byte, error) {
	if c.fsys != nil && !filepath.IsAbs(name) {
		return fs.ReadFile(c.fsys, path.Clean(filepath.ToSlash(name)))
	}
	return os.ReadFile(c.Path(name))
}

// readINI reads and parses the ini file name; a missing file is empty.
func (c *Config) readINI(name string) (*iniFile, error) {
	data, err := c.readFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return newINI(name), nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	return parseINI(name, data)
}

// readPlugins reads the plugins file. A name may appear once only: the
// chain runs each plugin at one place in the order.
func (c *Config) readPlugins() ([]string, error) {
	const name = "plugins"
	data, err := c.readFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	c.pluginsFile = true
	var plugins []string
	seen := make(map[string]bool)
	for _, l := range listLines(data) {
		if !validPluginName(l.Text) {
			return nil, fmt.Errorf("config: %s:%d: %q is not a valid plugin name", name, l.Line, l.Text)
		}
		if seen[l.Text] {
			return nil, fmt.Errorf("config: %s:%d: duplicate plugin %q", name, l.Line, l.Text)
		}
		seen[l.Text] = true
		plugins = append(plugins, l.Text)
		c.pluginLines = append(c.pluginLines, l.Line)
	}
	return plugins, nil
}

// HasPluginsFile reports whether the directory has a plugins file (the
// built-in default has one). Without it Plugins is empty, which a server
// must not take for a working chain.
func (c *Config) HasPluginsFile() bool { return c.pluginsFile }

// PluginLine returns the line of the plugins file that names Plugins[i]
// (0 when unknown), for error messages.
func (c *Config) PluginLine(i int) int {
	if i < 0 || i >= len(c.pluginLines) {
		return 0
	}
	return c.pluginLines[i]
}

// ListItem is one item of a flat list file and its 1-based line number.
type ListItem struct {
	Line int
	Text string
}

// listLines splits a flat list file into its items.
func listLines(data []byte) []ListItem {
	var out []ListItem
	for i, line := range strings.Split(string(data), "\n") {
		if j := commentStart(line); j >= 0 {
			line = line[:j]
		}
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, ListItem{Line: i + 1, Text: line})
		}
	}
	return out
}

// commentStart returns the index of the '#' that starts a comment in line,
// or -1: a '#' at the start or after a space or tab.
func commentStart(line string) int {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return i
		}
	}
	return -1
}

// validPluginName reports whether name can name a plugin: slash-separated
// elements of letters, digits, '.', '_' and '-', none of them empty, "."
// or "..".
func validPluginName(name string) bool {
	if name == "" {
		return false
	}
	for elem := range strings.SplitSeq(name, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
		for _, c := range []byte(elem) {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
			if !ok {
				return false
			}
		}
	}
	return true
}

// Account is a user the server's processes run as, with the ids the
// kernel checks file permissions against.
type Account struct {
	Name   string // the user name, or the uid in decimal when it has none
	UID    int
	GID    int   // the primary group
	Groups []int // every group of the account, the primary one included
}

// String names the account as messages do: "loopmx (uid 998)".
func (a Account) String() string {
	return fmt.Sprintf("%s (uid %d)", a.Name, a.UID)
}

// RunAs returns the account the server's processes will run as, which
// file permissions are checked against: `user` (and `group`) of smtp.ini
// when it is set and nodes >= 1, since a supervisor started as root then
// runs its workers as that user; otherwise the account running this
// process.
func (c *Config) RunAs() (Account, error) {
	if c.Main.User != "" && c.Main.Nodes >= 1 {
		return LookupAccount(c.Main.User, c.Main.Group)
	}
	return currentAccount()
}

// LookupAccount finds the account of user (a name or a uid) with its
// groups; a group (a name or a gid) replaces the primary group and all
// the others. Errors name smtp.ini and the key.
func LookupAccount(name, group string) (Account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return Account{}, fmt.Errorf("config: smtp.ini: [main] user: %q: %w", name, err)
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return Account{}, fmt.Errorf("config: smtp.ini: [main] user: %q has a non-numeric uid or gid", name)
	}
	a := Account{Name: u.Username, UID: uid, GID: gid}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return Account{}, fmt.Errorf("config: smtp.ini: [main] group: %q: %w", group, err)
			}
		}
		if a.GID, err = strconv.Atoi(g.Gid); err != nil {
			return Account{}, fmt.Errorf("config: smtp.ini: [main] group: %q has a non-numeric gid", group)
		}
		a.Groups = []int{a.GID}
		return a, nil
	}
	ids, err := u.GroupIds()
	if err != nil {
		ids = []string{u.Gid}
	}
	for _, s := range ids {
		if n, err := strconv.Atoi(s); err == nil {
			a.Groups = append(a.Groups, n)
		}
	}
	return a, nil
}

// currentAccount is the account of this process (effective ids).
func currentAccount() (Account, error) {
	a := Account{UID: os.Geteuid(), GID: os.Getegid(), Name: strconv.Itoa(os.Geteuid())}
	if u, err := user.LookupId(a.Name); err == nil {
		a.Name = u.Username
	}
	groups, err := os.Getgroups()
	if err != nil {
		return Account{}, fmt.Errorf("config: the groups of this process: %w", err)
	}
	a.Groups = append([]int{a.GID}, groups...)
	return a, nil
}
