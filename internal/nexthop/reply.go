package nexthop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Reply is one reply of the next hop: its code, the enhanced status code
// when the reply carried one of its own class (RFC 3463), and the text of
// all its lines joined by spaces, without the codes.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// Error makes a Reply usable as an error.
func (r Reply) Error() string {
	if r.Enhanced == "" {
		return strconv.Itoa(r.Code) + " " + r.Text
	}
	return strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text
}

// Class is the first digit of the code: 2 accepted, 3 go on, 4 try
// later, 5 refused.
func (r Reply) Class() int { return r.Code / 100 }

// Limits on what we read from a next hop, so that a broken or hostile
// backend cannot make us buffer without bound. RFC 5321 4.5.3.1.5 allows
// 512 octets per reply line; we tolerate more, but not much more.
const (
	maxReplyLine  = 2048
	maxReplyLines = 100
	maxReplyText  = 400 // of the joined text we keep
)

// errBadReply marks a reply that does not follow RFC 5321 4.2.
var errBadReply = errors.New("malformed reply")

// readReply reads one reply: lines "ddd-text" ending with "ddd text" (RFC
// 5321 4.2.1). Every line must carry the same code. When lines is not nil,
// the text of each line (after the code) is appended to it, as EHLO
// keywords are read.
func readReply(br *bufio.Reader, lines *[]string) (Reply, error) {
	var rep Reply
	var text []byte
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return rep, fmt.Errorf("%w: more than %d lines", errBadReply, maxReplyLines)
		}
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return rep, fmt.Errorf("%w: line longer than %d octets", errBadReply, br.Size())
		}
		if err != nil {
			return rep, err
		}
		line = trimEOL(line)
		code := replyCode(line)
		if code == 0 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			return rep, fmt.Errorf("%w: %q", errBadReply, line)
		}
		if n > 0 && code != rep.Code {
			return rep, fmt.Errorf("%w: code changes from %d to %d", errBadReply, rep.Code, code)
		}
		rep.Code = code
		var body []byte
		if len(line) > 4 {
			body = line[4:]
		}
		if lines != nil {
			*lines = append(*lines, string(body))
		}
		if n == 0 {
			rep.Enhanced, body = splitEnhanced(code, body)
		} else if rep.Enhanced != "" {
			_, body = splitEnhanced(code, body)
		}
		last := len(line) == 3 || line[3] == ' '
		if n == 0 && last {
			// The common one-line reply: one allocation for its text.
			rep.Text = string(body[:min(len(body), maxReplyText)])
			return rep, nil
		}
		if len(body) > 0 && len(text) < maxReplyText {
			if len(text) > 0 {
				text = append(text, ' ')
			}
			text = append(text, body...)
		}
		if last {
			rep.Text = string(text[:min(len(text), maxReplyText)])
			return rep, nil
		}
	}
}

// replyCode parses the three digits that start a reply line, or returns 0
// when they are missing or out of the range 200-599.
func replyCode(line []byte) int {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' {
		return 0
	}
	for _, c := range line[1:3] {
		if c < '0' || c > '9' {
			return 0
		}
	}
	return int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
}

// trimEOL removes the CRLF (or a bare LF) that ends a line.
func trimEOL(b []byte) []byte {
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

// splitEnhanced splits "5.1.1 User unknown" into the enhanced status code
// and the rest, when the code is well formed and of the reply's class
// (RFC 3463 2, RFC 2034 3).
func splitEnhanced(code int, b []byte) (string, []byte) {
	word, rest, _ := bytes.Cut(b, []byte(" "))
	if !validEnhanced(word) || int(word[0]-'0') != code/100 {
		return "", b
	}
	return enhancedString(word), rest
}

// enhancedString returns word as a string, without an allocation for the
// codes servers send most.
func enhancedString(word []byte) string {
	for _, s := range commonEnhanced {
		if string(word) == s {
			return s
		}
	}
	return string(word)
}

var commonEnhanced = [...]string{"2.0.0", "2.1.0", "2.1.5", "2.6.0"}

// validEnhanced checks the "class.subject.detail" shape of RFC 3463 2:
// class 2, 4 or 5, then two numbers of one to three digits.
func validEnhanced(b []byte) bool {
	if len(b) < 5 || (b[0] != '2' && b[0] != '4' && b[0] != '5') || b[1] != '.' {
		return false
	}
	digits, dots := 0, 0
	for _, c := range b[2:] {
		switch {
		case c >= '0' && c <= '9':
			digits++
			if digits > 3 {
				return false
			}
		case c == '.' && digits > 0 && dots == 0:
			digits, dots = 0, 1
		default:
			return false
		}
	}
	return dots == 1 && digits > 0
}
