package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/ini.v1"
)

// iniOptions is how every ini file is parsed. Only '=' separates a key
// from its value, so values such as "[::1]:25" need no quoting. A '#' or
// ';' starts a comment at the start of a line or after a space, so a value
// may contain either character. Repeated keys are kept (with shadows) so
// that they can be reported instead of the last one silently winning.
var iniOptions = ini.LoadOptions{
	KeyValueDelimiters:         "=",
	SpaceBeforeInlineComment:   true,
	AllowShadows:               true,
	AllowDuplicateShadowValues: true,
	PreserveEmptyShadowValues:  true,
}

// iniFile is one parsed ini file plus a record of what the program looked
// up in it, so that whatever nobody asked for can be reported as unknown.
//
// Keys above the first section header and keys in [main] form one section,
// stored under the name "" and shown as [main] in errors: Haraka treats
// the top of a file as its main section, and so do we.
type iniFile struct {
	name     string              // file name used in errors, e.g. "smtp.ini"
	sections []string            // section names in file order
	keys     map[string][]string // section -> key names in file order
	values   map[string]string   // slot(section, key) -> value
	read     map[string]bool     // slot(section, key) -> a getter asked for it
	asked    map[string]bool     // section -> a getter asked for one of its keys
	err      error               // the first bad value a getter met
}

func newINI(name string) *iniFile {
	return &iniFile{
		name:   name,
		keys:   make(map[string][]string),
		values: make(map[string]string),
		read:   make(map[string]bool),
		asked:  make(map[string]bool),
	}
}

// parseINI parses data as the ini file called name.
func parseINI(name string, data []byte) (*iniFile, error) {
	src, err := ini.LoadSources(iniOptions, data)
	if err != nil {
		return nil, syntaxError(name, err)
	}
	f := newINI(name)
	for _, sec := range src.Sections() {
		section := canonSection(strings.TrimSpace(sec.Name()))
		keys := sec.Keys()
		// The implicit top-level section always exists in ini.v1; list
		// it only when it holds something.
		if sec.Name() == ini.DefaultSection && len(keys) == 0 {
			continue
		}
		if _, seen := f.keys[section]; !seen {
			f.sections = append(f.sections, section)
			f.keys[section] = []string{}
		}
		for _, k := range keys {
			s := slot(section, k.Name())
			if _, dup := f.values[s]; dup || len(k.ValueWithShadows()) > 1 {
				return nil, fmt.Errorf("config: %s: %s duplicate key %q", name, sectionLabel(section), k.Name())
			}
			f.keys[section] = append(f.keys[section], k.Name())
			f.values[s] = k.Value()
		}
	}
	return f, nil
}

// syntaxError turns a parse error from ini.v1 into one line naming the file.
func syntaxError(name string, err error) error {
	var noDelim ini.ErrDelimiterNotFound
	if errors.As(err, &noDelim) {
		return &lineError{fmt.Sprintf("config: %s: line %q is not key = value", name, strings.TrimSpace(noDelim.Line)), err}
	}
	var noKey ini.ErrEmptyKeyName
	if errors.As(err, &noKey) {
		return &lineError{fmt.Sprintf("config: %s: line %q has no key name", name, strings.TrimSpace(noKey.Line)), err}
	}
	return &lineError{fmt.Sprintf("config: %s: %s", name, oneLine(err.Error())), err}
}

// lineError is an error whose text has been made to fit on one line while
// the original stays reachable through errors.Unwrap.
type lineError struct {
	msg string
	err error
}

func (e *lineError) Error() string { return e.msg }

func (e *lineError) Unwrap() error { return e.err }

// oneLine trims s and replaces any line breaks inside it with spaces.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// canonSection maps the names of the top-level section to "".
func canonSection(section string) string {
	if section == "main" || section == ini.DefaultSection {
		return ""
	}
	return section
}

// sectionLabel is how a section is named in errors and in Summary. A name
// with control or non-ASCII characters is quoted, to keep errors on one
// line and readable.
func sectionLabel(section string) string {
	if section == "" {
		return "[main]"
	}
	for _, c := range []byte(section) {
		if c < ' ' || c >= 0x7f {
			return "[" + strconv.Quote(section) + "]"
		}
	}
	return "[" + section + "]"
}

func slot(section, key string) string { return section + "\x00" + key }

// lookup returns the value of key in section and whether the file sets it,
// and remembers that both were asked for.
func (f *iniFile) lookup(section, key string) (string, bool) {
	section = canonSection(section)
	f.asked[section] = true
	s := slot(section, key)
	v, ok := f.values[s]
	if ok {
		f.read[s] = true
	}
	return v, ok
}

// fail records err, which says why the value of key is bad, unless an
// earlier error was recorded already.
func (f *iniFile) fail(section, key string, err error) {
	if f.err == nil {
		f.err = fmt.Errorf("config: %s: %s %s: %w", f.name, sectionLabel(canonSection(section)), key, err)
	}
}

// sectionKeys returns the keys of section in file order and marks them all
// as read.
func (f *iniFile) sectionKeys(section string) []string {
	section = canonSection(section)
	f.asked[section] = true
	keys := f.keys[section]
	for _, k := range keys {
		f.read[slot(section, k)] = true
	}
	return append([]string(nil), keys...)
}

// check returns the first recorded bad value, else an error for the first
// section or key in file order that nobody asked for, else nil. A section
// nobody asked for at all is reported as a whole; the top-level section is
// reported key by key, since writing keys there needs no header.
func (f *iniFile) check() error {
	if f.err != nil {
		return f.err
	}
	for _, section := range f.sections {
		if section != "" && !f.asked[section] {
			return fmt.Errorf("config: %s: unknown section %s", f.name, sectionLabel(section))
		}
		for _, k := range f.keys[section] {
			if !f.read[slot(section, k)] {
				return fmt.Errorf("config: %s: %s unknown key %q", f.name, sectionLabel(section), k)
			}
		}
	}
	return nil
}
