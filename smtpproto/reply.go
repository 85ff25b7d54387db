// Package smtpproto is the SMTP state machine of loopmx: bytes in, Events
// and replies out. It does no I/O, starts no goroutines and reads no clock,
// so the event loop, the STARTTLS goroutine and the tests all drive the same
// code.
package smtpproto

import (
	"slices"
	"strconv"
	"strings"
)

// Reply is an SMTP reply chosen by the host (a plugin decision). The zero
// Reply means "accept with the default text".
type Reply struct {
	// Code is the three-digit reply code (RFC 5321 4.2).
	Code int
	// Enhanced is the enhanced status code without the class check, e.g.
	// "5.7.1" (RFC 3463). Empty picks a generic one matching Code's class.
	Enhanced string
	// Text is the human-readable text; a "\n" splits it into a multi-line
	// reply. Control characters are replaced by '?'.
	Text string
}

// IsZero reports whether r is the zero Reply (accept with default text).
func (r Reply) IsZero() bool { return r.Code == 0 && r.Text == "" && r.Enhanced == "" }

// Positive reports whether r accepts: the zero Reply or a 2xx/3xx code.
func (r Reply) Positive() bool { return r.Code == 0 || (r.Code >= 200 && r.Code < 400) }

// Error makes Reply usable as an error value in plugin code.
func (r Reply) Error() string { return string(r.AppendTo(nil)) }

// AppendTo formats r as wire bytes (one or more CRLF-terminated lines)
// appended to dst. The enhanced code is repeated on every line, as
// RFC 2034 section 4 asks.
func (r Reply) AppendTo(dst []byte) []byte {
	code := r.Code
	if code < 200 || code > 599 {
		code = 451
	}
	enh := r.Enhanced
	if enh == "" || !validEnhanced(enh) || enh[0] != byte('0'+code/100) {
		enh = genericEnhanced(code)
	}
	text := r.Text
	if text == "" {
		text = "Ok"
	}
	// One allocation at most: the text, and per line the codes and CRLF.
	dst = slices.Grow(dst, len(text)+(strings.Count(text, "\n")+1)*(len(enh)+7))
	for rest, more := text, true; more; {
		var l string
		l, rest, more = strings.Cut(rest, "\n")
		dst = strconv.AppendInt(dst, int64(code), 10)
		if more {
			dst = append(dst, '-')
		} else {
			dst = append(dst, ' ')
		}
		if enh != "" {
			dst = append(dst, enh...)
			dst = append(dst, ' ')
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if c < 0x20 || c == 0x7f {
				c = '?'
			}
			dst = append(dst, c)
		}
		dst = append(dst, '\r', '\n')
	}
	return dst
}

// genericEnhanced returns the enhanced code used when a plugin gives none:
// X.0.0 of the reply's class (RFC 3463 3.1 "Other undefined status").
func genericEnhanced(code int) string {
	switch code / 100 {
	case 2:
		return "2.0.0"
	case 3:
		return ""
	case 4:
		return "4.0.0"
	default:
		return "5.0.0"
	}
}

// validEnhanced checks the "class.subject.detail" shape of RFC 3463 2.
func validEnhanced(s string) bool {
	if len(s) > 11 {
		return false
	}
	class, rest, ok := strings.Cut(s, ".")
	if !ok || (class != "2" && class != "4" && class != "5") {
		return false
	}
	subject, detail, ok := strings.Cut(rest, ".")
	return ok && digits3(subject) && digits3(detail)
}

