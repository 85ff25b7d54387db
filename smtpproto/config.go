package smtpproto

import (
	"fmt"
	"math"
	"strconv"
)

// Config holds the limits and names shared by every Session of a server.
// It is read-only once Prepare has run, so one Config serves all loops.
// Every field is taken as given: the defaults belong to the caller's
// configuration (package config for loopmx), not to this package.
type Config struct {
	// Hostname is the server's name in the banner and EHLO reply.
	Hostname string
	// MaxLineLength caps a command line including CRLF
	// (RFC 5321 4.5.3.1.4: at least 512 octets).
	MaxLineLength int
	// MaxDataLineLength caps a DATA line including CRLF
	// (RFC 5321 4.5.3.1.6: 1000 octets); 0 means no cap.
	MaxDataLineLength int
	// MaxMessageSize caps the message body; advertised as SIZE (RFC 1870).
	MaxMessageSize int64
	// MaxRecipients caps RCPT commands per transaction (452 4.5.3 beyond).
	MaxRecipients int
	// MaxErrors is the number of protocol errors after which the session
	// answers 421 and asks the host to close.
	MaxErrors int
	// KeepLongLines keeps messages with lines over MaxDataLineLength;
	// otherwise they are refused after their terminator.
	KeepLongLines bool
	// KeepBareLineEndings keeps messages with a bare CR or LF; otherwise they
	// are refused after their terminator.
	KeepBareLineEndings bool
	// Extensions are extra EHLO keywords offered after the built-in ones.
	Extensions []string
	// StartTLS offers STARTTLS (RFC 3207) on plain connections.
	StartTLS bool
	// AllowSourceRoute accepts a source route in RCPT TO
	// (<@a,@b:user@c>) and drops it (RFC 5321 4.1.1.3, appendix C);
	// otherwise RCPT answers 550 5.7.1.
	AllowSourceRoute bool
	// AllowPercentHack accepts a '%' in the local part of RCPT TO
	// (user%other.net@example.com); otherwise RCPT answers 550 5.7.1.
	AllowPercentHack bool
	// AllowBangPath accepts a '!' in the local part of RCPT TO
	// (host!user@example.com); otherwise RCPT answers 550 5.7.1.
	AllowBangPath bool
	// UnknownToHost passes unimplemented commands to the host as
	// KindUnknown events instead of answering them at once.
	UnknownToHost bool

	dataLineMax  int // the longest DATA line without its CRLF; MaxInt for no limit
	keywords     []string
	keywordsTLS  []string
	ehloReplyTLS []byte
	banner       []byte
	ehloReply    []byte
	heloReply    []byte
	longLineRepl []byte
	busyReply    []byte
}

// Prepare checks the limits and builds the fixed replies. Call it once
// before the Config is shared. It fills in nothing: a value out of range
// (a zero one included) is an error that names the field, for the caller
// to report.
func (c *Config) Prepare() error {
	switch {
	case c.Hostname == "":
		return fmt.Errorf("smtpproto: Config.Hostname is empty")
	case c.MaxLineLength < 512:
		// RFC 5321 4.5.3.1.4: a server takes command lines of 512 octets.
		return fmt.Errorf("smtpproto: Config.MaxLineLength %d is under 512", c.MaxLineLength)
	case c.MaxDataLineLength < 0:
		return fmt.Errorf("smtpproto: Config.MaxDataLineLength %d is negative", c.MaxDataLineLength)
	case c.MaxMessageSize < 1:
		return fmt.Errorf("smtpproto: Config.MaxMessageSize %d is under 1", c.MaxMessageSize)
	case c.MaxRecipients < 1:
		return fmt.Errorf("smtpproto: Config.MaxRecipients %d is under 1", c.MaxRecipients)
	case c.MaxErrors < 1:
		return fmt.Errorf("smtpproto: Config.MaxErrors %d is under 1", c.MaxErrors)
	}
	c.dataLineMax = math.MaxInt
	if c.MaxDataLineLength > 0 {
		c.dataLineMax = c.MaxDataLineLength - 2
	}
	c.banner = []byte("220 " + c.Hostname + " ESMTP loopmx\r\n")
	c.heloReply = []byte("250 " + c.Hostname + "\r\n")
	ext := []string{
		"PIPELINING",
		"SIZE " + strconv.FormatInt(c.MaxMessageSize, 10),
		"8BITMIME",
		"ENHANCEDSTATUSCODES",
		"SMTPUTF8",
		"CHUNKING",
	}
	ext = append(ext, c.Extensions...)
	c.keywordsTLS = append([]string(nil), ext...)
	c.ehloReplyTLS = EHLOReply(c.Hostname, ext)
	if c.StartTLS {
		ext = append(ext, "STARTTLS")
	}
	c.keywords = ext
	c.ehloReply = EHLOReply(c.Hostname, ext)
	c.longLineRepl = []byte("550 5.5.2 Message refused: a line is longer than " +
		strconv.Itoa(c.MaxDataLineLength) + " octets including CRLF\r\n")
	c.busyReply = []byte("421 4.3.2 " + c.Hostname + " Service busy, try again later\r\n")
	return nil
}

// Keywords returns a copy of the EHLO keywords the server offers; tls
// selects the list for a session already under TLS (no STARTTLS).
func (c *Config) Keywords(tls bool) []string {
	if tls {
		return append([]string(nil), c.keywordsTLS...)
	}
	return append([]string(nil), c.keywords...)
}

// Banner is the 220 greeting (RFC 5321 4.3.1).
func (c *Config) Banner() []byte { return c.banner }

// EHLOReply formats a multi-line 250 EHLO reply listing keywords
// (RFC 5321 4.1.1.1). Hosts call it when plugins change the list.
func EHLOReply(hostname string, keywords []string) []byte {
	var b []byte
	b = append(b, "250"...)
	if len(keywords) == 0 {
		b = append(b, ' ')
	} else {
		b = append(b, '-')
	}
	b = append(b, hostname...)
	b = append(b, '\r', '\n')
	for i, k := range keywords {
		if i == len(keywords)-1 {
			b = append(b, "250 "...)
		} else {
			b = append(b, "250-"...)
		}
		b = append(b, k...)
		b = append(b, '\r', '\n')
	}
	return b
}
