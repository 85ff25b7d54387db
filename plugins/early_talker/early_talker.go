// Package earlytalker is the early_talker plugin: it holds the 220 banner
// back for a pause and refuses clients that start talking before they were
// greeted. RFC 5321 4.3.1 has the client wait for the greeting; spam
// software in a hurry often does not, and a real MTA always does.
//
// The pause costs no goroutine: the connect hook answers Continue with a
// Delay, the event loop parks the connection on its timer heap and calls
// the hook again when the pause is over. Input that arrived meanwhile is
// reported in Conn.EarlyTalker.
package earlytalker

import (
	"fmt"
	"time"

	"loopmx/config"
	"loopmx/plugins"
	"loopmx/smtpproto"
)

// Name is the plugin's name in the plugins file.
const Name = "early_talker"

// Connection notes the plugin sets.
const (
	// NotePaused is set (to the pause, a time.Duration) when the banner
	// was held back.
	NotePaused = "early_talker.paused"
	// NoteTalked is set (to true) when the client sent data before the
	// banner, whether or not it was refused for it.
	NoteTalked = "early_talker.talked"
)

// MaxPause is the longest pause accepted: RFC 5321 4.5.3.2.1 lets a client
// give up after waiting 5 minutes for the greeting.
const MaxPause = 5 * time.Minute

func init() { plugins.Register(Name, setup) }

// EarlyTalker delays the banner and judges what the client did meanwhile.
type EarlyTalker struct {
	pause  time.Duration
	reject bool
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	pause := pc.Duration("", "pause", 0)
	reject := pc.Bool("", "reject", true)
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if pause < 0 || pause >= MaxPause {
		return nil, fmt.Errorf("config: %s: [main] pause: %q must be 0 (off) or more, and less than %v (RFC 5321 4.5.3.2.1)",
			pc.File(), pc.String("", "pause", ""), MaxPause)
	}
	return New(pause, reject), nil
}

// New returns the plugin: it holds the banner back for pause (0 turns the
// plugin off) and, with reject, refuses a client that talked meanwhile.
func New(pause time.Duration, reject bool) *EarlyTalker {
	return &EarlyTalker{pause: pause, reject: reject}
}

// Name implements plugins.Plugin.
func (*EarlyTalker) Name() string { return Name }

// Connect implements plugins.ConnectHook. It runs inline and is called
// twice per connection: once to ask for the pause, once after it.
func (p *EarlyTalker) Connect(c *plugins.Conn) plugins.Result {
	if p.pause <= 0 {
		return plugins.NoOpinion()
	}
	if c.Note(NotePaused) == nil {
		c.SetNote(NotePaused, p.pause)
		return plugins.Result{Action: plugins.Continue, Delay: p.pause}
	}
	if !c.EarlyTalker {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Pass, Message: "waited " + p.pause.String()})
		return plugins.NoOpinion()
	}
	c.SetNote(NoteTalked, true)
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Fail, Message: "talked before the banner"})
	if !p.reject {
		if c.Log != nil {
			c.Log.Debug().Str("plugin", Name).Str("conn", c.ID).Str("ip", c.RemoteIP.String()).
				Msg("client talked before the banner; let through (reject = false)")
		}
		return plugins.NoOpinion()
	}
	return talkedEarly(c.Hostname)
}

// talkedEarly is the refusal. 554 is the code RFC 5321 3.1 gives a server
// that will not serve a client at the greeting; 5.5.0 (RFC 3463: other or
// undefined protocol status) says the client broke the protocol.
func talkedEarly(host string) plugins.Result {
	text := "Protocol error: talked before the banner"
	if host != "" {
		text = host + " " + text
	}
	return plugins.Result{
		Action: plugins.RejectDisconnect,
		Reply:  smtpproto.Reply{Code: 554, Enhanced: "5.5.0", Text: text},
	}
}

var _ plugins.ConnectHook = (*EarlyTalker)(nil)
