package smtpproto

import (
	"bytes"
	"math"
	"sync"
)

// DATA dot-states. The only end of data is CRLF "." CRLF (RFC 5321
// 4.1.1.4); a line start is reached only through CRLF, so "\n.\n",
// "\r.\r", "\n.\r\n" and "\r\n.\n" never end a message (SMTP smuggling,
// CVE-2023-51764/5/6).
const (
	dsLineStart uint8 = iota // just after CRLF (or after the DATA command)
	dsDot                    // a line that began with '.'
	dsDotCR                  // "." CR at the start of a line
	dsMid                    // inside a line
	dsCR                     // a CR inside (or at the start of) a line
)

// data consumes DATA input. It returns the bytes used and whether the
// terminator was seen (the terminator is consumed, the rest is not).
func (s *Session) data(in []byte) (int, bool) {
	i := 0
	for i < len(in) {
		if s.dotState == dsMid || s.dotState == dsLineStart {
			i = s.lines(in, i)
			if i == len(in) {
				break
			}
		}
		c := in[i]
		switch s.dotState {
		case dsMid:
			// The run up to the next CR or LF is content.
			j := len(in)
			if k := bytes.IndexByte(in[i:], '\r'); k >= 0 {
				j = i + k
			}
			if k := bytes.IndexByte(in[i:j], '\n'); k >= 0 {
				j = i + k
			}
			if j > i {
				s.lineLen += j - i
				if s.lineLen > s.cfg.dataLineMax {
					s.overlong() // known before the line ends
				}
				s.put(in[i:j])
				i = j
				continue
			}
			if c == '\r' {
				s.dotState = dsCR
			} else { // bare LF: kept under KeepBareLineEndings, ends a line
				s.sawBareEOL()
				s.put(in[i : i+1])
				s.checkLine()
			}
			i++
		case dsLineStart:
			switch c {
			case '.':
				s.dotState = dsDot
			case '\r':
				s.dotState = dsCR
			case '\n':
				s.sawBareEOL()
				s.put(in[i : i+1])
				s.checkLine()
				s.dotState = dsMid
			default:
				s.lineLen++
				s.put(in[i : i+1])
				s.dotState = dsMid
			}
			i++
		case dsDot:
			// RFC 5321 4.5.2: a leading dot is removed; what follows is
			// the line's content.
			switch c {
			case '\r':
				s.dotState = dsDotCR
				i++
			default:
				s.dotState = dsMid
			}
		case dsDotCR:
			if c == '\n' {
				s.checkLine()
				s.dotState = dsLineStart
				return i + 1, true
			}
			// "." CR not followed by LF: a bare CR inside the line.
			s.sawBareEOL()
			s.lineLen++
			s.put(crByte)
			s.dotState = dsMid
			if c == '\r' {
				s.dotState = dsCR
				i++
			}
		case dsCR:
			if c == '\n' {
				s.put(crlfBytes)
				s.checkLine()
				s.dotState = dsLineStart
				i++
				continue
			}
			// A CR not followed by LF is a bare CR; keep it and go on.
			s.sawBareEOL()
			s.lineLen++
			s.put(crByte)
			s.dotState = dsMid
			if c == '\r' {
				s.dotState = dsCR
				i++
			}
		}
	}
	return i, false
}

// lines is data's fast path. From i, inside a line or at the start of
// one, it takes every whole line that needs nothing but copying: it ends
// in CRLF, holds no other CR, is within the line limit and (at a line
// start) does not begin with a dot. The run of such lines is kept with
// one put. It returns where it stopped, which is where the byte-wise
// states take over: at a dot, a bare CR or LF, an overlong line, or a
// line that has not fully arrived.
func (s *Session) lines(in []byte, i int) int {
	start := i
	for i < len(in) {
		if s.dotState == dsLineStart && in[i] == '.' {
			break
		}
		k := bytes.IndexByte(in[i:], '\n')
		if k < 1 || in[i+k-1] != '\r' {
			break // no whole line, or a bare LF
		}
		content := in[i : i+k-1]
		if bytes.IndexByte(content, '\r') >= 0 || s.lineLen+len(content) > s.cfg.dataLineMax {
			break
		}
		s.lineLen = 0
		s.dotState = dsLineStart
		i += k + 1
	}
	if i > start {
		s.put(in[start:i])
	}
	return i
}

