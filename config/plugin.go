package config

import (
	"path/filepath"
	"strings"
	"time"
)

// PluginConfig gives typed access to one plugin's ini file.
//
// Each getter takes a section and a key and returns the key's value, or
// def when the file does not set it. A value that does not parse is
// recorded (the first one only) and def is returned; Check reports it.
// Getters also record which keys were read, so that Check can report keys
// that no getter asked for, which are usually typos.
//
// Section "" is the top of the file, before any section header. "main" is
// another name for it: keys at the top and keys under [main] form one
// section, and a key set in both places is a duplicate.
//
// A plugin reads all its settings once, at setup, then calls Check. A
// PluginConfig is not safe for concurrent use.
type PluginConfig struct {
	f          *iniFile
	dir        string // the config directory, for Path
	timeout    time.Duration
	timeoutErr error // a bad "timeout" value, kept apart for CheckTimeout
}

// CheckTimeout reports a bad "timeout" value (the chain checks it even
// for plugins whose setup never opens their ini).
func (p *PluginConfig) CheckTimeout() error { return p.timeoutErr }

// Timeout is the plugin's "timeout" key (default DefaultPluginTimeout):
// the longest the chain waits for one of its blocking hooks.
func (p *PluginConfig) Timeout() time.Duration { return p.timeout }

// File returns the name of the ini file, relative to the config directory
// (for example "maildir.ini"), as errors name it.
func (p *PluginConfig) File() string { return p.f.name }

// String returns the value of key in section as written, or def.
func (p *PluginConfig) String(section, key, def string) string {
	if v, ok := p.f.lookup(section, key); ok {
		return v
	}
	return def
}

// Int returns the value of key in section as a decimal integer, or def.
func (p *PluginConfig) Int(section, key string, def int) int {
	v, ok := p.f.lookup(section, key)
	if !ok {
		return def
	}
	n, err := parseInt(v)
	if err != nil {
		p.f.fail(section, key, err)
		return def
	}
	return n
}

// Int64 returns the value of key in section as a 64-bit integer, or def.
// Like max_message_size, the number may end in k, m or g (either case)
// for KiB, MiB or GiB.
func (p *PluginConfig) Int64(section, key string, def int64) int64 {
	v, ok := p.f.lookup(section, key)
	if !ok {
		return def
	}
	n, err := parseSize(v)
	if err != nil {
		p.f.fail(section, key, err)
		return def
	}
	return n
}

// Bool returns the value of key in section as a boolean, or def. It
// accepts true/false, yes/no, on/off and 1/0, in any case.
func (p *PluginConfig) Bool(section, key string, def bool) bool {
	v, ok := p.f.lookup(section, key)
	if !ok {
		return def
	}
	b, err := parseBool(v)
	if err != nil {
		p.f.fail(section, key, err)
		return def
	}
	return b
}

// Duration returns the value of key in section as a duration, or def. It
// accepts Go durations such as "30s" or "1m30s", and bare integers, which
// count seconds.
func (p *PluginConfig) Duration(section, key string, def time.Duration) time.Duration {
	v, ok := p.f.lookup(section, key)
	if !ok {
		return def
	}
	d, err := parseDuration(v)
	if err != nil {
		p.f.fail(section, key, err)
		return def
	}
	return d
}

// Choice returns the value of key in section, one of choices in lower
// case (the file may write it in any case), or def.
func (p *PluginConfig) Choice(section, key, def string, choices ...string) string {
	v, ok := p.f.lookup(section, key)
	if !ok {
		return def
	}
	c, err := parseChoice(v, choices...)
	if err != nil {
		p.f.fail(section, key, err)
		return def
	}
	return c
}

// Path returns the value of key in section, or def, resolved against the
// config directory unless it is absolute. An empty def stays empty; an
// empty value in the file is an error.
func (p *PluginConfig) Path(section, key, def string) string {
	v, ok := p.f.lookup(section, key)
	if !ok {
		v = def
	} else if v == "" {
		p.f.fail(section, key, &valueError{v, "is not a path", nil})
		v = def
	}
	if v == "" || filepath.IsAbs(v) {
		return v
	}
	return filepath.Join(p.dir, v)
}

// Strings returns the value of key in section split at commas, each item
// trimmed and empty items dropped, or def. A key set to nothing gives an
// empty, non-nil list.
func (p *PluginConfig) Strings(section, key string, def []string) []string {
	v, ok := p.f.lookup(section, key)
	if !ok {
		return def
	}
	items := []string{}
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

// Keys returns the keys of section in file order and counts them all as
// read, for plugins whose keys are data (a map of names to values).
func (p *PluginConfig) Keys(section string) []string {
	return p.f.sectionKeys(section)
}

// Sections returns the sections of the file in file order. Keys at the top
// of the file and a [main] header show up once, as "".
func (p *PluginConfig) Sections() []string {
	return append([]string(nil), p.f.sections...)
}

// Check returns the first bad value a getter met, else an error for the
// first key in the file that no getter read (a whole section when none of
// its keys was asked for), else nil.
func (p *PluginConfig) Check() error {
	return p.f.check()
}