// digits3 reports whether p is one to three digits.
func digits3(p string) bool {
	if p == "" || len(p) > 3 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

// Fixed reply texts. They are constants so golden tests stay stable and the
// hot path writes them without formatting.
var (
	replyOK            = []byte("250 2.0.0 Ok\r\n")
	replyMailOK        = []byte("250 2.1.0 Ok\r\n")
	replyRcptOK        = []byte("250 2.1.5 Ok\r\n")
	replyDataGo        = []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	replyQueuedOK      = []byte("250 2.0.0 Ok: queued\r\n")
	replyBye           = []byte("221 2.0.0 Bye\r\n")
	replyVrfy          = []byte("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n")
	replyHelp          = []byte("214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n")
	replyUnknown       = []byte("500 5.5.1 Error: command not recognized\r\n")
	replyNotImpl       = []byte("502 5.5.1 Error: command not implemented\r\n")
	replyHTTP          = []byte("500 5.5.1 Error: this is an SMTP server, not HTTP\r\n")
	replyHeaderCmd     = []byte("500 5.5.1 Error: a mail header is not a command\r\n")
	replyLineTooLong   = []byte("500 5.5.2 Error: line too long\r\n")
	replyBareLF        = []byte("500 5.5.2 Error: command lines must end with CRLF\r\n")
	replyCtlChars      = []byte("500 5.5.2 Error: control characters in command\r\n")
	replyHeloFirst     = []byte("503 5.5.1 Error: send HELO/EHLO first\r\n")
	replyNestedMail    = []byte("503 5.5.1 Error: nested MAIL command\r\n")
	replyNeedMail      = []byte("503 5.5.1 Error: need MAIL command\r\n")
	replyMixedBdat     = []byte("503 5.5.1 Error: DATA and BDAT cannot be mixed in one transaction\r\n")
	replySyntaxHelo    = []byte("501 5.5.4 Syntax: HELO hostname\r\n")
	replySyntaxEhlo    = []byte("501 5.5.4 Syntax: EHLO hostname\r\n")
	replySyntaxMail    = []byte("501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
	replySyntaxRcpt    = []byte("501 5.5.4 Syntax: RCPT TO:<address>\r\n")
	replySyntaxNoArg   = []byte("501 5.5.4 Syntax error: no arguments allowed\r\n")
	replySyntaxBdat    = []byte("501 5.5.4 Syntax: BDAT count [LAST]\r\n")
	replyBadSender     = []byte("501 5.1.7 Bad sender address syntax\r\n")
	replyBadRcpt       = []byte("501 5.1.3 Bad recipient address syntax\r\n")
	replyNullRcpt      = []byte("501 5.1.3 Null recipient not allowed\r\n")
	replySenderTooLong = []byte("501 5.1.7 Bad sender address syntax: path longer than 256 octets\r\n")
	replyRcptTooLong   = []byte("501 5.1.3 Bad recipient address syntax: path longer than 256 octets\r\n")
	replyCtlSender     = []byte("501 5.1.7 Bad sender address syntax: control character\r\n")
	replyCtlRcpt       = []byte("501 5.1.3 Bad recipient address syntax: control character\r\n")
	replySourceRoute   = []byte("550 5.7.1 Source routes are not accepted; send to the mailbox itself\r\n")
	replyPercentHack   = []byte("550 5.7.1 Addresses with % in the local part (percent hack) are not accepted\r\n")
	replyBangPath      = []byte("550 5.7.1 Addresses with ! in the local part (bang path) are not accepted\r\n")
	replyNeedUTF8      = []byte("553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n")
	replyBadParam      = []byte("555 5.5.4 Unsupported MAIL/RCPT parameter\r\n")
	replyBadParamVal   = []byte("501 5.5.4 Bad MAIL parameter value\r\n")
	replyTooMany       = []byte("452 4.5.3 Error: too many recipients\r\n")
	replyNoValidRcpt   = []byte("554 5.5.1 Error: no valid recipients\r\n")
	replyTooBig        = []byte("552 5.3.4 Message size exceeds fixed limit\r\n")
	replyBareEOL       = []byte("550 5.6.0 Message refused: bare CR or LF in message; lines must end with CRLF\r\n")
	replyTooManyError  = []byte("421 4.7.0 Too many errors, closing connection\r\n")
	replyTLSGo         = []byte("220 2.0.0 Ready to start TLS\r\n")
	replyTLSActive     = []byte("503 5.5.1 Error: TLS already active\r\n")
	replyEhloFirst     = []byte("503 5.5.1 Error: send EHLO first\r\n")
	replyBdatBroken    = []byte("501 5.5.4 Syntax: BDAT count [LAST]; closing connection, framing is lost\r\n")
)
