package config

import (
	"fmt"
	"strings"
)

// Summary returns the effective settings as text for people, as printed by
// `loopmx check-config`: every key of [main] and [log] with its value,
// then the plugins and host_list. It is written in smtp.ini syntax, with
// a comment on values that come from a default, from the environment or
// from a word such as "cpus".
func (c *Config) Summary() string {
	var b strings.Builder
	if c.Embedded {
		fmt.Fprintf(&b, "# built-in default config; relative paths resolve against %s\n", c.Dir)
	} else {
		fmt.Fprintf(&b, "# config directory %s\n", c.Dir)
	}

	width := 0
	for _, s := range mainSettings {
		width = max(width, len(s.key))
	}
	line := func(section string, s setting) {
		var notes []string
		switch {
		case s.key == "threadpool_size" && c.threadpoolFromEnv:
			notes = append(notes, "from "+threadpoolEnv)
		case s.key == "me" && !c.setIn[slot(section, s.key)]:
			notes = append(notes, "default: the host name")
		case !c.setIn[slot(section, s.key)]:
			notes = append(notes, "default")
		}
		notes = append(notes, c.valueNote(s.key)...)
		v := s.show(c)
		if v == "" && len(notes) > 0 {
			// An empty value cannot carry an inline comment: it would read
			// back as the value.
			fmt.Fprintf(&b, "; %s: %s\n", s.key, strings.Join(notes, ", "))
			notes = nil
		}
		fmt.Fprintf(&b, "%-*s = %s", width, s.key, v)
		if len(notes) > 0 {
			fmt.Fprintf(&b, "  ; %s", strings.Join(notes, ", "))
		}
		b.WriteByte('\n')
	}

	b.WriteString("\n[main]\n")
	for _, s := range mainSettings {
		line("", s)
	}
	b.WriteString("\n[log]\n")
	for _, s := range logSettings {
		line("log", s)
	}

	list := func(title string, items []string) {
		fmt.Fprintf(&b, "\n# %s (%d)\n", title, len(items))
		for _, it := range items {
			b.WriteString(it)
			b.WriteByte('\n')
		}
	}
	list("plugins, in hook order", c.Plugins)
	list("host_list", c.HostList)
	return b.String()
}

// valueNote explains a value whose meaning is not plain from the number.
func (c *Config) valueNote(key string) []string {
	m := &c.Main
	switch key {
	case "loops":
		if c.loopsPerCPU {
			return []string{"cpus"}
		}
	case "max_message_size":
		return []string{fmt.Sprintf("%d bytes", m.MaxMessageSize)}
	case "max_data_line_length":
		if m.MaxDataLineLength == 0 {
			return []string{"unlimited"}
		}
	case "max_connections":
		if m.MaxConnections == 0 {
			return []string{"unlimited"}
		}
	case "max_connections_per_ip":
		if m.MaxConnectionsPerIP == 0 {
			return []string{"unlimited"}
		}
	}
	return nil
}