var (
	crByte    = []byte{'\r'}
	crlfBytes = []byte{'\r', '\n'}
)

// checkLine notes a line over the DATA line limit and starts a new line.
// RFC 5321 4.5.3.1.6: 1000 octets including CRLF.
func (s *Session) checkLine() {
	if s.lineLen > s.cfg.dataLineMax {
		s.overlong()
	}
	s.lineLen = 0
}

// overlong notes a line over the limit. Under long_lines = reject the
// message is then certain to be refused: its octets are no longer kept.
func (s *Session) overlong() {
	s.longLine = true
	if !s.cfg.KeepLongLines {
		s.discard()
	}
}

// sawBareEOL notes a bare CR or LF; under bare_line_endings = reject the
// message is then certain to be refused and its octets are no longer
// kept.
func (s *Session) sawBareEOL() {
	s.bareEOL = true
	if !s.cfg.KeepBareLineEndings {
		s.discard()
	}
}

// discard stops keeping the message, which is certain to be refused at
// its end; the rest is read, counted and dropped.
func (s *Session) discard() {
	if !s.dropping {
		s.dropping = true
		s.releaseBody()
	}
}

// put appends message octets, unless the message is certain to be
// refused (over the size limit, or a line or line ending the policy
// refuses); the size is counted either way, since it decides the reply
// first.
func (s *Session) put(b []byte) {
	s.bodySize += int64(len(b))
	if s.bodySize > s.cfg.MaxMessageSize && !s.tooBig {
		s.tooBig = true
		s.discard()
	}
	if s.dropping {
		return
	}
	if len(s.body)+len(b) > cap(s.body) {
		s.grow(len(b))
	}
	s.body = append(s.body, b...)
}

// grow makes room for n more octets by doubling the buffer. Memory
// follows what arrived: a client that declared a large SIZE but sends
// little gets no more than the first buffer. The declared SIZE
// (RFC 1870) only trims the last doubling, so that a message of the
// declared size does not leave half its buffer unused.
func (s *Session) grow(n int) {
	need := len(s.body) + n
	c := max(2*cap(s.body), need, 4096)
	if d := s.tx.DeclaredSize + 1024; d >= int64(need) && d < int64(c) {
		c = int(d)
	}
	b := make([]byte, len(s.body), c)
	copy(b, s.body)
	s.releaseBody()
	s.body = b
}

// startBody readies the message buffer: a small one, whatever SIZE the
// client declared.
func (s *Session) startBody() {
	if s.body == nil && !s.dropping {
		s.getBody()
	}
	s.lineLen = 0
	s.dotState = dsMid // BDAT's line scanner; DATA starts at dsLineStart
}

// bodyPool recycles message buffers between transactions so an idle
// connection holds none.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 8192); return &b }}

// maxPooledBody is the largest buffer the pool keeps.
const maxPooledBody = 64 << 10

// getBody takes a buffer from the pool for body.
func (s *Session) getBody() {
	s.bodyBox = bodyPool.Get().(*[]byte)
	s.body = (*s.bodyBox)[:0]
}

// releaseBody gives body back to the pool and forgets it. The pool's
// holder goes back with it, so recycling allocates nothing; a buffer grown
// outside the pool gets a holder of its own.
func (s *Session) releaseBody() {
	b, box := s.body, s.bodyBox
	s.body, s.bodyBox = nil, nil
	// Only small buffers come back: whatever session takes one next may
	// send ten octets and wait, and must not pin a large one.
	if cap(b) < 4096 || cap(b) > maxPooledBody {
		return
	}
	if box == nil {
		box = new([]byte)
	}
	*box = b[:0]
	bodyPool.Put(box)
}

var replyChunkOK = []byte("250 2.0.0 Ok: chunk received\r\n")

