// Package headers is the headers plugin: when a message is complete it
// checks the message's header section and refuses messages whose header is
// too large (552 5.6.0) or that carry more Received fields than a message
// ever needs (554 5.4.6, a mail loop: RFC 5321 6.3), recording each
// refusal for the results plugin.
//
// The check runs inline on the event loop: one pass over the header
// section, no allocation, and never more than max_header_bytes of it.
package headers

import (
	"bytes"
	"fmt"
	"strconv"

	"loopmx/config"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "headers"

// Defaults of headers.ini.
const (
	// DefaultMaxHeaderBytes caps the header section.
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxReceived is Postfix's hopcount_limit: a message that has
	// passed more relays than this is taken to be looping.
	DefaultMaxReceived = 50
)

func init() { plugins.Register(Name, setup) }

// Headers checks the header section of each message.
type Headers struct {
	maxBytes    int
	maxReceived int
}

// The refusals. RFC 3463: X.6.0 is "other or undefined media error", X.4.6
// "routing loop detected".
var (
	tooLarge = plugins.Deny(552, "5.6.0", "Header too large")
	tooMany  = plugins.Deny(554, "5.4.6", "Too many hops, mail loop?")
)

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	maxBytes := pc.Int64("", "max_header_bytes", DefaultMaxHeaderBytes)
	maxReceived := pc.Int("", "max_received", DefaultMaxReceived)
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if maxBytes < 0 || maxBytes > 1<<30 {
		return nil, fmt.Errorf("config: %s: [main] max_header_bytes: %q must be 0 (off) to 1g",
			pc.File(), pc.String("", "max_header_bytes", ""))
	}
	if maxReceived < 0 {
		return nil, fmt.Errorf("config: %s: [main] max_received: %q must be 0 (off) or more",
			pc.File(), pc.String("", "max_received", ""))
	}
	return New(int(maxBytes), maxReceived), nil
}

// New returns the plugin with its limits: maxBytes for the header section,
// maxReceived for the number of Received fields in it. Zero turns a check
// off.
func New(maxBytes, maxReceived int) *Headers {
	return &Headers{maxBytes: maxBytes, maxReceived: maxReceived}
}

// Name implements plugins.Plugin.
func (*Headers) Name() string { return Name }

// DataPost implements plugins.DataPostHook.
func (h *Headers) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	size, received := scan(m.HeaderBytes(), h.maxBytes)
	switch {
	case h.maxBytes > 0 && size > h.maxBytes:
		h.logRefusal(c, "header section over max_header_bytes", size, received)
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail,
			Message: "header section over max_header_bytes " + strconv.Itoa(h.maxBytes)})
		return tooLarge
	case h.maxReceived > 0 && received > h.maxReceived:
		h.logRefusal(c, "more Received fields than max_received", size, received)
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail,
			Message: strconv.Itoa(received) + " Received fields over max_received " + strconv.Itoa(h.maxReceived)})
		return tooMany
	}
	return plugins.NoOpinion()
}

// logRefusal gives the figures behind a refusal at debug level; the loop
// logs the refusal itself.
func (h *Headers) logRefusal(c *plugins.Conn, why string, size, received int) {
	if c.Log == nil {
		return
	}
	e := c.Log.Debug()
	if !e.Enabled() {
		return
	}
	if c.Tx != nil {
		e = e.Str("tx", c.Tx.ID)
	}
	e.Str("plugin", Name).Int("header_bytes", size).Int("max_header_bytes", h.maxBytes).
		Int("received", received).Int("max_received", h.maxReceived).Msg(why)
}

var received = []byte("Received")

// scan walks the header section at the start of b (RFC 5322 2.2): fields
// "name: value", each perhaps folded onto following lines that start with
// a space or a tab. The section ends at the empty line, or at the first
// line that is neither a field nor a continuation, where the body starts
// of a message that lacks the empty line. scan returns the section's
// length in octets (without the empty line) and the number of Received
// fields in it. With limit > 0 it stops once the length passes limit.
func scan(b []byte, limit int) (size, nReceived int) {
	for size < len(b) && (limit <= 0 || size <= limit) {
		line := b[size:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i+1]
		}
		if line[0] == ' ' || line[0] == '\t' {
			if size == 0 {
				return 0, 0 // a continuation of nothing: no header at all
			}
		} else {
			name, ok := fieldName(line)
			if !ok {
				return size, nReceived
			}
			if bytes.EqualFold(name, received) {
				nReceived++
			}
		}
		size += len(line)
	}
	return size, nReceived
}

// fieldName returns the name of the field that line starts, or false when
// line does not start a field (the empty line included). RFC 5322 3.6.8:
// a name is printable US-ASCII but ':'; 4.5.3 (obsolete syntax, still
// met) allows white space between the name and the colon.
func fieldName(line []byte) ([]byte, bool) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, false
	}
	name := bytes.TrimRight(line[:colon], " \t")
	if len(name) == 0 {
		return nil, false
	}
	for _, ch := range name {
		if ch < 33 || ch > 126 {
			return nil, false
		}
	}
	return name, true
}

var _ plugins.DataPostHook = (*Headers)(nil)
