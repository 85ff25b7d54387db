package smtpproto

import (
	"strings"
	"testing"
)

// TestPrepareChecksWithoutDefaults checks that Prepare fills in nothing: a
// missing or out-of-range value is an error naming its field, as a caller
// that forgot to pass its configuration must learn at start.
func TestPrepareChecksWithoutDefaults(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Hostname = "" }, "smtpproto: Config.Hostname is empty"},
		{func(c *Config) { c.MaxLineLength = 0 }, "smtpproto: Config.MaxLineLength 0 is under 512"},
		{func(c *Config) { c.MaxLineLength = 511 }, "smtpproto: Config.MaxLineLength 511 is under 512"},
		{func(c *Config) { c.MaxDataLineLength = -1 }, "smtpproto: Config.MaxDataLineLength -1 is negative"},
		{func(c *Config) { c.MaxMessageSize = 0 }, "smtpproto: Config.MaxMessageSize 0 is under 1"},
		{func(c *Config) { c.MaxRecipients = 0 }, "smtpproto: Config.MaxRecipients 0 is under 1"},
		{func(c *Config) { c.MaxErrors = 0 }, "smtpproto: Config.MaxErrors 0 is under 1"},
	} {
		c := *testConfig()
		tc.edit(&c)
		if err := c.Prepare(); err == nil || err.Error() != tc.want {
			t.Errorf("Prepare: %v, want %s", err, tc.want)
		}
	}
	var zero Config
	if err := zero.Prepare(); err == nil {
		t.Error("Prepare of a zero Config succeeded")
	}
}

// TestConfigTakenAsGiven checks that the smallest legal values are used as
// they are: one recipient, one error, lines of 512 octets.
func TestConfigTakenAsGiven(t *testing.T) {
	cfg := newConfig(func(c *Config) { c.MaxRecipients, c.MaxErrors = 1, 1 })
	in := inEHLO + inEnv + "RCPT TO:<f@g.test>\r\nNOOP " + strings.Repeat("x", 505) + "\r\nBOGUS\r\n"
	checkSplits(t, cfg, in, rEHLO+rMail+rRcpt+"452 4.5.3 Error: too many recipients\r\n"+rOK+
		"500 5.5.1 Error: command not recognized\r\n"+rClosed)
}
