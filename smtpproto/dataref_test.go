package smtpproto

// dataRef is the byte-at-a-time DATA scanner that data replaced, kept as
// the model the differential fuzz test holds data to.
func (s *Session) dataRef(in []byte) (int, bool) {
	i := 0
	for i < len(in) {
		c := in[i]
		switch s.dotState {
		case dsMid:
			// Fast path: copy the run up to the next CR or LF at once.
			j := i
			for j < len(in) && in[j] != '\r' && in[j] != '\n' {
				j++
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