// bdatCmd parses "BDAT count [LAST]" (RFC 3030 2). Whenever count parses,
// exactly count octets are read as the chunk whatever the reply, so an
// erroneous BDAT never loses the framing.
func (s *Session) bdatCmd(arg []byte) Event {
	fields := bytes.Fields(arg)
	if len(fields) == 0 {
		s.st = stClosed
		s.errors++
		return Event{Kind: KindReply, Reply: replyBdatBroken, Close: true}
	}
	count, ok := parseCount(fields[0])
	if !ok {
		// Without a count the chunk's end is unknown; its bytes would be
		// read as commands. Refuse and close.
		s.st = stClosed
		s.errors++
		return Event{Kind: KindReply, Reply: replyBdatBroken, Close: true}
	}
	s.bdatLeft = count
	s.bdatLast = false
	s.bdatReject = nil
	s.bdatDiscard = false
	s.bdatCountErr = true
	switch {
	case len(fields) > 2 || (len(fields) == 2 && !verbIs(fields[1], "LAST")):
		s.bdatReject = replySyntaxBdat
	case !s.tx.Active:
		s.bdatReject = replyNeedMail
	case s.usedData:
		s.bdatReject = replyMixedBdat
	case s.tx.Recipients == 0:
		s.bdatReject = replyNoValidRcpt
	default:
		s.bdatCountErr = false
		s.bdatLast = len(fields) == 2
		if !s.usedBdat {
			s.bdatPending = true
			return s.pend(KindData, "")
		}
	}
	if s.bdatReject != nil {
		s.bdatDiscard = true
	}
	s.st = stBdat
	return Event{Kind: KindReply}
}

// parseCount reads a decimal octet count; values past int64 saturate (the
// chunk is then drained until the connection times out or closes).
func parseCount(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (math.MaxInt64-d)/10 {
			n = math.MaxInt64
			continue
		}
		n = n*10 + d
	}
	return int64(n), true
}

// bdatChunk reads the octets of a BDAT chunk and, at its end, answers it.
func (s *Session) bdatChunk(in []byte) (int, Event) {
	take := len(in)
	if int64(take) > s.bdatLeft {
		take = int(s.bdatLeft)
	}
	if !s.bdatDiscard {
		s.scanChunk(in[:take])
		if s.lineLen > s.cfg.dataLineMax {
			s.overlong() // known before the line ends
		}
		s.put(in[:take])
	}
	s.bdatLeft -= int64(take)
	if s.bdatLeft > 0 {
		return take, Event{}
	}
	s.st = stCommand
	if r := s.bdatReject; r != nil {
		s.bdatReject = nil
		s.bdatDiscard = false
		if s.bdatCountErr {
			return take, s.fail(r)
		}
		// A refused transaction is over (RFC 3030 2: the client must not
		// send more chunks).
		return take, s.refuseMessage(r)
	}
	if s.tooBig {
		return take, s.refuseMessage(replyTooBig)
	}
	if !s.bdatLast {
		return take, reply(replyChunkOK)
	}
	if s.dotState == dsCR {
		s.sawBareEOL() // the message ends in a lone CR
	}
	s.checkLine()
	// The same body policies as DATA: a message taken by BDAT may later be
	// relayed with DATA, where a bare LF could end it early.
	switch {
	case s.bareEOL && !s.cfg.KeepBareLineEndings:
		return take, s.refuseMessage(replyBareEOL)
	case s.longLine && !s.cfg.KeepLongLines:
		return take, s.refuseMessage(s.cfg.longLineRepl)
	}
	return take, s.pend(KindMessage, "")
}

// scanChunk tracks line lengths and bare CR or LF in BDAT content, which
// is not dot-stuffed but is held to the same line policies as DATA.
func (s *Session) scanChunk(b []byte) {
	for _, c := range b {
		switch {
		case s.dotState == dsCR && c == '\n':
			s.checkLine()
			s.dotState = dsMid
			continue
		case s.dotState == dsCR:
			s.sawBareEOL()
			s.lineLen++
		}
		s.dotState = dsMid
		switch c {
		case '\r':
			s.dotState = dsCR
		case '\n':
			s.sawBareEOL()
			s.checkLine()
		default:
			s.lineLen++
		}
	}
}
